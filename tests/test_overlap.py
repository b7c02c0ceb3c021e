"""Overlap: a node trains its next work while its update uploads, and folds the
outer step in when it arrives (a one-round-delayed outer step)."""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path

import numpy as np
import pytest

from hypergpu.config import load_config
from hypergpu.coordinator import Coordinator, Summary
from hypergpu.data import load_digits, partition, split_train_test
from hypergpu.launch import local_run
from hypergpu.model import ModelManager, build_model
from hypergpu.node.overlap import Folder
from hypergpu.node.runtime import Node
from hypergpu.node.trainer import LocalTrainer, catch_up_steps
from hypergpu.transport import LinkShape
from test_lm import lm_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")

RNG = np.random.default_rng(0)


def vec(n: int = 6) -> np.ndarray:
    return RNG.standard_normal(n).astype(np.float32)


# --- the fold (sans-IO) -------------------------------------------------------------


def test_the_first_parameters_are_loaded_as_they_are() -> None:
    folder, theta = Folder(), vec()
    folder.arrive(theta, 0, 0)
    assert folder.ready
    np.testing.assert_array_equal(folder.fold(vec()), theta)
    assert not folder.ready and folder.version == 0


def test_a_fold_keeps_exactly_the_progress_made_since_the_update_was_sent() -> None:
    folder, theta0 = Folder(), vec()
    folder.arrive(theta0, 0, 0)
    local = folder.fold(theta0)
    delta1 = vec()  # round 1's steps
    local = local + delta1
    folder.outgoing(1, delta1)
    since = vec()  # round 2's steps so far, taken before round 1's outer step came
    local = local + since
    theta1 = theta0 + 0.7 * delta1 + vec()  # the outer step, with everyone's updates
    folder.arrive(theta1, 1, 1)
    np.testing.assert_allclose(folder.fold(local), theta1 + since, rtol=1e-6, atol=1e-6)
    assert folder.pending_rounds == [] and folder.closed == 1


def test_updates_for_rounds_not_yet_closed_stay_in_the_local_model() -> None:
    folder, theta0 = Folder(), vec()
    folder.arrive(theta0, 0, 0)
    local = folder.fold(theta0)
    d1, d2 = vec(), vec()
    folder.outgoing(1, d1)
    folder.outgoing(2, d2)
    local = local + d1 + d2
    theta1 = vec()
    folder.arrive(theta1, 1, 1)  # includes round 1, not round 2
    np.testing.assert_allclose(folder.fold(local), theta1 + d2, rtol=1e-6, atol=1e-6)
    assert folder.pending_rounds == [2]


def test_without_overlap_the_fold_is_a_plain_load_and_older_parameters_never_undo_newer() -> None:
    folder, theta0 = Folder(), vec()
    folder.arrive(theta0, 0, 0)
    d1 = vec()
    folder.outgoing(1, d1)
    local = folder.fold(theta0) + d1
    theta1, stale = vec(), vec()
    folder.arrive(theta1, 1, 1)
    folder.arrive(stale, 0, 0)  # overtaken on the way: older than what is folded
    np.testing.assert_allclose(folder.fold(local), theta1, rtol=1e-6, atol=1e-6)
    assert folder.version == 1


class FoldAtStep(Folder):
    """Parameters (version and round ``closed``) that arrive while the trainer is between two steps:
    at its ``at``-th look."""

    def __init__(self, params: np.ndarray, at: int, closed: int = 1):
        super().__init__()
        self._later, self._checks, self._at, self._closed = params, 0, at, closed

    @property
    def ready(self) -> bool:
        self._checks += 1
        if self._checks == self._at:
            self.arrive(self._later, self._closed, self._closed)
        return super().ready


def small_trainer() -> tuple[LocalTrainer, np.ndarray, np.ndarray]:
    """A digits MLP's trainer, its starting parameters, and parameters a step away from them."""
    cfg = load_config(None, ["training.model=mlp", "training.hidden_sizes=[16]", "training.lr=0.01"])
    train, _ = split_train_test(load_digits(), 0.2, seed=0)
    shard = partition(train, 2, seed=0)[0]
    start = ModelManager(build_model(cfg.training, (1, 8, 8), 10)).flat_parameters()
    trainer = LocalTrainer(build_model(cfg.training, (1, 8, 8), 10), shard, cfg.training, device="cpu")
    return trainer, start, start + 0.05 * np.sign(vec(start.size))


def test_an_update_is_its_own_steps_however_the_model_moved_under_it() -> None:
    trainer, start, arriving = small_trainer()
    folder = FoldAtStep(arriving, at=4)  # start, step 1, step 2 check; the 4th check folds
    folder.arrive(start, 0, 0)
    result = trainer.train_round(None, steps=5, batch_size=16, folder=folder)
    assert folder.version == 1 and not folder.ready
    # The model ends where the arrived parameters plus this round's own steps put it.
    np.testing.assert_allclose(trainer.layout.flatten(trainer.model), arriving + result.update, atol=1e-5)
    assert np.abs(result.update).max() < 0.05  # the fold's jump is not part of the update


def test_a_work_whose_round_closed_stops_and_its_steps_go_out() -> None:
    trainer, start, arriving = small_trainer()
    folder = FoldAtStep(arriving, at=3, closed=3)  # the third look (the start is the first) sees it
    folder.arrive(start, 2, 2)
    result = trainer.train_round(None, steps=10, batch_size=16, folder=folder, late_after=3)
    # Round 3 closed as the second step began: the work stops after it (the update is late whatever it does).
    assert result.samples_seen == 2 * 16 and result.metrics["steps"] == 2.0
    assert folder.version == 3  # what closed it is folded in, and the update is still the steps' own
    np.testing.assert_allclose(trainer.layout.flatten(trainer.model), arriving + result.update, atol=1e-5)
    # Work for a round still open runs to its end; so does work whose round closed before it began
    # for one step at least (the update carries something).
    assert trainer.train_round(None, steps=4, batch_size=16, folder=folder, late_after=4).samples_seen == 64
    assert trainer.train_round(None, steps=4, batch_size=16, folder=folder, late_after=3).samples_seen == 16


def test_a_node_whose_update_came_late_cuts_its_work_by_that_much() -> None:
    # At 2 s a step, 5 s late: four steps fewer (2.5 rounded up, and one of margin).
    assert catch_up_steps(20, 20, done=1, elapsed_s=2.0, late_s=5.0) == 16
    assert catch_up_steps(20, 20, done=1, elapsed_s=2.0, late_s=0.0) == 20
    # Half the planned work stays, however late; what is done stays done; nothing grows back.
    assert catch_up_steps(20, 20, done=4, elapsed_s=8.0, late_s=100.0) == 10
    assert catch_up_steps(20, 20, done=12, elapsed_s=24.0, late_s=100.0) == 12
    assert catch_up_steps(12, 20, done=2, elapsed_s=4.0, late_s=1.0) == 10  # down to its floor: no more
    assert catch_up_steps(14, 20, done=2, elapsed_s=4.0, late_s=1.0) == 12
    # In a work: the cut the folder asks for (an ack said an update came late) is taken once.
    trainer, start, _ = small_trainer()
    folder = Folder()
    folder.arrive(start, 1, 0)
    folder.catch_up(3.0)
    folder.catch_up(1000.0)  # acks for two late rounds: the larger cut, not the sum
    result = trainer.train_round(None, steps=10, batch_size=16, folder=folder, late_after=5)
    assert result.metrics["steps"] == 5.0 and result.samples_seen == 5 * 16
    assert folder.take_catch_up() == 0.0
    assert trainer.train_round(None, steps=10, batch_size=16, folder=folder, late_after=5).metrics["steps"] == 10.0


# --- real runs ----------------------------------------------------------------------


def digits_config(tmp_path: Path, *extra: str):
    return load_config(None, [
        "training.model=mlp", "training.hidden_sizes=[256, 256]", "training.lr=0.003", "training.rounds=8",
        "training.local_steps=30", "training.overlap=true", "nodes.count=2", "coordinator.port=0",
        "coordinator.quorum=1.0", "coordinator.checkpoint_every=0", "rewards.enabled=false",
        f"coordinator.checkpoint_dir='{tmp_path / 'ckpt'}'", *extra,
    ])


async def run_with_a_slow_uplink(coord: Coordinator, bandwidth_bps: int) -> tuple[Summary, list[Node]]:
    """Run ``coord`` with two in-process nodes over QUIC, node 0's uplink shaped to ``bandwidth_bps``."""
    join = await coord.start()
    shape = LinkShape.asymmetric(LinkShape(bandwidth_bps=bandwidth_bps), LinkShape(), seed=0)
    nodes = [Node(join, token=coord.token, name=f"node-{i}", index=i, device="cpu", shape=shape if i == 0 else None)
             for i in range(2)]
    running = [asyncio.ensure_future(n.run()) for n in nodes]
    try:
        summary = await coord.run(join_timeout_s=60)
    finally:
        await coord.close()
        await asyncio.gather(*running)
    return summary, nodes


@pytest.mark.slow
async def test_a_node_keeps_training_while_its_update_uploads(tmp_path: Path) -> None:
    cfg = digits_config(tmp_path)
    coord = Coordinator(cfg)
    # ~85k parameters: each raw update takes ~1.4 s up a 2 Mbit/s link.
    summary, nodes = await run_with_a_slow_uplink(coord, 2_000_000)
    assert summary.rounds == 8 and all(r.applied for r in coord.history)
    assert summary.accuracy is not None and summary.accuracy >= 0.9
    utilisation = {n["name"]: n["utilisation"] for n in summary.nodes}
    print("compute utilisation:", utilisation)
    assert all(0 < u <= 1 for u in utilisation.values())
    # A node's clock starts at its first work: joining and waiting for the run are start-up, not waiting.
    assert [a.idle_s for a in coord.history[0].answers.values()] == [0.0, 0.0]
    # Round 1's parameters are the initial ones each node built itself (named by digest, not sent);
    # round 2's work went out with round 1's, and without them again; round 3's brings round 1's
    # outer step (raw here).
    first, second, third = ([a.params_bytes or 0 for a in coord.history[r].answers.values()] for r in (0, 1, 2))
    raw = 4 * coord.model.layout.total
    assert max(first + second) < raw <= min(third), (raw, first, second, third)
    # From the shaped node's own clock: its next work began while each upload was still in flight.
    timeline = nodes[0].timeline
    acked = {r: b for kind, r, _, b in timeline if kind == "acked"}
    uploads = {r: (a, acked[r]) for kind, r, a, _ in timeline if kind == "upload"}
    trains = {r: (a, b) for kind, r, a, b in timeline if kind == "train"}
    overlapped = [r for r in range(1, 8) if trains[r + 1][0] < uploads[r][1]]
    slowest = max(b - a for a, b in uploads.values())
    print(f"uploads up to {slowest:.2f} s; rounds whose next work began mid-upload: {overlapped}")
    assert slowest > 0.5 and len(overlapped) >= 6
    # ... and the coordinator weighed updates that missed one outer step by the staleness decay.
    assert {a.weight for r in list(coord.history)[2:] for a in r.answers.values()} <= {0.5, 1.0}
    # The node's own send -> ack measure reaches the coordinator: its uplink, not its turnaround.
    measured = [a.upload_bytes * 8 / a.upload_s for r in coord.history for n, a in r.answers.items()
                if n == 0 and a.upload_s and a.upload_bytes]
    print("node 0's uploads as it measured them, Mbit/s:", [round(m / 1e6, 2) for m in measured])
    assert len(measured) >= 6 and 0.8e6 < statistics.median(measured) <= 2.2e6


@pytest.mark.slow
def test_the_delayed_outer_step_trains_the_gpt_to_its_target(tmp_path: Path) -> None:
    cfg = lm_config(tmp_path, "nodes.count=2", "training.rounds=12", "training.local_steps=20",
                    "training.target_loss=3.0", "training.overlap=true")

    async def train():
        async with local_run(cfg, log_dir=tmp_path / "logs") as run:
            return run.coordinator, await run.train(join_timeout_s=120)

    coord, summary = asyncio.run(train())
    losses = [r.test_loss for r in coord.history]
    print("held-out loss per round with overlap:", [round(x, 3) for x in losses if x is not None])
    assert all(r.applied for r in coord.history)
    assert summary.reached_target and summary.loss is not None and summary.loss <= 3.0
    # Each record says when its round closed (wall clock) and what its evaluation took.
    assert all(r.closed_at is not None and r.eval_s is not None and r.eval_s > 0 for r in coord.history)
    # Every update after the first round began before the last outer step reached its node.
    assert any(a.weight < 1.0 for r in coord.history for a in r.answers.values())


def test_after_a_rejoin_the_next_parameters_are_taken_as_they_are() -> None:
    folder, theta = Folder(), vec()
    folder.arrive(theta, 5, 5)
    local = folder.fold(theta)
    d6 = vec()
    folder.outgoing(6, d6)  # sent to a coordinator that then died before applying it
    local = local + d6
    folder.rejoined()
    restored = vec()  # the restarted coordinator's checkpoint: an older version
    folder.arrive(restored, 4, 4)
    np.testing.assert_array_equal(folder.fold(local), restored)
    assert folder.pending_rounds == [] and folder.version == 4


def test_a_round_run_twice_is_taken_out_twice() -> None:
    folder, theta = Folder(), vec()
    folder.arrive(theta, 0, 0)
    local = folder.fold(theta)
    first, again = vec(), vec()
    folder.outgoing(1, first)
    folder.outgoing(1, again)  # the same round once more (its first update was never applied)
    local = local + first + again
    theta1 = vec()
    folder.arrive(theta1, 1, 1)
    np.testing.assert_allclose(folder.fold(local), theta1, rtol=1e-6, atol=1e-6)
