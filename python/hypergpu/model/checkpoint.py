"""Atomic checkpoints: weights, optimizer state, round, RNG states, config hash.

One checkpoint is one safetensors file ``ckpt-<round>.safetensors``. Tensors
(model state, optimizer tensors, RNG states) are stored by name; everything
else is JSON in the header, together with a sha256 over all of it, so a
flipped bit anywhere is caught. Files are written to a temporary name,
fsynced and renamed over (``os.replace``): a crash leaves either the old set
of checkpoints or the new one, never a torn file under a checkpoint name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import TensorSpec, serialize
from safetensors.torch import load as st_load

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.data.shards import safetensors_metadata
from hypergpu.errors import CheckpointError, HyperGPUError
from hypergpu.model.manager import ModelManager, params_hash

log = logging.getLogger(__name__)

_NAME = re.compile(r"^ckpt-(\d{8,})\.safetensors$")
_FORMAT = "1"


@dataclass(frozen=True)
class Snapshot:
    """A checkpoint taken in memory (:meth:`CheckpointManager.snapshot`), not written yet."""

    round: int
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]


@dataclass
class Checkpoint:
    """A checkpoint read back from disk (already verified)."""

    path: Path
    round: int
    version: int
    model_hash: str
    config_hash: str
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any] | None
    rng: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)
    #: other state saved by name (e.g. the outer optimizer's ``outer.velocity``), bit-exact
    arrays: dict[str, np.ndarray] = field(default_factory=dict)

    def restore(
        self,
        manager: ModelManager,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        restore_rng: bool = True,
    ) -> None:
        """Put the model, version, optimizer and RNG states back."""
        try:
            manager.model.load_state_dict(self.model_state)
        except RuntimeError as exc:
            raise CheckpointError(f"{self.path.name}: does not fit this model: {exc}") from None
        manager.set_flat(manager.layout.flatten(manager.model), version=self.version)
        if manager.hash != self.model_hash:
            raise CheckpointError(f"{self.path.name}: restored parameters do not match the stored hash")
        if optimizer is not None:
            if self.optimizer_state is None:
                raise CheckpointError(f"{self.path.name}: holds no optimizer state")
            optimizer.load_state_dict(self.optimizer_state)
        if restore_rng:
            set_rng_state(self.rng)


class CheckpointManager:
    """Writes a checkpoint every ``every`` rounds into ``directory``, keeps the last ``keep``."""

    def __init__(self, directory: str | Path, *, keep: int = 3, every: int = 1, config_hash: str = ""):
        if keep < 1:
            raise CheckpointError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self.every = every
        self.config_hash = config_hash
        #: (path, reason) of checkpoints :meth:`resume` refused.
        self.skipped: list[tuple[Path, str]] = []

    @classmethod
    def from_config(cls, cfg: HyperGPUConfig) -> CheckpointManager:
        """The coordinator section's directory, retention and interval; tagged with ``cfg.run_hash()``."""
        c = cfg.coordinator
        return cls(c.checkpoint_dir, keep=c.keep_checkpoints, every=c.checkpoint_every, config_hash=cfg.run_hash())

    def due(self, round: int) -> bool:
        return self.every > 0 and round > 0 and round % self.every == 0

    def maybe_save(self, manager: ModelManager, round: int, **kw: Any) -> Path | None:
        return self.save(manager, round, **kw) if self.due(round) else None

    def save(
        self,
        manager: ModelManager,
        round: int,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        extra: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> Path:
        """Write a checkpoint of ``round`` atomically and prune old ones."""
        return self.write(self.snapshot(manager, round, optimizer=optimizer, extra=extra, arrays=arrays))

    def snapshot(
        self,
        manager: ModelManager,
        round: int,
        *,
        optimizer: torch.optim.Optimizer | None = None,
        extra: dict[str, Any] | None = None,
        arrays: dict[str, np.ndarray] | None = None,
    ) -> Snapshot:
        """Copies of everything a checkpoint of ``round`` holds, taken now: :meth:`write` can
        run on another thread while the model and ``arrays``' owners move on."""
        tensors: dict[str, torch.Tensor] = {
            f"model.{k}": v.detach().cpu().clone().contiguous() for k, v in manager.model.state_dict().items()
        }
        for name, array in (arrays or {}).items():
            tensors[f"array.{name}"] = torch.from_numpy(np.ascontiguousarray(array).copy())
        meta: dict[str, Any] = {
            "format": _FORMAT,
            "round": round,
            "version": manager.version,
            "model_hash": manager.hash,
            "config_hash": self.config_hash,
            "extra": json.loads(json.dumps(extra or {})),
        }
        if optimizer is not None:
            meta["optimizer"] = _pack_optimizer(optimizer.state_dict(), tensors)
        meta["rng"] = _pack_rng(tensors)
        return Snapshot(round, meta, tensors)

    def write(self, snap: Snapshot, *, before_rename: Callable[[], None] | None = None) -> Path:
        """Write ``snap`` atomically and prune old checkpoints (``before_rename``: a test's
        hook, called once the temporary file is complete and synced)."""
        header = {"meta": json.dumps(snap.meta, sort_keys=True)}
        header["digest"] = _digest(snap.tensors, header["meta"])
        data = _serialize(snap.tensors, header)
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"ckpt-{snap.round:08d}.safetensors"
        _atomic_write(path, data, before_rename)
        self._prune()
        return path

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, newest round first (temporary files ignored)."""
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NAME.match(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def load(self, path: str | Path) -> Checkpoint:
        """Read and verify one checkpoint; :class:`CheckpointError` if it is not intact."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None
        try:
            header = safetensors_metadata(data)
            tensors = st_load(data)
            meta = json.loads(header["meta"])
        except (HyperGPUError, KeyError, ValueError) as exc:
            raise CheckpointError(f"{path.name}: corrupt checkpoint: {exc}") from None
        except Exception as exc:  # safetensors' own error types
            raise CheckpointError(f"{path.name}: corrupt checkpoint: {type(exc).__name__}: {exc}") from None
        if header.get("digest") != _digest(tensors, header["meta"]):
            raise CheckpointError(f"{path.name}: corrupt checkpoint: content does not match its digest")
        if meta.get("format") != _FORMAT:
            raise CheckpointError(f"{path.name}: unsupported checkpoint format {meta.get('format')!r}")
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        optimizer = _unpack_optimizer(meta["optimizer"], tensors) if "optimizer" in meta else None
        return Checkpoint(
            path=path,
            round=int(meta["round"]),
            version=int(meta["version"]),
            model_hash=meta["model_hash"],
            config_hash=meta["config_hash"],
            model_state=model_state,
            optimizer_state=optimizer,
            rng=_unpack_rng(meta["rng"], tensors),
            extra=meta.get("extra", {}),
            arrays={k[len("array."):]: v.numpy() for k, v in tensors.items() if k.startswith("array.")},
        )

    def latest(self, *, check_config: bool = True) -> Checkpoint | None:
        """The newest intact checkpoint; corrupt ones are skipped and recorded.

        ``None`` when there are none; :class:`CheckpointError` when every one
        is corrupt or (with ``check_config``) made under another config.
        """
        self.skipped = []
        for path in self.checkpoints():
            try:
                ckpt = self.load(path)
                if check_config and self.config_hash and ckpt.config_hash != self.config_hash:
                    raise CheckpointError(f"{path.name}: written under a different configuration")
                return ckpt
            except CheckpointError as exc:
                log.warning("skipping checkpoint: %s", exc)
                self.skipped.append((path, str(exc)))
        if self.skipped:
            reasons = "; ".join(reason for _, reason in self.skipped)
            raise CheckpointError(f"no valid checkpoint in {self.directory}: {reasons}")
        return None

    def resume(
        self,
        manager: ModelManager,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        restore_rng: bool = True,
        check_config: bool = True,
    ) -> Checkpoint | None:
        """Restore the newest intact checkpoint into ``manager`` (and ``optimizer``)."""
        ckpt = self.latest(check_config=check_config)
        if ckpt is not None:
            ckpt.restore(manager, optimizer, restore_rng=restore_rng)
        return ckpt

    def _prune(self) -> None:
        for old in self.checkpoints()[self.keep :]:
            old.unlink(missing_ok=True)
        for stray in self.directory.glob(".ckpt-*.tmp*"):
            if not _written_by_us(stray):
                stray.unlink(missing_ok=True)


# --- helpers ------------------------------------------------------------------


def _atomic_write(path: Path, data: bytes, before_rename: Callable[[], None] | None = None) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if before_rename is not None:
            before_rename()
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    finally:
        os.close(dir_fd)


def _written_by_us(stray: Path) -> bool:
    pid = stray.name.rpartition(".tmp")[2]
    return pid.isdigit() and int(pid) == os.getpid()


def _serialize(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """The safetensors bytes of ``tensors`` (the same bytes ``safetensors.torch.save`` writes).

    Not through that function: it views each tensor as a ctypes array type of the tensor's
    byte length, and ctypes keeps every such type for the life of the process. Checkpoints
    hold tensors whose sizes move from one to the next, so a long run gained a type (a few
    KB) for every new size (issue 17's soak: ~1 MB per 6,000 rounds of 2 nodes)."""
    held, specs = [], {}
    for name, tensor in tensors.items():
        data = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()
        held.append(data)  # alive until serialize has copied it
        specs[name] = TensorSpec(dtype=str(tensor.dtype).removeprefix("torch."), shape=list(tensor.shape),
                                 data_ptr=data.ctypes.data, data_len=data.nbytes)
    return bytes(serialize(specs, metadata=metadata))


def _digest(tensors: dict[str, torch.Tensor], meta: str) -> str:
    h = hashlib.sha256(meta.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _pack_optimizer(state: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entry in state["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().clone().contiguous()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    try:
        json.dumps([state["param_groups"], scalars])
    except TypeError as exc:
        raise CheckpointError(f"optimizer state is not serialisable: {exc}") from None
    return {"param_groups": state["param_groups"], "scalars": scalars, "ids": [str(p) for p in state["state"]]}


def _unpack_optimizer(packed: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {int(pid): {} for pid in packed["ids"]}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state[int(pid)][key] = value
    for pid, entries in packed["scalars"].items():
        state[int(pid)].update(entries)
    return {"state": state, "param_groups": packed["param_groups"]}


def _pack_rng(tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.python"] = torch.tensor(internal, dtype=torch.int64)
    tensors["rng.numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    tensors["rng.torch"] = torch.get_rng_state()
    cuda = 0
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
            cuda += 1
    return {"python": [version, gauss], "numpy": [kind, int(pos), int(has_gauss), float(cached)], "cuda": cuda}


def _unpack_rng(packed: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    version, gauss = packed["python"]
    kind, pos, has_gauss, cached = packed["numpy"]
    return {
        "python": (version, tuple(int(v) for v in tensors["rng.python"].tolist()), gauss),
        "numpy": (kind, tensors["rng.numpy"].numpy().astype(np.uint32), pos, has_gauss, cached),
        "torch": tensors["rng.torch"],
        "cuda": [tensors[f"rng.cuda.{i}"] for i in range(packed["cuda"])],
    }


def get_rng_state() -> dict[str, Any]:
    """The process's python, numpy and torch RNG states (as restored by :func:`set_rng_state`)."""
    scratch: dict[str, torch.Tensor] = {}
    return _unpack_rng(_pack_rng(scratch), scratch)


def set_rng_state(rng: dict[str, Any]) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])


__all__ = ["Checkpoint", "CheckpointManager", "Snapshot", "get_rng_state", "set_rng_state"]
