"""The local trainer on real digits: learning, speed emulation, accumulation, metrics."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from hypergpu.config import load_config
from hypergpu.data import load_digits, partition, split_train_test
from hypergpu.errors import ConfigError, DataError, InvalidArgumentError, NonFiniteError, ShapeMismatchError
from hypergpu.model import ModelManager, build_model
from hypergpu.node.metrics import RollingMetrics
from hypergpu.node.trainer import LocalTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def digits():
    return split_train_test(load_digits(), 0.2, seed=0)


def _mlp(*extra: str):
    return load_config(None, ["training.model=mlp", "training.hidden_sizes=[32]", "training.lr=0.01", *extra])


def test_round_reduces_loss_on_a_shard(digits):
    train, _ = digits
    cfg = _mlp()
    shard = partition(train, 4, seed=0)[0]
    manager = ModelManager(build_model(cfg.training, (1, 8, 8), 10))
    trainer = LocalTrainer(lambda: build_model(cfg.training, (1, 8, 8), 10), shard, cfg.training, device="cpu")
    shard_data = shard.as_dataset()
    before = manager.evaluate(shard_data).loss
    received = manager.flat_parameters()
    result = trainer.train_round(received, steps=40, batch_size=16)
    update, seen, figures = result  # unpacks as a tuple
    assert update.dtype == np.float32 and update.shape == received.shape
    assert seen == 40 * 16 and figures["samples"] == seen and figures["steps"] == 40
    # The sign: update = trained - received, so adding it reproduces the trained model.
    np.testing.assert_allclose(received + update, trainer.layout.flatten(trainer.model), atol=1e-6)
    manager.apply_update(update)
    after = manager.evaluate(shard_data).loss
    print("held-out loss on the shard before, after:", before, after)
    assert after < before * 0.5, (before, after)
    for key in ("forward_s", "backward_s", "step_s", "compute_s", "wall_s"):
        assert figures[key] > 0
    assert figures["throttle_s"] == 0.0


def test_default_steps_and_epochs_from_config(digits):
    train, _ = digits
    shard = partition(train, 10, seed=0)[3]
    cfg = _mlp("training.local_steps=3", "training.batch_size=8")
    trainer = LocalTrainer(build_model(cfg.training, (1, 8, 8), 10), shard, cfg.training, device="cpu")
    params = trainer.layout.flatten(trainer.model)
    assert trainer.train_round(params).samples_seen == 24
    by_epoch = _mlp("training.local_steps=0", "training.epochs=2", "training.batch_size=50")
    trainer.training = by_epoch.training
    result = trainer.train_round(params)
    assert result.metrics["steps"] == 2 * int(np.ceil(len(shard) / 50))
    assert result.samples_seen >= 2 * len(shard)


def test_speed_factor_slows_by_the_expected_share(digits):
    train, _ = digits
    cfg = _mlp()
    shard = partition(train, 4, seed=0)[1]
    trainer = LocalTrainer(build_model(cfg.training, (1, 8, 8), 10), shard, cfg.training,
                           device="cpu", speed_factor=0.25)
    params = trainer.layout.flatten(trainer.model)
    started = time.perf_counter()
    figures = trainer.train_round(params, steps=10, batch_size=32).metrics
    elapsed = time.perf_counter() - started
    # A quarter-speed GPU spends three times its compute time waiting.
    assert figures["throttle_s"] == pytest.approx(3.0 * figures["compute_s"], rel=1e-9)
    assert elapsed >= figures["compute_s"] + figures["throttle_s"]
    trainer.set_speed_factor(1.0)
    assert trainer.train_round(params, steps=2).metrics["throttle_s"] == 0.0
    for bad in (0.0, -1.0, 1.5, float("nan")):
        with pytest.raises(InvalidArgumentError, match="speed_factor"):
            trainer.set_speed_factor(bad)


def test_accumulation_matches_one_big_batch(digits):
    train, _ = digits
    cfg = _mlp("training.optimizer=sgd", "training.momentum=0.0", "training.lr=0.1")
    shard = partition(train, 2, seed=0)[0]
    build = lambda: build_model(cfg.training, (1, 8, 8), 10)  # noqa: E731
    big = LocalTrainer(build, shard, cfg.training, device="cpu", seed=7)
    small = LocalTrainer(build, shard, cfg.training, device="cpu", seed=7)
    params = big.layout.flatten(big.model)
    one = big.train_round(params, steps=5, batch_size=64)
    four = small.train_round(params, steps=5, batch_size=16, accumulation=4)
    assert one.samples_seen == four.samples_seen == 5 * 64
    np.testing.assert_allclose(four.update, one.update, rtol=1e-4, atol=1e-6)
    assert four.metrics["loss"] == pytest.approx(one.metrics["loss"], rel=1e-5)
    # Without accumulation the small batch is a genuinely different computation.
    plain = LocalTrainer(build, shard, cfg.training, device="cpu", seed=7)
    differs = plain.train_round(params, steps=5, batch_size=16)
    assert not np.allclose(differs.update, one.update, rtol=1e-4, atol=1e-6)


def test_new_parameters_and_new_shard_between_rounds(digits):
    train, _ = digits
    cfg = _mlp()
    shards = partition(train, 3, seed=0)
    trainer = LocalTrainer(build_model(cfg.training, (1, 8, 8), 10), shards[0], cfg.training, device="cpu")
    zero = np.zeros(trainer.layout.total, np.float32)
    trainer.train_round(zero + 0.5, steps=2)
    # The next round starts from the parameters it is given, not from the last round's.
    fresh = np.random.default_rng(1).normal(scale=0.1, size=trainer.layout.total).astype(np.float32)
    result = trainer.train_round(fresh, steps=1)
    np.testing.assert_allclose(trainer.layout.flatten(trainer.model), fresh + result.update, atol=1e-6)
    trainer.set_shard([shards[1], shards[2]])  # shards lent to a node add to what it holds
    held = sum(len(s) for s in shards)
    assert trainer.train_round(zero, epochs=1, batch_size=held).samples_seen == held
    # Work names the exact samples: two of shard 2 and one of shard 0, one step of three.
    work = np.array([[2, 5], [0, 1], [2, 7]])
    named = trainer.train_round(zero, batch_size=3, work=work)
    assert named.samples_seen == 3 and named.metrics["steps"] == 1
    with pytest.raises(DataError, match="shard 9"):
        trainer.train_round(zero, batch_size=1, work=np.array([[9, 0]]))
    with pytest.raises(ShapeMismatchError):
        trainer.train_round(zero[:-1], steps=1)
    bad = zero.copy()
    bad[0] = np.nan
    with pytest.raises(NonFiniteError, match="received parameters"):
        trainer.train_round(bad, steps=1)
    with pytest.raises(InvalidArgumentError, match="steps or epochs"):
        trainer.train_round(zero, steps=1, epochs=1)
    with pytest.raises(InvalidArgumentError, match="batch_size"):
        trainer.train_round(zero, steps=1, batch_size=0)
    empty = LocalTrainer(build_model(cfg.training, (1, 8, 8), 10), None, cfg.training, device="cpu")
    with pytest.raises(DataError, match="no shard"):
        empty.train_round(zero, steps=1)


def test_rolling_metrics():
    metrics = RollingMetrics(window=3)
    for v in (1.0, 2.0, 3.0, 4.0):
        metrics.record("loss", v)
    assert metrics.values("loss") == [2.0, 3.0, 4.0]
    assert metrics.mean("loss") == 3.0 and metrics.last("loss") == 4.0
    assert metrics.total("loss") == 10.0 and metrics.count("loss") == 4
    metrics.record_comm(0.5, retries=2)
    metrics.record_comm(0.25)
    snap = metrics.snapshot()
    assert snap["comm_s"] == 0.375 and snap["total_retries"] == 2.0
    assert metrics.mean("missing") is None
    with pytest.raises(ValueError):
        RollingMetrics(window=0)


def test_trainer_records_rolling_metrics(digits):
    train, _ = digits
    cfg = _mlp()
    trainer = LocalTrainer(build_model(cfg.training, (1, 8, 8), 10), partition(train, 4, seed=0)[2],
                           cfg.training, device="cpu", metrics_window=5)
    trainer.train_round(trainer.layout.flatten(trainer.model), steps=8)
    assert len(trainer.metrics.values("loss")) == 5 and trainer.metrics.count("loss") == 8
    assert trainer.metrics.count("accuracy") == 1
    assert trainer.metrics.mean("forward_s") > 0


def test_cnn_reaches_97_percent_on_digits(digits):
    """The CNN, trained well in one process, clears 97% test accuracy on digits."""
    train, test = digits
    torch.manual_seed(0)  # dropout draws from the global generator
    cfg = load_config(None, ["training.model=cnn", "training.lr=0.002", "training.batch_size=32"])
    shard = partition(train, 1, seed=0)[0]
    manager = ModelManager(build_model(cfg.training, (1, 8, 8), 10))
    trainer = LocalTrainer(lambda: build_model(cfg.training, (1, 8, 8), 10), shard, cfg.training, device="cpu")
    result = trainer.train_round(manager.flat_parameters(), epochs=4)
    manager.apply_update(result.update)
    accuracy = manager.evaluate(test).accuracy
    print(f"CNN digits test accuracy after 4 epochs: {accuracy:.4f}")
    assert accuracy >= 0.97


def test_the_inner_optimizer_state_carries_over_rounds(digits):
    train, _ = digits
    cfg = _mlp()
    shard = partition(train, 2, seed=0)[0]
    trainer = LocalTrainer(build_model(cfg.training, (1, 8, 8), 10), shard, cfg.training, device="cpu")
    zero = np.zeros(trainer.layout.total, np.float32)
    trainer.train_round(zero, steps=3)
    optimizer = trainer.optimizer
    assert optimizer is not None
    steps = [float(s["step"]) for s in optimizer.state.values()]
    trainer.train_round(zero, steps=2)  # new parameters, same optimizer and moments
    assert trainer.optimizer is optimizer
    assert [float(s["step"]) for s in optimizer.state.values()] == [n + 2 for n in steps] == [5.0] * len(steps)


def test_the_cpu_trainer_flushes_subnormal_floats_as_configured(digits):
    """``training.flush_denormal``: a float32 below the smallest normal one (~1.18e-38) counts as
    zero on the thread a CPU node trains on when set, and as itself when not."""
    if not torch.set_flush_denormal(False):
        pytest.skip("this CPU cannot flush subnormal floats (torch.set_flush_denormal needs SSE3 or an ARM FPU)")
    shard = partition(digits[0], 4, seed=0)[0]
    subnormal = torch.tensor([1e-39], dtype=torch.float32)
    assert subnormal.item() > 0
    for flush in (True, False):  # conftest restores torch's default after the test
        cfg = _mlp(f"training.flush_denormal={str(flush).lower()}")
        trainer = LocalTrainer(lambda: build_model(cfg.training, (1, 8, 8), 10), shard, cfg.training, device="cpu")
        trainer.train_round(trainer.layout.flatten(trainer.model), steps=1, batch_size=8)
        assert ((subnormal * 1.0).item() == 0.0) is flush


def test_the_warm_up_pays_for_what_the_first_optimizer_imports() -> None:
    # In a fresh process: once warmed up, building the run's optimizer (inside the first
    # round's clock) loads no module it had not loaded before joining.
    import subprocess
    import sys

    code = ("import sys, torch\n"
            "from hypergpu.config.schema import TrainingConfig\n"
            "from hypergpu.node.trainer import make_optimizer, warm_up_torch\n"
            "before = set(sys.modules)\n"
            "warm_up_torch()\n"
            "warmed = set(sys.modules)\n"
            "for name in ('adamw', 'adam', 'sgd'):\n"
            "    make_optimizer(TrainingConfig(optimizer=name), [torch.nn.Parameter(torch.zeros(2))])\n"
            "print(len(warmed - before), len(set(sys.modules) - warmed))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    loaded_by_warm_up, loaded_after = map(int, out.stdout.split())
    assert loaded_by_warm_up > 0 and loaded_after == 0, out.stdout


def test_bf16_precision_runs_the_forward_in_bf16_and_keeps_every_update_float32(digits):
    """``training.precision = "bf16"``: the layers compute in bfloat16 under autocast, while the
    parameters, the optimizer's moments and the update stay float32, and it learns as fp32 does."""
    train, _ = digits
    shard = partition(train, 4, seed=0)[0]
    losses = {}
    for precision in ("fp32", "bf16"):
        cfg = _mlp(f"training.precision={precision}")
        torch.manual_seed(0)
        trainer = LocalTrainer(build_model(cfg.training, (1, 8, 8), 10), shard, cfg.training, device="cpu", seed=0)
        seen: list[torch.dtype] = []
        first = next(m for m in trainer.model.modules() if isinstance(m, torch.nn.Linear))
        first.register_forward_hook(lambda _m, _i, out: seen.append(out.dtype))
        start = trainer.layout.flatten(trainer.model)
        update, _, _ = trainer.train_round(start, steps=40, batch_size=16)
        assert set(seen) == {torch.bfloat16 if precision == "bf16" else torch.float32}
        assert update.dtype == np.float32 and np.isfinite(update).all() and np.abs(update).max() > 0
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters())
        assert trainer.optimizer is not None
        moments = [t for s in trainer.optimizer.state.values() for t in s.values() if t.dim() > 0]
        assert moments and all(t.dtype == torch.float32 for t in moments)
        manager = ModelManager(build_model(cfg.training, (1, 8, 8), 10))
        losses[precision] = []
        for flat in (start, start + update):
            manager.set_flat(flat)
            losses[precision].append(manager.evaluate(shard.as_dataset()).loss)
    print("loss on the shard before and after 40 steps, fp32 and bf16:", losses)
    (before, fp32), (_, bf16) = losses["fp32"], losses["bf16"]
    assert bf16 < 0.5 * before and abs(bf16 - fp32) < 0.1 * fp32


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ConfigError, match="precision"):
        _mlp("training.precision=fp8")
