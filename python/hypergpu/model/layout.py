"""One flat float32 vector per model, and the layout that maps it back.

The Rust core aggregates and compresses flat buffers; coordinator and
nodes derive the same :class:`ParamLayout` from the same architecture, and
compare :attr:`ParamLayout.digest` before exchanging vectors. The layout
covers every floating-point entry of ``state_dict()`` in its order:
parameters and float buffers (e.g. batch-norm statistics), so averaging
the vector averages those too. Integer buffers stay local.

Tied weights (e.g. a GPT's ``wte.weight`` and ``lm_head.weight``) appear in
``state_dict()`` once per name but are one tensor. The layout keeps only
the first name of entries that share storage (same data pointer and
shape): otherwise the vector would carry the weight twice, averaging and
compression would treat the copies as independent, and loading would
write the shared tensor twice with possibly different values. Loading it
once under the first name updates every name, since they are one tensor.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import torch
from torch import nn

from hypergpu.errors import DtypeMismatchError, ShapeMismatchError


@dataclass(frozen=True)
class ParamSpec:
    """Where one named tensor lives in the flat vector."""

    name: str
    shape: tuple[int, ...]
    offset: int
    numel: int
    #: a buffer (e.g. batch-norm statistics), not a parameter: averaged, never given momentum
    buffer: bool = False


@dataclass(frozen=True)
class ParamLayout:
    specs: tuple[ParamSpec, ...]

    @classmethod
    def from_model(cls, model: nn.Module) -> ParamLayout:
        specs, offset = [], 0
        seen: set[tuple[torch.device, int, tuple[int, ...]]] = set()
        parameters = {name for name, _ in model.named_parameters(remove_duplicate=False)}
        for name, t in model.state_dict().items():
            if not t.is_floating_point():
                continue
            key = (t.device, t.data_ptr(), tuple(t.shape))
            if key in seen:
                continue  # a tied weight: laid out under its first name
            if t.numel():  # empty tensors all have a null data pointer without being tied
                seen.add(key)
            specs.append(ParamSpec(name, tuple(t.shape), offset, t.numel(), buffer=name not in parameters))
            offset += t.numel()
        return cls(tuple(specs))

    def fragments(self, count: int) -> tuple[slice, ...]:
        """The flat vector cut into ``count`` contiguous fragments at tensor boundaries,
        each cut at the boundary nearest its even share (``k * total / count``), as
        whole tensors allow (Streaming DiLoCo syncs one at a time). Fewer come back
        when there are fewer tensors."""
        if count < 1:
            raise ShapeMismatchError(f"fragments must be >= 1, got {count}")
        inner = [s.offset for s in self.specs[1:]]  # boundaries between tensors
        cuts = [0]
        for k in range(1, count):
            later = [b for b in inner if b > cuts[-1]]
            if not later:
                break
            cuts.append(min(later, key=lambda b: abs(b - k * self.total / count)))
        cuts = sorted(set(cuts)) + [self.total]
        return tuple(slice(a, b) for a, b in zip(cuts, cuts[1:], strict=False))

    def fragment_of(self, round_id: int, count: int, pieces: int | None = None) -> slice | None:
        """Streaming DiLoCo's schedule: the fragment round ``round_id`` syncs, of ``count``
        (rounds take turns from round 1); None when there is one: the whole vector.

        With ``pieces`` (``training.link_fragments``) the vector is cut into that many
        pieces and the fragments are ``count`` runs of them, as even as the pieces allow:
        a node sending its update in ``count`` fragments covers every piece once per
        ``count`` rounds, and its fragments always end where pieces do."""
        cut = self.fragments(count if pieces is None else pieces)
        count = min(count, len(cut))
        if count == 1:
            return None
        turn = (round_id - 1) % count
        first, last = turn * len(cut) // count, (turn + 1) * len(cut) // count - 1
        return slice(cut[first].start, cut[last].stop)

    @cached_property
    def buffer_slices(self) -> tuple[slice, ...]:
        """Where the buffers lie in the flat vector (adjacent ones merged)."""
        out: list[slice] = []
        for s in self.specs:
            if not s.buffer:
                continue
            if out and out[-1].stop == s.offset:
                out[-1] = slice(out[-1].start, s.offset + s.numel)
            else:
                out.append(slice(s.offset, s.offset + s.numel))
        return tuple(out)

    @property
    def total(self) -> int:
        """Length of the flat vector."""
        last = self.specs[-1] if self.specs else None
        return last.offset + last.numel if last else 0

    def to_json(self) -> str:
        return json.dumps([[s.name, list(s.shape), s.buffer] for s in self.specs], separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ParamLayout:
        specs, offset = [], 0
        for name, shape, buffer in json.loads(text):
            numel = int(np.prod(shape, dtype=np.int64))
            specs.append(ParamSpec(str(name), tuple(int(d) for d in shape), offset, numel, bool(buffer)))
            offset += numel
        return cls(tuple(specs))

    @cached_property
    def digest(self) -> str:
        """sha256 of the names and shapes: equal digests mean compatible vectors."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def flatten(self, model: nn.Module) -> np.ndarray:
        """A fresh contiguous float32 vector of the model's entries (on CPU)."""
        state = model.state_dict()
        parts = [state[s.name].detach().reshape(-1).to(torch.float32) for s in self.specs]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return torch.cat(parts).cpu().numpy()

    def load_into(self, model: nn.Module, flat: np.ndarray) -> None:
        """Copy ``flat`` into the model's tensors (shape/dtype checked first)."""
        self.check(flat)
        state = model.state_dict()
        device = next(iter(state.values())).device if state else torch.device("cpu")
        source = torch.from_numpy(np.ascontiguousarray(flat)).to(device)
        with torch.no_grad():
            for s in self.specs:
                target = state[s.name]
                target.copy_(source[s.offset : s.offset + s.numel].view(s.shape))

    def split(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """Name → view of ``flat`` in its tensor shape (no copy)."""
        self.check(flat)
        return {s.name: flat[s.offset : s.offset + s.numel].reshape(s.shape) for s in self.specs}

    def check(self, flat: np.ndarray, what: str = "parameters") -> None:
        if not isinstance(flat, np.ndarray):
            raise DtypeMismatchError(f"{what}: expected a numpy array, got {type(flat).__name__}")
        if flat.dtype != np.float32:
            raise DtypeMismatchError(f"{what}: expected float32, got {flat.dtype}")
        if flat.shape != (self.total,):
            raise ShapeMismatchError(
                f"{what}: expected a flat vector of shape ({self.total},), got {flat.shape}"
            )
