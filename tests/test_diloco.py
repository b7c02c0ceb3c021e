"""DiLoCo's two optimizers: the coordinator's outer step (Nesterov by default
when nodes take local steps) and each node's inner optimizer, both carried
over rounds and through checkpoints bit-exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hypergpu.config import load_config
from hypergpu.errors import NonFiniteError, UpdateError
from hypergpu.data import load_digits, partition, split_train_test
from hypergpu.model import ModelManager, build_model
from hypergpu.model.checkpoint import CheckpointManager
from hypergpu.model.outer import NesterovOuter, SGDOuter, outer_kind, outer_optimizer_for
from hypergpu.node.state import NodeState
from hypergpu.node.trainer import LocalTrainer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def shard():
    train, _ = split_train_test(load_digits(), 0.2, seed=0)
    return partition(train, 2, seed=0)[0]


def test_nesterov_is_the_default_whenever_nodes_take_local_steps() -> None:
    assert outer_kind(load_config(None, ["training.local_steps=20"]).training) == "nesterov"
    assert outer_kind(load_config(None, ["training.local_steps=0"]).training) == "nesterov"  # epochs
    assert outer_kind(load_config(None, ["training.local_steps=1"]).training) == "sgd"
    outer = outer_optimizer_for(load_config(None, ["training.local_steps=20"]))
    assert isinstance(outer, NesterovOuter) and (outer.lr, outer.momentum, outer.warmup) == (0.7, 0.9, False)
    assert outer.current_momentum == 0.9  # DiLoCo's published recipe: the full momentum from the first step
    warmed = outer_optimizer_for(load_config(None, ["training.outer_momentum_warmup=true"]))
    assert isinstance(warmed, NesterovOuter) and warmed.warmup and warmed.current_momentum == 0.0
    plain = outer_optimizer_for(load_config(None, ["training.outer_optimizer='sgd'"]))
    assert isinstance(plain, SGDOuter) and plain.lr == 1.0


def test_plain_sgd_at_lr_1_reproduces_averaging() -> None:
    model = ModelManager(nn.Linear(4, 2))
    start = model.flat_parameters()
    mean = np.linspace(-1, 1, start.size, dtype=np.float32)
    SGDOuter(1.0).step(model, mean)
    np.testing.assert_array_equal(model.flat_parameters(), start + mean)


def test_the_outer_momentum_warms_up_from_zero_to_its_configured_value() -> None:
    # The k-th step uses min(0.9, 1 - 1/k): plain averaging at lr 0.7 first, the full momentum from the tenth.
    model = ModelManager(nn.Linear(4, 2))
    outer = NesterovOuter(0.7, 0.9, warmup=True)
    rng = np.random.default_rng(0)
    expected, velocity = model.flat_parameters().astype(np.float64), np.zeros(model.layout.total)
    used = []
    for k in range(1, 13):
        used.append(outer.current_momentum)
        u = rng.standard_normal(model.layout.total).astype(np.float32)
        mu = min(0.9, 1 - 1 / k)
        velocity = mu * velocity + u
        expected += 0.7 * (u + mu * velocity)
        outer.step(model, u)
        np.testing.assert_allclose(model.flat_parameters(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(used, [0, 1 / 2, 2 / 3, 3 / 4, 4 / 5, 5 / 6, 6 / 7, 7 / 8, 8 / 9, 0.9, 0.9, 0.9])
    assert outer.steps == 12
    # A checkpoint written before the step count was kept resumes past the warm-up.
    older = NesterovOuter(0.7, 0.9, warmup=True)
    older.load_state_dict({"velocity": np.zeros(model.layout.total, np.float32)})
    assert older.current_momentum == 0.9


def test_outer_momentum_never_touches_batch_norm_statistics() -> None:
    # Extrapolating a running variance with momentum drove it below zero and a
    # CNN to chance accuracy; buffers take the plain average instead.
    model = ModelManager(nn.Sequential(nn.Linear(3, 3), nn.BatchNorm1d(3)))
    (running,) = [s for s in model.layout.specs if s.name.endswith("running_var")]
    outer = NesterovOuter(0.7, 0.9)
    start = model.flat_parameters()
    u = np.full_like(start, -0.3)  # three plain steps leave a running variance of 0.1
    for _ in range(3):
        before = model.flat_parameters()
        outer.step(model, u)
        after = model.flat_parameters()
        where = slice(running.offset, running.offset + running.numel)
        np.testing.assert_allclose(after[where], before[where] + u[where])  # averaged, no momentum
    weight = model.layout.specs[0]
    assert not weight.buffer and after[weight.offset] < start[weight.offset] + 3 * u[0]  # momentum on parameters
    assert (after[where] > 0).all()


def test_a_step_the_model_refuses_leaves_the_outer_momentum_as_it_was() -> None:
    # The velocity used to move before the model validated the step: a refused aggregate stayed
    # in the momentum and was pushed again, decayed, in every later round (issue 12).
    torch.manual_seed(0)
    model = ModelManager(nn.Linear(4, 2), max_abs_param=10.0)
    torch.manual_seed(0)
    twin_model = ModelManager(nn.Linear(4, 2), max_abs_param=10.0)  # never shown the refused steps
    outer, twin = NesterovOuter(0.7, 0.9), NesterovOuter(0.7, 0.9)
    u = np.full(model.layout.total, 0.1, np.float32)
    outer.step(model, u)
    twin.step(twin_model, u)
    assert outer.velocity is not None
    velocity, params, version = outer.velocity.copy(), model.flat_parameters(), model.version
    with pytest.raises(UpdateError, match="exceeds the bound"):
        outer.step(model, np.full_like(u, 1e3))  # parameters out of bounds: refused
    with pytest.raises(NonFiniteError):
        outer.step(model, np.full_like(u, np.nan))
    assert outer.velocity.tobytes() == velocity.tobytes()
    assert model.flat_parameters().tobytes() == params.tobytes() and model.version == version
    # The next step is the one an optimizer that never saw the refused steps takes.
    outer.step(model, u)
    twin.step(twin_model, u)
    assert model.flat_parameters().tobytes() == twin_model.flat_parameters().tobytes()


@pytest.mark.parametrize("warmup", [True, False])
def test_outer_state_survives_a_checkpoint_bit_exactly(tmp_path: Path, warmup: bool) -> None:
    model = ModelManager(nn.Linear(16, 8))
    outer = NesterovOuter(0.7, 0.9, warmup=warmup)
    rng = np.random.default_rng(0)
    for _ in range(3):
        outer.step(model, rng.standard_normal(model.layout.total).astype(np.float32))
    ckpts = CheckpointManager(tmp_path, keep=2)
    ckpts.save(model, 3, arrays={f"outer.{k}": v for k, v in outer.state_dict().items()})

    restored_model = ModelManager(nn.Linear(16, 8))
    found = ckpts.resume(restored_model)
    assert found is not None
    restored = NesterovOuter(0.7, 0.9, warmup=warmup)
    restored.load_state_dict({k[6:]: v for k, v in found.arrays.items() if k.startswith("outer.")})
    assert restored.velocity is not None and outer.velocity is not None
    assert restored.velocity.tobytes() == outer.velocity.tobytes()
    assert restored.steps == 3 and restored.current_momentum == outer.current_momentum  # mid warm-up: 0.75
    # ... and the next outer step is the same to the bit.
    nxt = rng.standard_normal(model.layout.total).astype(np.float32)
    outer.step(model, nxt)
    restored.step(restored_model, nxt)
    assert model.flat_parameters().tobytes() == restored_model.flat_parameters().tobytes()


def test_a_node_restarted_from_its_state_trains_exactly_as_one_that_never_stopped(shard, tmp_path: Path) -> None:
    cfg = load_config(None, ["training.model=mlp", "training.hidden_sizes=[32]", "training.lr=0.01"])

    def trainer() -> LocalTrainer:
        torch.manual_seed(0)
        return LocalTrainer(build_model(cfg.training, (1, 8, 8), 10), shard, cfg.training, device="cpu", seed=1)

    work = np.stack([np.zeros(64, np.int64), np.arange(64)], axis=1)
    start = ModelManager(build_model(cfg.training, (1, 8, 8), 10)).flat_parameters()
    going = trainer()
    first = going.train_round(start, work=work[:32], batch_size=16)
    state = NodeState(tmp_path, "node/0 (gpu)")
    path = state.save(going, 1)
    assert path.parent.name == "node_0__gpu_"

    restarted = trainer()
    assert NodeState(tmp_path, "node/0 (gpu)").restore(restarted) == 1
    saved, loaded = going.inner_optimizer().state_dict(), restarted.inner_optimizer().state_dict()
    for pid, entry in saved["state"].items():
        for key, value in entry.items():
            other = loaded["state"][pid][key]
            assert torch.equal(value, other) if isinstance(value, torch.Tensor) else value == other
    params = start + first.update
    a = going.train_round(params, work=work[32:], batch_size=16).update
    b = restarted.train_round(params, work=work[32:], batch_size=16).update
    assert a.tobytes() == b.tobytes()
    assert NodeState(tmp_path, "never-ran").restore(trainer()) is None
