"""Checkpoints written behind the round, and everything a resumed run needs from them.

After every applied round (``coordinator.checkpoint_every``, default 1) the
coordinator takes a :class:`~hypergpu.model.checkpoint.Snapshot` on the event
loop — copies of the model, the outer optimizer's state, the planner's
state, the shard ledger, the work sampler, the round book and the node
registry's names — and hands it to :class:`CheckpointWriter`, whose one
thread serialises and writes it while the next round runs. At most one
write is in flight; a snapshot that arrives while another waits replaces it
(the newer one holds everything the older did). Each write goes to a
temporary file that is synced and renamed into place, so a process killed
mid-write leaves the previous checkpoint as it was.

:func:`restore_run` puts all of it back into a coordinator before it listens,
so the nodes that reconnect find the same ids, shards, book and planner.

The planner and the sampler are kept as a pickle whose reader
(:class:`_StateUnpickler`) builds only HyperGPU's own classes and the few
standard and NumPy types they are made of: a checkpoint is data, never code.
"""

from __future__ import annotations

import asyncio
import io
import logging
import pickle
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hypergpu.coordinator.crashpoints import crash_point
from hypergpu.coordinator.registry import NodeInfo, NodeStatus
from hypergpu.errors import CheckpointError
from hypergpu.events import EventBus
from hypergpu.model.checkpoint import Checkpoint, CheckpointManager, Snapshot

if TYPE_CHECKING:
    from hypergpu.coordinator.coordinator import Coordinator

log = logging.getLogger("hypergpu.coordinator")

#: The array under which a checkpoint keeps the pickled planner and sampler.
STATE_ARRAY = "run.state"


class CheckpointWriter:
    """Writes snapshots on its own thread: one in flight, the newest one waiting."""

    def __init__(self, manager: CheckpointManager, on_written: Callable[[int], object] = lambda round_id: None,
                 events: EventBus | None = None):
        self.manager = manager
        self.on_written = on_written  # called on the writer's thread
        self.events = events  # a failed write is published as an alert (the bus is thread-safe)
        self.written = 0
        self.superseded = 0  # snapshots replaced by a newer one before they were written
        self.last: Path | None = None
        self.error: str | None = None
        self._cond = threading.Condition()
        self._queued: Snapshot | None = None
        self._busy = False
        self._thread: threading.Thread | None = None

    def submit(self, snap: Snapshot) -> None:
        """Queue ``snap`` to be written (replacing one still waiting); returns at once."""
        with self._cond:
            if self._queued is not None:
                self.superseded += 1
            self._queued = snap
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="checkpoint-writer", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout_s: float | None = None) -> bool:
        """Block until nothing is queued or being written; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._queued is None and not self._busy, timeout_s)

    async def drain(self) -> None:
        """:meth:`flush` off the event loop."""
        await asyncio.to_thread(self.flush)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queued is not None)
                snap, self._queued, self._busy = self._queued, None, True
            assert snap is not None
            try:
                self.last = self.manager.write(snap, before_rename=lambda: crash_point("checkpoint", snap.round))
                self.written += 1
                self.error = None
                self.on_written(snap.round)
            except Exception as exc:  # a full disk must not end the run; the next round tries again
                self.error = f"checkpoint of round {snap.round} not written: {exc}"
                log.error("%s", self.error)
                if self.events is not None:
                    self.events.publish("alert", level="error", message=self.error)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


# --- what a checkpoint holds beyond the model -------------------------------------------


def snapshot_run(coord: Coordinator, round_id: int) -> Snapshot:
    """Everything a resumed run needs, copied now (on the event loop, between rounds)."""
    arrays = {f"outer.{k}": v for k, v in coord.outer.state_dict().items()}
    arrays[STATE_ARRAY] = np.frombuffer(_pickle_state(coord), dtype=np.uint8)
    registry = coord.registry
    extra = {
        "closed": coord.closed,
        "samples": coord.samples,
        "refusals": dict(coord.refusals),
        "book": coord.book.state(),
        "shards": {"owner": {str(n): s for n, s in coord.shards._owner.items()},
                   "lent": {str(n): list(s) for n, s in coord.shards._lent.items()}},
        "nodes": [[n.node_id, n.name, n.status.value] for n in registry.all()],
    }
    return coord.checkpoints.snapshot(coord.model, round_id, arrays=arrays, extra=extra)


def restore_run(coord: Coordinator, found: Checkpoint) -> None:
    """Put back what :func:`snapshot_run` kept (the model is already restored)."""
    outer = {k[len("outer."):]: v for k, v in found.arrays.items() if k.startswith("outer.")}
    coord.outer.load_state_dict(outer)
    extra = found.extra
    if "book" not in extra:  # written before these were kept: the model and outer state only
        coord.closed = found.round
        return
    coord.closed = int(extra["closed"])
    coord.samples = int(extra["samples"])
    coord.refusals.update(extra["refusals"])
    coord.book.load_state(extra["book"])
    coord.shards._owner = {int(n): int(s) for n, s in extra["shards"]["owner"].items()}
    coord.shards._lent = {int(n): [int(s) for s in held] for n, held in extra["shards"]["lent"].items()}
    for node_id, name, status in extra["nodes"]:
        # known by name again, so a node that reconnects keeps its id; connected later, if ever
        kept = NodeStatus(status) if status in (NodeStatus.DEAD.value, NodeStatus.LEFT.value) else NodeStatus.SUSPECT
        coord.registry.restore(NodeInfo(int(node_id), str(name), status=kept))
    _unpickle_state(coord, bytes(found.arrays[STATE_ARRAY]))


def _pickle_state(coord: Coordinator) -> bytes:
    live = _live_objects(coord)
    buf = io.BytesIO()
    pickler = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    pickler.persistent_id = lambda obj: next((k for k, v in live.items() if v is obj), None)  # type: ignore[method-assign]
    planner = coord.planner
    kept = dict(vars(planner)) if type(planner).__module__.startswith(_MODULES) else None
    # Work dealt ahead (overlap) is dealt again after a resume: it goes back with the rest.
    sampler = dict(vars(coord.work.sampler))
    rng = sampler.pop("_rng")  # kept as its bit generator's state: plain data
    pickler.dump({"planner": kept, "sampler": sampler, "sampler_rng": rng.bit_generator.state})
    return buf.getvalue()


def _unpickle_state(coord: Coordinator, data: bytes) -> None:
    state = _StateUnpickler(io.BytesIO(data), _live_objects(coord)).load()
    if state["planner"] is not None:
        vars(coord.planner).update(state["planner"])
    else:
        log.warning("the checkpoint holds no planner state (a planner of the user's own): it starts afresh")
    sampler = coord.work.sampler
    vars(sampler).update(state["sampler"])
    sampler._rng.bit_generator.state = state["sampler_rng"]
    for key in list(sampler._out):  # see _pickle_state
        sampler.give_back(key)


def _live_objects(coord: Coordinator) -> dict[str, Any]:
    """Objects the pickle names rather than copies: the configuration and the event bus's publish."""
    found: dict[str, Any] = {"config": coord.config, "events": coord.events}
    publish = getattr(coord.planner, "publish", None)
    if publish is not None:
        found["publish"] = publish
    return found


#: Where the planner's and the sampler's classes live (a planner of the user's own is not kept).
_MODULES = ("hypergpu.adapt", "hypergpu.round", "hypergpu.data.sampler", "hypergpu.protocol", "hypergpu.transport")

#: Standard and NumPy names a kept state may be built from.
_ALLOWED = {
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "slice"), ("builtins", "complex"),
    ("collections", "deque"), ("collections", "Counter"), ("collections", "OrderedDict"),
    ("collections", "defaultdict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
}


class _StateUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BytesIO, live: dict[str, Any]):
        super().__init__(file)
        self.live = live

    def persistent_load(self, pid: Any) -> Any:
        if pid not in self.live:
            raise CheckpointError(f"checkpoint names an unknown live object {pid!r}")
        return self.live[pid]

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (module.startswith("numpy.dtypes") and name.endswith("DType")):
            return super().find_class(module, name)
        if module.startswith(_MODULES):
            found = super().find_class(module, name)
            if isinstance(found, type):  # classes only: a function could do anything
                return found
        raise CheckpointError(f"checkpoint state refers to {module}.{name}, which it may not")


# --- the coordinator's side ----------------------------------------------------------------


def resume_run(coord: Coordinator) -> int | None:
    """Restore the newest valid checkpoint into ``coord`` (before it listens); its round, or None."""
    found = coord.checkpoints.resume(coord.model)
    if found is None:
        return None
    restore_run(coord, found)
    coord.outcomes.durable = found.round
    coord.events.publish("training", type="resumed-from-checkpoint", round=found.round, hash=coord.model.hash)
    log.info("resumed from %s (round %d, parameters %s)", found.path.name, found.round, coord.model.hash[:16])
    return found.round


def checkpoint_behind(coord: Coordinator, round_id: int) -> None:
    """Snapshot now and let the writer write it while the next round runs."""
    coord.saver.submit(snapshot_run(coord, round_id))
    coord.events.publish("training", type="checkpoint", round=round_id, hash=coord.model.hash)
