"""Checkpoints behind the round (issue 15, item 2): the writer, what a checkpoint holds
beyond the model, and a node's updates between "received" and "applied"."""

from __future__ import annotations

import asyncio
import gc
import io
import os
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import hypergpu
from hypergpu.config import load_config
from hypergpu.coordinator import Coordinator
from hypergpu.coordinator.checkpointing import CheckpointWriter, _StateUnpickler, resume_run
from hypergpu.errors import CheckpointError
from hypergpu.launch.assemble import assemble
from hypergpu.model.checkpoint import CheckpointManager, Snapshot
from hypergpu.model.manager import ModelManager
from hypergpu.node.update_encoder import UpdateEncoder
from hypergpu.node.settle import Settlement, Unsettled
from hypergpu.protocol import Ack, Assignment, UpdateMeta
from hypergpu.round import LatePolicy, RoundBook

from engine_helpers import run_with_nodes

pytestmark = pytest.mark.timeout(240)

PYTHONPATH = str(Path(hypergpu.__file__).resolve().parent.parent)


def _manager(value: float) -> ModelManager:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(value)
    return ModelManager(model)


class _HeldManager(CheckpointManager):
    """Its first write waits until the test lets it go."""

    def __init__(self, directory: Path):
        super().__init__(directory, keep=10)
        self.entered, self.release = threading.Event(), threading.Event()

    def write(self, snap: Snapshot, **kw):  # type: ignore[no-untyped-def]
        if not self.entered.is_set():
            self.entered.set()
            assert self.release.wait(30)
        return super().write(snap, **kw)


def test_one_write_in_flight_and_a_newer_snapshot_supersedes_the_queued_one(tmp_path: Path) -> None:
    manager = _HeldManager(tmp_path)
    written: list[int] = []
    writer = CheckpointWriter(manager, on_written=written.append)
    writer.submit(manager.snapshot(_manager(1.0), 1))
    assert manager.entered.wait(30)  # round 1 is being written
    writer.submit(manager.snapshot(_manager(2.0), 2))  # waits
    writer.submit(manager.snapshot(_manager(3.0), 3))  # replaces round 2's
    assert not writer.flush(timeout_s=0.2)  # round 1's write is still held
    manager.release.set()
    assert writer.flush(timeout_s=30)
    assert written == [1, 3] and writer.superseded == 1
    assert [p.name for p in manager.checkpoints()] == ["ckpt-00000003.safetensors", "ckpt-00000001.safetensors"]
    # The snapshot was taken when submitted: round 3's file holds 3.0, whatever the model did since.
    assert manager.load(manager.checkpoints()[0]).model_hash == _manager(3.0).hash


def test_checkpoints_of_ever_new_tensor_sizes_leave_no_type_behind(tmp_path: Path) -> None:
    """Writing a checkpoint makes no lasting object: its tensors' sizes move from one checkpoint
    to the next (state arrays), and a ctypes array type per new size piled up over a long run."""
    manager = CheckpointManager(tmp_path, keep=2)
    model = _manager(1.0)

    def ctypes_types() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if type(o).__name__ in ("PyCArrayType", "PyCPointerType"))

    manager.write(manager.snapshot(model, 1, arrays={"state": np.zeros(7, dtype=np.uint8)}))
    before = ctypes_types()
    for r in range(2, 42):
        manager.write(manager.snapshot(model, r, arrays={"state": np.arange(100 + r, dtype=np.uint8)}))
    assert ctypes_types() == before
    loaded = manager.load(manager.checkpoints()[0])
    assert loaded.round == 41 and loaded.model_hash == model.hash


def test_a_process_killed_before_the_rename_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    script = f"""
import torch
from hypergpu.coordinator.checkpointing import CheckpointWriter
from hypergpu.model.checkpoint import CheckpointManager
from hypergpu.model.manager import ModelManager
manager = CheckpointManager({str(tmp_path)!r})
writer = CheckpointWriter(manager)
model = ModelManager(torch.nn.Linear(3, 2))
for round_id in (1, 2):
    writer.submit(manager.snapshot(model, round_id))
    writer.flush()
"""
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, HYPERGPU_CRASH_AT="checkpoint:2")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # SIGKILL, with round 2's file written but not renamed
    assert "crash point checkpoint:2" in proc.stderr
    manager = CheckpointManager(tmp_path)
    assert [p.name for p in manager.checkpoints()] == ["ckpt-00000001.safetensors"]
    assert list(tmp_path.glob(".ckpt-00000002.safetensors.tmp*"))  # the torn write, never under a checkpoint name
    latest = manager.latest()
    assert latest is not None and latest.round == 1


def test_the_round_book_comes_back_as_it_was_kept() -> None:
    book = RoundBook(quorum=0.5, late_policy=LatePolicy.STALE_WEIGHTED)
    for round_id in (1, 2, 3):
        book.open(round_id, {0, 1, 2}, assigned={0: 32, 1: 32, 2: 32})
        book.commit(0, round_id)
        book.commit(1, round_id)
        book.close()
        book.decided(round_id, round_id != 2, [(0, round_id), (1, round_id)])
    book.check(1, 3)  # a duplicate, counted
    again = RoundBook(quorum=0.5, late_policy=LatePolicy.STALE_WEIGHTED)
    again.load_state(book.state())
    assert again.state() == book.state()
    assert again.check(0, 3).verdict.value == "duplicate"  # taken before the checkpoint: never again
    assert again.outcomes(0) == ([1, 3], [2])
    assert list(again.ledger) == [(1, 0, 1), (1, 1, 1), (3, 0, 3), (3, 1, 3)]


def test_a_kept_state_may_name_only_the_run_s_own_classes() -> None:
    class Evil:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, ("echo pwned",))

    with pytest.raises(CheckpointError, match="posix.system|os.system"):
        _StateUnpickler(io.BytesIO(pickle.dumps(Evil())), {}).load()


def _encode(encoder: UpdateEncoder, update: np.ndarray, round_id: int) -> None:
    encoder.message(update, Assignment(batch_size=8, local_steps=1, codec="int8"), UpdateMeta(samples=1), round_id)


def test_an_update_not_applied_gives_its_residual_back() -> None:
    rng = np.random.default_rng(0)
    encoder, unsettled = UpdateEncoder(), Unsettled()
    _encode(encoder, rng.normal(size=1000).astype(np.float32), 1)
    unsettled.encoded(1, 0, encoder.last_delta)
    assert not unsettled.acked(Ack(round=1, accepted=True))  # received only: held
    assert not unsettled.acked(Ack(round=1, accepted=True, applied=True))
    assert encoder.residual is not None
    before = encoder.residual.copy()
    _encode(encoder, rng.normal(size=1000).astype(np.float32), 2)
    unsettled.encoded(2, 0, encoder.last_delta)
    undo = unsettled.acked(Ack(round=2, accepted=True, applied=False))  # the round missed its quorum
    assert undo.rounds == [2]
    encoder.unsend(undo.residuals[0])
    np.testing.assert_allclose(encoder.residual, before, atol=1e-6)  # owed again, exactly as before
    assert unsettled.rounds == []


def test_a_new_coordinator_life_loses_the_rounds_after_its_checkpoint() -> None:
    unsettled = Unsettled()
    unsettled.welcomed(Settlement(life="a"))
    for round_id in (4, 5, 6):
        unsettled.began(round_id, {"state": round_id})
        unsettled.encoded(round_id, 0, np.full(3, float(round_id), dtype=np.float32))
    # Same life, a dropped link: nothing is decided by the welcome but what it names.
    assert not unsettled.welcomed(Settlement(life="a", closed=5, held=frozenset({6})))
    assert unsettled.rounds == [4, 5, 6]
    # A restarted coordinator resumed from round 4's checkpoint: 5 and 6 are lost.
    undo = unsettled.welcomed(Settlement(life="b", closed=4, applied=frozenset({4})))
    assert undo.rounds == [5, 6] and undo.optimizer == {"state": 5}
    np.testing.assert_array_equal(undo.residuals[0], np.full(3, 11.0, dtype=np.float32))
    assert unsettled.rounds == [] and not unsettled.pending(5)


@pytest.mark.slow
def test_a_resumed_coordinator_has_its_planner_ledger_book_and_sampler_back(tmp_path: Path) -> None:
    cfg = load_config(None, [
        "nodes.count=2", "training.rounds=3", "training.local_steps=5", "coordinator.port=0",
        "adapt.enabled=true", "rewards.enabled=false", f"coordinator.checkpoint_dir='{tmp_path / 'ckpt'}'",
        f"data.cache_dir='{tmp_path / 'cache'}'",
    ])
    first = assemble(cfg)
    asyncio.run(run_with_nodes(first, cfg, tmp_path))
    assert first.saver.written >= 1 and first.saver.error is None
    second = assemble(cfg)
    assert resume_run(second) == 3
    assert second.model.hash == first.model.hash
    for name, value in first.outer.state_dict().items():
        np.testing.assert_array_equal(second.outer.state_dict()[name], value)
    assert second.book.state() == first.book.state()
    assert second.shards.assignment() == first.shards.assignment()
    assert second.closed == first.closed == 3 and second.samples == first.samples
    assert [(n.node_id, n.name) for n in second.registry.all()] == [(n.node_id, n.name) for n in first.registry.all()]
    a, b = first.work.sampler, second.work.sampler
    assert a.epoch == b.epoch and a._trained == b._trained
    assert a._rng.bit_generator.state == b._rng.bit_generator.state
    assert [p.cursor for p in a._pools] == [p.cursor for p in b._pools]
    planner_a, planner_b = first.planner, second.planner
    assert type(planner_b).__name__ == "AdaptivePlanner"
    assert planner_b.knobs == planner_a.knobs and planner_b.knobs  # type: ignore[attr-defined]
    assert list(planner_b.decisions) == list(planner_a.decisions)  # type: ignore[attr-defined]
    assert planner_b.publish is second.events.publish or planner_b.publish == second.events.publish  # type: ignore[attr-defined]
    # every update the run applied is in the book's ledger, once
    ledger = list(second.book.ledger)
    assert len({(node, r) for _, node, r in ledger}) == len(ledger) == sum(len(r.answers) for r in first.history)
    assert isinstance(second, Coordinator)
