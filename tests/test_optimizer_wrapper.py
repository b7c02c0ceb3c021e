"""A user's own model and loop joining real rounds through DistributedOptimizer.

Each test runs a real coordinator on the test's event loop and the user's
synchronous loop on a worker thread (or, for the example, in separate node
processes), talking over the real QUIC transport.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

import hypergpu
from hypergpu import DistributedOptimizer
from hypergpu.config.schema import GPTConfig, HyperGPUConfig
from hypergpu.coordinator import Coordinator
from hypergpu.data.corpus import TokenWindows, load_corpus
from hypergpu.errors import ConfigError, DataError, InvalidArgumentError, ShapeMismatchError, TimeoutError
from hypergpu.model import GPT
from hypergpu.model.layout import ParamLayout
from hypergpu.model.staging import HostStaging
from hypergpu.node.runtime import Node
from hypergpu.round import Assignment, PlanView, RoundPlan, RoundRecord

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_model.py"
GPT_EXAMPLE = EXAMPLE.with_name("gpt_custom_loop.py")

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: the pinned host buffer and device<->host copies are checked on a GPU only",
)


class TinyNet(nn.Module):
    """A user-defined model (not one of the built-in nets)."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.Tanh(), nn.Linear(hidden, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def make_config(tmp_path: Path, *, rounds: int, local_steps: int, batch_size: int = 32) -> HyperGPUConfig:
    return HyperGPUConfig.model_validate({
        "training": {"rounds": rounds, "local_steps": local_steps, "batch_size": batch_size, "seed": 0,
                     # plain averaging, so one node's model is the global model (checked below)
                     "outer_optimizer": "sgd"},
        "data": {"dataset": "digits", "cache_dir": None},
        "nodes": {"count": 1},
        "coordinator": {"port": 0, "checkpoint_every": 0, "checkpoint_dir": str(tmp_path / "ckpt"),
                        "round_timeout_s": 30.0},
    })


def snapshot_params(coordinator: Coordinator, store: dict[int, np.ndarray]) -> None:
    """Keep the global parameters after every round (what the next round sends)."""

    def observer(coord: Coordinator, record: RoundRecord) -> None:
        store[record.round] = coord.model.flat_parameters().copy()

    coordinator.observers.append(observer)


async def run_with(coord: Coordinator, user: Any) -> tuple[Any, Any]:
    """Run the coordinator and ``user`` (a blocking loop, on a thread) to the end.

    The coordinator says bye in ``close()``, which is what ends the user's loop.
    """
    user_done = asyncio.ensure_future(asyncio.to_thread(user))
    try:
        summary = await coord.run(join_timeout_s=30.0)
    finally:
        await coord.close()
    return summary, await user_done


def train_loop(opt: DistributedOptimizer, model: nn.Module, **step_kwargs: Any) -> list[int]:
    """The user's loop; returns the round the optimizer was in after each step."""
    rounds: list[int] = []
    while not opt.finished:
        for x, y in opt.dataloader():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step(loss=loss, **step_kwargs)
            rounds.append(opt.round)
            if opt.finished:
                break
    return rounds


async def test_wrapper_drives_rounds_and_the_global_model_improves(tmp_path: Path) -> None:
    rounds, local_steps = 4, 10
    coord = Coordinator(make_config(tmp_path, rounds=rounds, local_steps=local_steps), model=TinyNet())
    initial_accuracy = coord.model.evaluate(coord.data.test).accuracy
    after_round: dict[int, np.ndarray] = {}
    snapshot_params(coord, after_round)
    join = await coord.start()

    model = TinyNet()
    layout = ParamLayout.from_model(model)
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    local_after_step: list[np.ndarray] = []
    inner.register_step_post_hook(lambda *_: local_after_step.append(layout.flatten(model)))
    boundary_checks: list[tuple[int, int, bool]] = []

    def user() -> tuple[list[int], DistributedOptimizer]:
        opt = DistributedOptimizer(inner, model, join=join, token=coord.token, name="user-loop", round_timeout_s=30.0)
        # The constructor loaded round 1's parameters: the coordinator's initial model.
        assert opt.round == 1
        seen: list[int] = []
        while not opt.finished:
            for x, y in opt.dataloader():
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                before = opt.round
                opt.step(loss=loss)
                seen.append(opt.round)
                if opt.round != before and not opt.finished:
                    # step() returned only once the next round's parameters were loaded.
                    boundary_checks.append((before, coord.round, np.array_equal(layout.flatten(model), after_round[before])))
                if opt.finished:
                    break
        return seen, opt

    summary, (seen, opt) = await run_with(coord, user)
    opt.close()

    assert opt.finished and summary.rounds == rounds
    assert opt.report.rounds == rounds and opt.accepted == rounds and opt.refused == 0
    # local_steps steps per round, the last one being the boundary.
    expected: list[int] = []
    for r in range(1, rounds + 1):
        expected += [r] * (local_steps - 1) + [min(r + 1, rounds)]
    assert seen == expected
    assert [(before, now) for before, now, _ in boundary_checks] == [(r, r + 1) for r in range(1, rounds)]
    assert all(loaded for _, _, loaded in boundary_checks)
    # Sign and layout: with one node and SGD at outer lr 1 the global model after a
    # round is this node's model after its last local step of that round.
    for r in range(1, rounds + 1):
        np.testing.assert_allclose(after_round[r], local_after_step[r * local_steps - 1], atol=1e-5)
    # The coordinator weighted it by the samples counted from the forward passes.
    assert all(rec.samples == local_steps * 32 for rec in coord.history)
    assert summary.accuracy is not None and summary.accuracy >= 0.7
    assert summary.accuracy > initial_accuracy + 0.4

    # After bye, step() is a plain local step.
    before = layout.flatten(model)
    x, y = next(iter(opt.dataloader()))
    F.cross_entropy(model(x), y).backward()
    opt.step()
    assert opt.report.rounds == rounds and not np.array_equal(before, layout.flatten(model))


async def test_a_lost_link_is_reconnected_and_training_goes_on(tmp_path: Path) -> None:
    rounds = 3
    coord = Coordinator(make_config(tmp_path, rounds=rounds, local_steps=4), model=TinyNet())
    join = await coord.start()

    async def drop_link_after_round_1(c: Coordinator, record: RoundRecord) -> None:
        if record.round != 1:
            return
        (node_id,) = record.reported
        link = c.members.links[node_id]
        await link.close("dropped by the test")
        # Let the node come back before round 2 is planned.
        for _ in range(200):
            if c.link_stats(node_id) is not None and c.members.links.get(node_id) not in (None, link):
                return
            await asyncio.sleep(0.05)
        raise AssertionError("the node did not reconnect within 10 s")

    coord.observers.append(drop_link_after_round_1)
    model = TinyNet()

    def user() -> DistributedOptimizer:
        opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, join=join,
                                   token=coord.token, name="flaky", round_timeout_s=30.0)
        with opt:
            train_loop(opt, model)
        return opt

    summary, opt = await run_with(coord, user)
    assert opt.links_lost == 1
    assert opt.report.rounds == rounds and opt.accepted == rounds
    assert summary.rounds == rounds and all(rec.applied for rec in coord.history)
    assert len(coord.registry.all()) == 1  # the same node came back, not a new one


async def test_step_times_out_clearly_when_no_next_round_comes(tmp_path: Path) -> None:
    coord = Coordinator(make_config(tmp_path, rounds=3, local_steps=2), model=TinyNet())
    join = await coord.start()
    coord.observers.append(lambda c, record: c.pause())  # no round 2 until resumed
    model = TinyNet()
    errors: list[str] = []

    def user() -> None:
        opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, join=join,
                                   token=coord.token, name="waiting", round_timeout_s=1.0)
        with opt:
            with pytest.raises(InvalidArgumentError, match="pass step\\(batch_size=...\\)"):
                opt.step()  # no forward pass ran: the wrapper cannot count samples
            x, y = next(iter(opt.dataloader()))
            F.cross_entropy(model(x), y).backward()
            opt.step()
            F.cross_entropy(model(x), y).backward()
            with pytest.raises(TimeoutError, match="no parameters for the next round within 1 s") as caught:
                opt.step()
            errors.append(str(caught.value))
        loop.call_soon_threadsafe(coord.request_stop)

    loop = asyncio.get_running_loop()
    await run_with(coord, user)
    assert errors and coord.round == 1


class TopKPlanner:
    """Every node, 5 local steps, top-k updates of 20 % of the coordinates."""

    label = "topk"

    def plan(self, round_id: int, view: PlanView) -> RoundPlan:
        a = Assignment(batch_size=16, local_steps=5, codec="topk", codec_ratio=0.2)
        return RoundPlan(round_id, {n.node_id: a for n in view.nodes})

    def observe(self, record: RoundRecord) -> None:
        return None

    def status(self) -> dict[str, Any] | None:
        return None


async def test_local_steps_override_explicit_samples_and_topk(tmp_path: Path) -> None:
    rounds = 3
    coord = Coordinator(make_config(tmp_path, rounds=rounds, local_steps=10), model=TinyNet(),
                        planner=TopKPlanner())
    join = await coord.start()
    model = TinyNet()

    def user() -> tuple[list[int], DistributedOptimizer]:
        opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, join=join,
                                   token=coord.token, name="override", local_steps=3, round_timeout_s=30.0)
        assert opt.batch_size == 16 and opt.local_steps == 3  # assigned batch size, own step count
        with opt:
            return train_loop(opt, model, batch_size=7), opt

    _, (seen, opt) = await run_with(coord, user)
    assert seen[:5] == [1, 1, 2, 2, 2]  # a boundary every 3 steps, not the assigned 5
    assert opt.accepted == rounds
    for record in coord.history:
        node = next(iter(record.answers.values()))
        assert record.applied and node.samples == 3 * 7 and node.codec == "topk"
    # The residual of what top-k left out is carried between rounds.
    residual = opt._encoder.residual  # noqa: SLF001 - the residual is internal state
    assert residual is not None and np.count_nonzero(residual) > 0


async def test_a_different_model_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    coord = Coordinator(make_config(tmp_path, rounds=1, local_steps=1), model=TinyNet(hidden=32))
    join = await coord.start()
    model = TinyNet(hidden=48)

    def user() -> None:
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, join=join,
                             token=coord.token, name="mismatch", connect_timeout_s=20.0)

    try:
        with pytest.raises(ShapeMismatchError, match="does not match the coordinator's"):
            await asyncio.to_thread(user)
    finally:
        await coord.close()


async def test_overlap_is_refused_by_the_wrapped_optimizer_with_a_clear_error(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, rounds=1, local_steps=2).model_copy(deep=True)
    cfg.training.overlap = True
    coord = Coordinator(cfg, model=TinyNet())
    join = await coord.start()
    model = TinyNet()

    def user() -> None:
        DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, join=join,
                             token=coord.token, name="stepwise", connect_timeout_s=20.0)

    try:
        with pytest.raises(ConfigError, match="training.overlap, training.fragments and training.link_fragments need the"):
            await asyncio.to_thread(user)
    finally:
        await coord.close()


async def test_the_builtin_node_shares_the_session_and_still_trains(tmp_path: Path) -> None:
    """The runtime Node runs on the same session pieces (hello, welcome, encoder)."""
    coord = Coordinator(make_config(tmp_path, rounds=2, local_steps=5), model=TinyNet(), planner=TopKPlanner())
    join = await coord.start()
    node = Node(join, token=coord.token, name="builtin", model_factory=lambda shape, classes: TinyNet(),
                device="cpu")
    running = asyncio.ensure_future(node.run())
    try:
        summary = await coord.run(join_timeout_s=30.0)
    finally:
        await coord.close()
    report = await asyncio.wait_for(running, 30.0)
    assert summary.rounds == 2 and report.rounds == 2 and report.acks["accepted"] == 2
    assert all(next(iter(r.answers.values())).codec == "topk" for r in coord.history)


def _run_example(script: Path, rounds: int, cwd: Path) -> subprocess.CompletedProcess[str]:
    package_root = str(Path(hypergpu.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=package_root)
    done = subprocess.run(
        [sys.executable, str(script), "--rounds", str(rounds)],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=240,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_example_trains_a_custom_model_end_to_end(tmp_path: Path) -> None:
    done = _run_example(EXAMPLE, 6, tmp_path)
    found = re.search(r"final test accuracy: ([0-9.]+) \(2 nodes", done.stdout)
    assert found, done.stdout
    assert float(found.group(1)) >= 0.9
    assert done.stdout.count("6 updates accepted, 0 refused") == 2


@pytest.mark.slow
def test_gpt_example_trains_a_language_model_end_to_end(tmp_path: Path) -> None:
    done = _run_example(GPT_EXAMPLE, 4, tmp_path)
    held_out = [float(v) for v in re.findall(r"held-out loss ([0-9.]+)  perplexity", done.stdout)]
    assert len(held_out) == 4, done.stdout
    found = re.search(r"final held-out loss: ([0-9.]+) \(perplexity ([0-9.]+), 2 nodes", done.stdout)
    assert found, done.stdout
    loss, perplexity = float(found.group(1)), float(found.group(2))
    assert loss == pytest.approx(held_out[-1], abs=1e-3) and perplexity == pytest.approx(np.exp(loss), rel=1e-3)
    # Uniform guessing over 256 bytes is ln 256 = 5.55; 40 local steps get a tiny GPT to about 3.0.
    assert loss < held_out[0] - 0.2 and loss < 3.5, done.stdout
    assert done.stdout.count("4 updates accepted, 0 refused") == 2
    assert (tmp_path / ".hypergpu-cache").is_dir()  # the corpus was cached under the working dir


async def test_the_wrapper_brings_its_own_data_and_still_gets_its_shard(tmp_path: Path) -> None:
    """Its hello says follows_work=False: it takes part in rounds, but no samples are named for it."""
    coord = Coordinator(make_config(tmp_path, rounds=1, local_steps=2), model=TinyNet())
    join = await coord.start()
    seen: list[tuple[list[int], set[int]]] = []
    coord.observers.append(lambda c, record: seen.append((record.participants, set(c.members.follows_work))))
    model = TinyNet()

    def user() -> DistributedOptimizer:
        opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, join=join,
                                   token=coord.token, name="own-data", round_timeout_s=30.0)
        with opt:
            assert opt._link.session.hello.follows_work is False  # noqa: SLF001 - what it said
            assert len(opt.shard) > 0  # a classification welcome still carries the shard
            train_loop(opt, model)
        return opt

    summary, opt = await run_with(coord, user)
    assert summary.rounds == 1 and opt.accepted == 1
    assert seen == [([opt.node_id], set())]


async def test_the_wrapper_joins_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = TinyNet()
    monkeypatch.delenv("HYPERGPU_JOIN", raising=False)
    monkeypatch.setenv("HYPERGPU_TOKEN", "x" * 12)
    with pytest.raises(InvalidArgumentError, match="HYPERGPU_JOIN not set"):
        DistributedOptimizer.from_env(torch.optim.SGD(model.parameters(), lr=0.1), model)
    coord = Coordinator(make_config(tmp_path, rounds=1, local_steps=2), model=TinyNet())
    monkeypatch.setenv("HYPERGPU_JOIN", await coord.start())
    monkeypatch.setenv("HYPERGPU_TOKEN", coord.token)
    monkeypatch.setenv("HYPERGPU_NODE_NAME", "from-env")

    def user() -> DistributedOptimizer:
        opt = DistributedOptimizer.from_env(torch.optim.SGD(model.parameters(), lr=0.1), model, round_timeout_s=30.0)
        with opt:
            train_loop(opt, model)
        return opt

    summary, opt = await run_with(coord, user)
    assert summary.rounds == 1 and opt.accepted == 1 and opt.name == "from-env"
    assert coord.registry.get(opt.node_id).name == "from-env"


def make_lm_config(tmp_path: Path, *, rounds: int, local_steps: int, batch_size: int) -> HyperGPUConfig:
    return HyperGPUConfig.model_validate({
        "training": {"model": "gpt", "gpt": {"n_layer": 1, "n_head": 2, "n_embd": 16, "block_size": 16},
                     "rounds": rounds, "local_steps": local_steps, "batch_size": batch_size, "seed": 0},
        "data": {"dataset": "stdlib", "cache_dir": str(tmp_path / "cache"), "eval_samples": 16},
        "nodes": {"count": 1},
        "coordinator": {"port": 0, "checkpoint_every": 0, "checkpoint_dir": str(tmp_path / "ckpt"),
                        "round_timeout_s": 30.0},
    })


async def test_a_language_model_loop_counts_blocks_and_reports_any_loss(tmp_path: Path) -> None:
    batch = 4
    config = make_lm_config(tmp_path, rounds=1, local_steps=5, batch_size=batch)
    coord = Coordinator(config)
    join = await coord.start()
    windows = TokenWindows(load_corpus(config.data).train, config.training.gpt.block_size)
    model = GPT(config.training.gpt, 256)
    first_loss: list[float] = []

    def user() -> DistributedOptimizer:
        opt = DistributedOptimizer(torch.optim.AdamW(model.parameters(), lr=1e-3), model, join=join,
                                   token=coord.token, name="lm", round_timeout_s=30.0)
        with opt:
            with pytest.raises(DataError, match="token corpus"):
                opt.dataloader()  # no arrays to serve: the loop brings its own batches
            with pytest.raises(InvalidArgumentError, match="a tensor or a number, got str"):
                opt.step(loss="low")  # type: ignore[arg-type]
            # Whatever the loop's loss looks like: per token, a numpy number, NaN, a 0-d tensor, an array.
            reported: list[Any] = [None, np.float32(2.0), float("nan"), torch.tensor(4.0), np.array([5.0, 7.0])]
            for step, value in enumerate(reported):
                x, y = windows.batch(np.arange(step * batch, (step + 1) * batch))
                logits = model(x)
                loss = F.cross_entropy(logits.view(-1, 256), y.view(-1), reduction="none")
                opt.zero_grad()
                loss.mean().backward()
                if value is None:
                    value = loss  # (batch * block_size,) per-token losses: reported as their mean
                    first_loss.append(float(loss.detach().mean()))
                opt.step(loss=value)
            assert opt.finished
        return opt

    summary, opt = await run_with(coord, user)
    assert opt.accepted == 1 and summary.loss is not None
    (record,) = coord.history
    answer = record.answers[opt.node_id]  # type: ignore[index]
    # A sample is a block: 5 steps of `batch` sequences, not batch * block_size tokens.
    assert answer.samples == record.samples == 5 * batch
    # Equal samples per step, and the NaN left out.
    assert answer.loss == pytest.approx((first_loss[0] + 2.0 + 4.0 + 6.0) / 4)


def test_host_staging_round_trips_a_cpu_model_through_one_buffer() -> None:
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8), 256)  # a tied weight
    layout = ParamLayout.from_model(model)
    staging = HostStaging(layout, torch.device("cpu"))
    assert not staging.pinned and staging.host.shape == (layout.total,)
    buffer = staging.host.data_ptr()
    np.testing.assert_array_equal(staging.gather(model), layout.flatten(model))
    new = np.random.default_rng(0).standard_normal(layout.total).astype(np.float32)
    staging.scatter(model, new)
    np.testing.assert_array_equal(staging.gather(model), new)
    assert model.lm_head.weight is model.wte.weight
    assert staging.host.data_ptr() == buffer  # allocated once
    with pytest.raises(ShapeMismatchError):
        staging.scatter(model, new[:-1])
    # Other float types are converted both ways.
    half = nn.Linear(3, 2).to(torch.float64)
    layout64 = ParamLayout.from_model(half)
    staging64 = HostStaging(layout64, torch.device("cpu"))
    values = np.arange(layout64.total, dtype=np.float32)
    staging64.scatter(half, values)
    assert half.weight.dtype == torch.float64
    np.testing.assert_array_equal(staging64.gather(half), values)


@needs_cuda
def test_host_staging_moves_a_cuda_model_through_a_pinned_buffer() -> None:
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8), 256).cuda()
    layout = ParamLayout.from_model(model)
    staging = HostStaging(layout, next(model.parameters()).device)
    assert staging.pinned and staging.host.is_pinned()
    buffer = staging.host.data_ptr()
    np.testing.assert_array_equal(staging.gather(model), layout.flatten(model))
    new = np.random.default_rng(0).standard_normal(layout.total).astype(np.float32)
    for _ in range(3):  # each round reuses the buffer after the asynchronous upload
        staging.scatter(model, new)
        np.testing.assert_array_equal(staging.gather(model), new)
        np.testing.assert_array_equal(layout.flatten(model), new)
        new = new * 0.5
    assert staging.host.data_ptr() == buffer


@needs_cuda
async def test_wrapper_drives_rounds_of_a_cuda_model(tmp_path: Path) -> None:
    rounds, local_steps = 3, 4
    coord = Coordinator(make_config(tmp_path, rounds=rounds, local_steps=local_steps), model=TinyNet())
    after_round: dict[int, np.ndarray] = {}
    snapshot_params(coord, after_round)
    join = await coord.start()
    model = TinyNet().cuda()
    layout = ParamLayout.from_model(model)
    local_after_step: list[np.ndarray] = []
    inner = torch.optim.Adam(model.parameters(), lr=1e-2)
    inner.register_step_post_hook(lambda *_: local_after_step.append(layout.flatten(model)))

    def user() -> DistributedOptimizer:
        opt = DistributedOptimizer(inner, model, join=join, token=coord.token, name="gpu", round_timeout_s=30.0)
        assert opt._staging.pinned  # noqa: SLF001 - the path under test
        with opt:
            while not opt.finished:
                for x, y in opt.dataloader():
                    loss = F.cross_entropy(model(x.cuda()), y.cuda())
                    opt.zero_grad()
                    loss.backward()
                    opt.step(loss=loss)
                    if opt.finished:
                        break
        return opt

    summary, opt = await run_with(coord, user)
    assert summary.rounds == rounds and opt.accepted == rounds and opt.refused == 0
    assert all(rec.train_loss is not None for rec in coord.history)
    for r in range(1, rounds + 1):
        np.testing.assert_allclose(after_round[r], local_after_step[r * local_steps - 1], atol=1e-5)
