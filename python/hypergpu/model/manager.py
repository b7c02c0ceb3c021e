"""The global model: its version, its hash, and how parameters travel.

A *package* is safetensors bytes carrying the layout, the version and the
sha256 of the parameters. A *full* package holds the whole vector; a
*delta* package holds ``params(version) - params(base)`` and is applied on
top of the base. Float32 subtraction then addition does not always give
back the exact value, so a delta also carries the (few) elements where
``base + delta`` would differ, making reconstruction bit-exact and the
hash check meaningful.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save
from torch import nn

from hypergpu.data.datasets import Dataset
from hypergpu.data.samples import ArraySamples, SampleSource
from hypergpu.data.shards import safetensors_metadata
from hypergpu.errors import (
    DataError,
    DtypeMismatchError,
    NonFiniteError,
    ShapeMismatchError,
    UpdateError,
)
from hypergpu.model.layout import ParamLayout
from hypergpu.model.task import Classification, Evaluation, Task

PackageKind = Literal["full", "delta"]


def params_hash(flat: np.ndarray) -> str:
    """sha256 (hex) of a flat float32 vector's bytes."""
    return hashlib.sha256(np.ascontiguousarray(flat, dtype=np.float32).tobytes()).hexdigest()


@dataclass(frozen=True)
class Package:
    """A decoded parameter package (see :meth:`ModelManager.read_package`)."""

    kind: PackageKind
    version: int
    hash: str  # of the parameters at ``version``
    layout_digest: str
    values: np.ndarray  # full: the parameters; delta: params(version) - params(base)
    base_version: int = -1
    base_hash: str = ""
    fix_index: np.ndarray | None = None
    fix_value: np.ndarray | None = None

    def resolve(self, base: np.ndarray | None = None) -> np.ndarray:
        """The parameters at :attr:`version` (``base`` needed for a delta)."""
        if self.kind == "full":
            flat = self.values
        else:
            if base is None:
                raise UpdateError(f"delta package for version {self.version} needs its base")
            if params_hash(base) != self.base_hash:
                raise UpdateError(
                    f"delta package is relative to version {self.base_version}; "
                    "the parameters held are not that version"
                )
            flat = base + self.values
            assert self.fix_index is not None and self.fix_value is not None
            flat[self.fix_index] = self.fix_value
        if params_hash(flat) != self.hash:
            raise UpdateError(f"package for version {self.version} does not hash to its declared hash")
        return flat


class ModelManager:
    """Holds a model, its parameter version and hash, and checks what comes in.

    ``max_update_norm`` bounds the L2 norm of an update passed to
    :meth:`apply_update` (``None``: unbounded); ``max_abs_param`` bounds
    every parameter set through :meth:`set_flat`. ``history`` is how many
    past versions are kept to build delta packages from.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_update_norm: float | None = None,
        max_abs_param: float | None = 1e6,
        history: int = 8,
    ):
        self.model = model
        self.layout = ParamLayout.from_model(model)
        self.max_update_norm = max_update_norm
        self.max_abs_param = max_abs_param
        self.version = 0
        self._history: OrderedDict[int, np.ndarray] = OrderedDict()
        self._history_len = max(1, history)
        self._flat = self.layout.flatten(model)
        self._hash: str | None = None  # of _flat, hashed when first asked for (not on every outer step)
        self._remember()

    # --- parameters ---------------------------------------------------------

    @property
    def hash(self) -> str:
        """sha256 of the parameters (:func:`params_hash`)."""
        if self._hash is None:
            self._hash = params_hash(self._flat)
        return self._hash

    def flat_parameters(self) -> np.ndarray:
        """A copy of the parameters as one contiguous float32 vector."""
        return self._flat.copy()

    def set_flat(self, flat: np.ndarray, *, version: int | None = None) -> int:
        """Replace the parameters; the version becomes ``version`` or the next one."""
        flat = self._as_vector(flat, "parameters")
        self.validate_params(flat)
        self._install(flat, self.version + 1 if version is None else version)
        return self.version

    def apply_update(self, update: np.ndarray, *, lr_scale: float = 1.0) -> int:
        """``params += lr_scale * update``; returns the new version.

        The update has the sign a node returns: new parameters minus the
        ones it received.
        """
        update = self._as_vector(update, "update")
        self.validate_update(update)
        if not np.isfinite(lr_scale):
            raise NonFiniteError(f"lr_scale must be finite, got {lr_scale}")
        new = self._flat + np.float32(lr_scale) * update
        self.validate_params(new)
        self._install(new, self.version + 1)
        return self.version

    def validate_params(self, flat: np.ndarray) -> None:
        """Shape, dtype, finiteness and magnitude of a full parameter vector."""
        self.layout.check(flat, "parameters")
        _check_finite(flat, "parameters")
        if self.max_abs_param is not None and flat.size:
            peak = float(np.abs(flat).max())
            if peak > self.max_abs_param:
                raise UpdateError(
                    f"parameters: largest magnitude {peak:.3g} exceeds the bound {self.max_abs_param:.3g}"
                )

    def validate_update(self, update: np.ndarray) -> None:
        """Shape, dtype, finiteness and L2 norm of an update."""
        self.layout.check(update, "update")
        _check_finite(update, "update")
        if self.max_update_norm is not None:
            norm = float(np.linalg.norm(update.astype(np.float64)))
            if norm > self.max_update_norm:
                raise UpdateError(
                    f"update: L2 norm {norm:.3g} exceeds the bound {self.max_update_norm:.3g}"
                )

    # --- packages -----------------------------------------------------------

    def package(self) -> bytes:
        """The current parameters as a full package."""
        return st_save({"values": self._flat}, metadata=self._meta("full"))

    def delta_package(self, base_version: int) -> bytes:
        """The change since ``base_version`` (must be in the recent history)."""
        base = self._history.get(base_version)
        if base is None:
            raise UpdateError(
                f"version {base_version} is not in the last {self._history_len} versions; "
                "send a full package instead"
            )
        delta = self._flat - base
        rebuilt = base + delta
        fix = np.flatnonzero(rebuilt.view(np.uint32) != self._flat.view(np.uint32))
        meta = self._meta("delta")
        meta.update(base_version=str(base_version), base_hash=params_hash(base))
        tensors = {"values": delta, "fix_index": fix.astype(np.int64), "fix_value": self._flat[fix]}
        return st_save(tensors, metadata=meta)

    def read_package(self, data: bytes) -> Package:
        """Decode and check a package against this model's layout."""
        try:
            meta = safetensors_metadata(data)
            tensors = st_load(bytes(data))
            kind = meta["kind"]
            pkg = Package(
                kind=kind,  # type: ignore[arg-type]
                version=int(meta["version"]),
                hash=meta["hash"],
                layout_digest=meta["layout"],
                values=tensors["values"],
                base_version=int(meta.get("base_version", -1)),
                base_hash=meta.get("base_hash", ""),
                fix_index=tensors.get("fix_index"),
                fix_value=tensors.get("fix_value"),
            )
        except (DataError, KeyError, ValueError, TypeError) as exc:
            raise UpdateError(f"malformed parameter package: {exc}") from None
        except Exception as exc:  # safetensors' own error types
            raise UpdateError(f"malformed parameter package: {type(exc).__name__}: {exc}") from None
        if kind not in ("full", "delta") or (kind == "delta" and pkg.fix_index is None):
            raise UpdateError(f"malformed parameter package: kind {kind!r}")
        if pkg.layout_digest != self.layout.digest:
            raise ShapeMismatchError("parameter package was made for a different model layout")
        self.layout.check(pkg.values, f"{kind} package")
        _check_finite(pkg.values, f"{kind} package")
        if pkg.fix_index is not None:
            fi, fv = pkg.fix_index, pkg.fix_value
            if fv is None or fi.shape != fv.shape or fi.ndim != 1 or fi.dtype != np.int64:
                raise UpdateError("malformed delta package: exact-fix tensors disagree")
            if fi.size and (fi.min() < 0 or fi.max() >= self.layout.total):
                raise UpdateError("malformed delta package: exact-fix index out of range")
        return pkg

    def load_package(self, data: bytes) -> int:
        """Install a full or delta package (verifying its hash); returns the version."""
        pkg = self.read_package(data)
        flat = pkg.resolve(self._flat if pkg.kind == "delta" else None)
        self.validate_params(flat)
        self._install(flat, pkg.version)
        return self.version

    # --- evaluation ---------------------------------------------------------

    def evaluate(
        self, data: Dataset | SampleSource, *, task: Task | None = None,
        indices: np.ndarray | None = None, batch_size: int = 1024,
    ) -> Evaluation:
        """The task's figures (default: classification) of the current model on ``data``."""
        source = ArraySamples(data.x, data.y) if isinstance(data, Dataset) else data
        return (task or Classification()).evaluate(self.model, source, indices=indices, batch_size=batch_size)

    # --- internals ----------------------------------------------------------

    def _install(self, flat: np.ndarray, version: int) -> None:
        self.layout.load_into(self.model, flat)
        self._flat = flat.copy()
        self._hash = None
        self.version = int(version)
        self._remember()

    def _remember(self) -> None:
        self._history[self.version] = self._flat
        self._history.move_to_end(self.version)
        while len(self._history) > self._history_len:
            self._history.popitem(last=False)

    def _meta(self, kind: PackageKind) -> dict[str, str]:
        return {"kind": kind, "version": str(self.version), "hash": self.hash, "layout": self.layout.digest}

    def _as_vector(self, x: np.ndarray, what: str) -> np.ndarray:
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        if not isinstance(x, np.ndarray):
            raise DtypeMismatchError(f"{what}: expected a numpy array, got {type(x).__name__}")
        return x


def _check_finite(flat: np.ndarray, what: str) -> None:
    finite = np.isfinite(flat)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise NonFiniteError(
            f"{what}: {bad.size} non-finite value(s) (NaN or Inf), first at index {int(bad[0])}"
        )
