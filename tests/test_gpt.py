"""The GPT language model, tied weights in the flat layout, and the ResNet."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from hypergpu.config import load_config
from hypergpu.config.schema import GPTConfig, TrainingConfig
from hypergpu.errors import ConfigError, InvalidArgumentError
from hypergpu.model import GPT, ParamLayout, ResNet, build_model, gpt_param_count

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=16)


def _gpt_training(seed: int = 0) -> TrainingConfig:
    # the section alone: a whole config would also ask for a corpus dataset
    gpt = GPTConfig(n_layer=1, n_head=2, n_embd=16, block_size=8)
    return TrainingConfig(model="gpt", gpt=gpt, seed=seed)


def _tiny_gpt(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(TINY, vocab_size=256)


def test_output_shape():
    model = _tiny_gpt()
    assert model(torch.randint(0, 256, (3, 16))).shape == (3, 16, 256)
    assert model(torch.randint(0, 256, (1, 5))).shape == (1, 5, 256)  # shorter than block_size


def test_causal():
    model = _tiny_gpt().eval()
    idx = torch.randint(0, 256, (1, 12))
    changed = idx.clone()
    changed[0, 7] = (idx[0, 7] + 1) % 256
    with torch.no_grad():
        before, after = model(idx), model(changed)
    torch.testing.assert_close(before[:, :7], after[:, :7], rtol=0, atol=0)
    assert not torch.allclose(before[:, 7:], after[:, 7:])


def test_too_long_and_wrong_rank_refused():
    model = _tiny_gpt()
    with pytest.raises(InvalidArgumentError, match="sequence length 17 exceeds block_size 16"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(InvalidArgumentError, match=r"\(B, T\)"):
        model(torch.zeros(16, dtype=torch.long))


def test_tied_weight_counted_once():
    model = _tiny_gpt()
    state = model.state_dict()
    assert state["wte.weight"].data_ptr() == state["lm_head.weight"].data_ptr()
    assert all(t.is_floating_point() for t in state.values())  # no mask buffer
    layout = ParamLayout.from_model(model)
    names = [s.name for s in layout.specs]
    assert "wte.weight" in names and "lm_head.weight" not in names
    assert layout.total == model.num_params() == gpt_param_count(TINY, 256)
    assert model.num_params() < sum(t.numel() for t in state.values())


def test_param_count_matches_model_for_other_shapes():
    cfg = GPTConfig(n_layer=3, n_head=4, n_embd=24, block_size=9)
    assert GPT(cfg, vocab_size=50).num_params() == gpt_param_count(cfg, 50)


def test_flat_round_trip_updates_both_tied_names():
    model, other = _tiny_gpt(0), _tiny_gpt(1)
    layout = ParamLayout.from_model(model)
    flat = layout.flatten(model)
    assert flat.shape == (layout.total,)
    layout.load_into(other, flat)
    np.testing.assert_array_equal(layout.flatten(other), flat)
    for name, t in model.state_dict().items():
        torch.testing.assert_close(other.state_dict()[name], t, rtol=0, atol=0)

    spec = next(s for s in layout.specs if s.name == "wte.weight")
    changed = flat.copy()
    changed[spec.offset : spec.offset + spec.numel] = 0.5
    layout.load_into(other, changed)
    state = other.state_dict()
    assert torch.all(state["wte.weight"] == 0.5) and torch.all(state["lm_head.weight"] == 0.5)


def test_learns_a_repeating_string():
    torch.manual_seed(0)
    model = GPT(TINY, vocab_size=256)
    data = torch.tensor(list(b"hello hypergpu! " * 8), dtype=torch.long)
    starts = torch.arange(0, len(data) - TINY.block_size - 1)
    x = torch.stack([data[i : i + TINY.block_size] for i in starts])
    y = torch.stack([data[i + 1 : i + 1 + TINY.block_size] for i in starts])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)

    def loss() -> torch.Tensor:
        return F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))

    first = loss().item()
    assert abs(first - math.log(256)) < 0.5  # small init: near-uniform predictions
    for _ in range(60):
        opt.zero_grad()
        step = loss()
        step.backward()
        opt.step()
    assert loss().item() < 2.5


def test_build_gpt_and_its_config_errors():
    training = _gpt_training()
    model = build_model(training, (8,), 64)
    assert isinstance(model, GPT) and model(torch.zeros(2, 8, dtype=torch.long)).shape == (2, 8, 64)
    torch.testing.assert_close(build_model(training, (8,), 64).state_dict(), model.state_dict())
    with pytest.raises(ConfigError, match="block_size = 8"):
        build_model(training, (16,), 64)
    training.gpt.vocab_size = 100
    with pytest.raises(ConfigError, match="vocab_size is 100 but the tokens need 64"):
        build_model(training, (8,), 64)
    training.gpt.vocab_size = 64
    assert isinstance(build_model(training, (8,), 64), GPT)


def test_resnet_shapes_size_and_build():
    for shape in ((3, 32, 32), (1, 28, 28)):
        model = ResNet(shape, 10)
        assert model(torch.zeros(2, *shape)).shape == (2, 10)
        assert sum(p.numel() for p in model.parameters()) < 1_000_000
    training = load_config(None, ["training.model=resnet"]).training
    built = build_model(training, (3, 32, 32), 10)
    assert isinstance(built, ResNet)
    torch.testing.assert_close(build_model(training, (3, 32, 32), 10).state_dict(), built.state_dict())
    assert build_model(training, (1, 8, 8), 10)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ConfigError, match="'resnet' needs image samples"):
        build_model(training, (32,), 10)
    with pytest.raises(ConfigError, match="at least 8x8"):
        build_model(training, (1, 7, 8), 10)


def test_seeded_init_is_deterministic():
    def gpt(seed: int) -> torch.nn.Module:
        return build_model(_gpt_training(seed), (8,), 32)

    torch.testing.assert_close(gpt(3).state_dict(), gpt(3).state_dict(), rtol=0, atol=0)
    assert not torch.equal(gpt(3).state_dict()["wte.weight"], gpt(4).state_dict()["wte.weight"])
    rng_before = torch.random.get_rng_state()
    gpt(3)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # fork_rng leaves the caller's RNG alone
