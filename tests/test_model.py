"""Models, the flat layout, packages, validation and checkpoints."""

from __future__ import annotations

import os
import random
import sys
import types

import numpy as np
import pytest
import torch
from torch import nn

from hypergpu.config import load_config
from hypergpu.data import load_digits, split_train_test
from hypergpu.errors import (
    CheckpointError,
    ConfigError,
    DtypeMismatchError,
    NonFiniteError,
    ShapeMismatchError,
    UpdateError,
)
from hypergpu.model import CNN, MLP, CheckpointManager, ModelManager, ParamLayout, build_model
from hypergpu.model import checkpoint as checkpoint_module

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _mlp_manager(**kw) -> ModelManager:
    cfg = load_config(None, ["training.model=mlp", "training.hidden_sizes=[16]"])
    return ModelManager(build_model(cfg.training, (1, 8, 8), 10), **kw)


def _rng_update(manager: ModelManager, scale: float = 1e-2, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).normal(size=manager.layout.total) * scale).astype(np.float32)


def test_build_model_kinds_and_seeding():
    cfg = load_config(None)
    cnn_a = build_model(cfg.training, (1, 8, 8), 10)
    cnn_b = build_model(cfg.training, (1, 8, 8), 10)
    assert isinstance(cnn_a, CNN)
    torch.testing.assert_close(cnn_a.state_dict(), cnn_b.state_dict())  # same seed, same init
    assert cnn_a(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    assert build_model(cfg.training, (3, 32, 32), 10)(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    mlp = build_model(load_config(None, ["training.model=mlp"]).training, (32,), 4)
    assert isinstance(mlp, MLP) and mlp(torch.zeros(5, 32)).shape == (5, 4)
    with pytest.raises(ConfigError, match="'cnn' needs image samples"):
        build_model(cfg.training, (32,), 4)


def test_custom_model_factory(monkeypatch):
    mod = types.ModuleType("user_models")
    mod.tiny = lambda shape, classes: nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(shape)), classes))
    mod.not_a_model = lambda shape, classes: "nope"
    monkeypatch.setitem(sys.modules, "user_models", mod)
    cfg = load_config(None, ["training.model=custom", "training.custom_model='user_models:tiny'"])
    model = build_model(cfg.training, (1, 8, 8), 10)
    assert ModelManager(model).layout.total == 64 * 10 + 10
    bad = load_config(None, ["training.model=custom", "training.custom_model='user_models:not_a_model'"])
    with pytest.raises(ConfigError, match="not a torch.nn.Module"):
        build_model(bad.training, (1, 8, 8), 10)
    missing = load_config(None, ["training.model=custom", "training.custom_model='no_such_mod:x'"])
    with pytest.raises(ConfigError, match="cannot import"):
        build_model(missing.training, (1, 8, 8), 10)


def test_flat_layout_round_trip():
    model = build_model(load_config(None).training, (1, 8, 8), 10)
    layout = ParamLayout.from_model(model)
    flat = layout.flatten(model)
    assert flat.dtype == np.float32 and flat.flags.c_contiguous and flat.shape == (layout.total,)
    names = [s.name for s in layout.specs]
    assert "features.1.running_mean" in names  # float buffers travel too
    assert not any(n.endswith("num_batches_tracked") for n in names)
    offsets = [s.offset for s in layout.specs]
    assert offsets == sorted(offsets) and offsets[0] == 0
    # Derived again from a fresh model (as a node does) the layout is identical.
    other = build_model(load_config(None, ["training.seed=5"]).training, (1, 8, 8), 10)
    assert ParamLayout.from_model(other).digest == layout.digest
    assert ParamLayout.from_json(layout.to_json()) == layout
    layout.load_into(other, flat)
    np.testing.assert_array_equal(layout.flatten(other), flat)
    views = layout.split(flat)
    np.testing.assert_array_equal(views["head.1.weight"], model.state_dict()["head.1.weight"].numpy())
    with pytest.raises(ShapeMismatchError, match=f"\\({layout.total},\\)"):
        layout.load_into(other, flat[:-1])
    with pytest.raises(DtypeMismatchError, match="float64"):
        layout.load_into(other, flat.astype(np.float64))


def test_layout_keeps_tied_weights_once():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 3)
            self.b.weight = self.a.weight
            # empty tensors all have a null data pointer without being tied
            self.e1, self.e2 = nn.Parameter(torch.zeros(0)), nn.Parameter(torch.zeros(0))

    model = Tied()
    layout = ParamLayout.from_model(model)
    assert [s.name for s in layout.specs] == ["e1", "e2", "a.weight", "a.bias", "b.bias"]
    assert layout.total == 9 + 3 + 3
    flat = np.arange(layout.total, dtype=np.float32)
    layout.load_into(model, flat)
    np.testing.assert_array_equal(model.b.weight.detach().numpy().reshape(-1), flat[:9])
    np.testing.assert_array_equal(layout.flatten(model), flat)


def test_versions_hashes_and_updates():
    manager = _mlp_manager()
    v0, h0 = manager.version, manager.hash
    start = manager.flat_parameters()
    update = _rng_update(manager)
    assert manager.apply_update(update, lr_scale=0.5) == v0 + 1
    np.testing.assert_allclose(manager.flat_parameters(), start + 0.5 * update, rtol=1e-6)
    np.testing.assert_allclose(manager.layout.flatten(manager.model), manager.flat_parameters())
    assert manager.hash != h0
    manager.set_flat(start, version=10)
    assert manager.version == 10 and manager.hash == h0
    flat = manager.flat_parameters()
    flat[0] += 1  # a copy: editing it does not touch the model
    assert manager.hash == h0


def test_validation_errors():
    manager = _mlp_manager(max_update_norm=1.0)
    good = _rng_update(manager, scale=1e-4)
    with pytest.raises(ShapeMismatchError, match="update"):
        manager.apply_update(good[:-3])
    with pytest.raises(DtypeMismatchError):
        manager.apply_update(good.astype(np.float16))
    with pytest.raises(DtypeMismatchError, match="list"):
        manager.apply_update(list(good))  # type: ignore[arg-type]
    nan = good.copy()
    nan[7] = np.nan
    with pytest.raises(NonFiniteError, match="first at index 7"):
        manager.apply_update(nan)
    inf = manager.flat_parameters()
    inf[3] = np.inf
    with pytest.raises(NonFiniteError, match="parameters"):
        manager.set_flat(inf)
    with pytest.raises(UpdateError, match="L2 norm .* exceeds the bound 1"):
        manager.apply_update(good * 1e6)
    huge = manager.flat_parameters()
    huge[0] = 1e9
    with pytest.raises(UpdateError, match="largest magnitude"):
        manager.set_flat(huge)
    assert manager.version == 0  # nothing refused was applied
    manager.apply_update(good)
    assert manager.version == 1


def test_full_and_delta_packages():
    coordinator = _mlp_manager(history=3)
    node = _mlp_manager()
    node.set_flat(np.zeros(node.layout.total, np.float32), version=0)
    assert node.load_package(coordinator.package()) == 0
    assert node.hash == coordinator.hash
    for step in range(3):
        base = coordinator.version
        coordinator.apply_update(_rng_update(coordinator, seed=step))
        delta = coordinator.delta_package(base)
        assert node.load_package(delta) == coordinator.version
        assert node.hash == coordinator.hash  # bit-exact, not merely close
    np.testing.assert_array_equal(node.flat_parameters(), coordinator.flat_parameters())
    # A delta against a version the node does not hold is refused, not misapplied.
    stale = coordinator.delta_package(coordinator.version - 2)
    with pytest.raises(UpdateError, match="relative to version"):
        node.load_package(stale)
    with pytest.raises(UpdateError, match="full package instead"):
        coordinator.delta_package(0)  # fell out of the 3-version history
    pkg = coordinator.read_package(coordinator.package())
    assert pkg.kind == "full" and pkg.version == coordinator.version


def test_packages_refuse_damage_and_other_models():
    manager = _mlp_manager()
    blob = bytearray(manager.package())
    blob[-4] ^= 0x10
    with pytest.raises(UpdateError, match="does not hash"):
        _mlp_manager().load_package(bytes(blob))
    with pytest.raises(UpdateError, match="malformed"):
        manager.load_package(b"\x00" * 5)
    cnn = ModelManager(build_model(load_config(None).training, (1, 8, 8), 10))
    with pytest.raises(ShapeMismatchError, match="different model layout"):
        cnn.load_package(manager.package())


def test_evaluate_on_digits():
    _, test = split_train_test(load_digits(), 0.2, seed=0)
    result = _mlp_manager().evaluate(test)
    assert result.samples == 360
    assert 0.0 <= result.accuracy <= 1.0 and result.loss > 0


# --- checkpoints -----------------------------------------------------------------


def _trained(manager: ModelManager) -> torch.optim.Optimizer:
    opt = torch.optim.Adam(manager.model.parameters(), lr=1e-2)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(manager.model(x), y).backward()
        opt.step()
    manager.set_flat(manager.layout.flatten(manager.model))
    return opt


def test_checkpoint_resume_restores_model_optimizer_and_rng(tmp_path):
    manager = _mlp_manager()
    opt = _trained(manager)
    ckpts = CheckpointManager(tmp_path, keep=2, every=2, config_hash="cfg-a")
    assert ckpts.maybe_save(manager, 1, optimizer=opt) is None
    path = ckpts.maybe_save(manager, 2, optimizer=opt, extra={"note": "x"})
    assert path is not None and path.name == "ckpt-00000002.safetensors"
    saved_hash, saved_version = manager.hash, manager.version
    saved_opt = opt.state_dict()
    draws = (random.random(), np.random.rand(), torch.rand(3))  # after the save

    fresh = _mlp_manager()
    fresh_opt = torch.optim.Adam(fresh.model.parameters(), lr=1e-2)
    ckpt = CheckpointManager(tmp_path, config_hash="cfg-a").resume(fresh, fresh_opt)
    assert ckpt is not None and ckpt.round == 2 and ckpt.extra == {"note": "x"}
    assert fresh.hash == saved_hash and fresh.version == saved_version
    restored = fresh_opt.state_dict()
    for pid, entry in saved_opt["state"].items():
        for key, value in entry.items():
            torch.testing.assert_close(restored["state"][pid][key], value)
    assert restored["param_groups"][0]["lr"] == saved_opt["param_groups"][0]["lr"]
    # The RNGs continue exactly where they were when the checkpoint was taken.
    assert random.random() == draws[0]
    assert np.random.rand() == draws[1]
    torch.testing.assert_close(torch.rand(3), draws[2])


def test_keep_last_k(tmp_path):
    manager = _mlp_manager()
    ckpts = CheckpointManager(tmp_path, keep=2)
    for r in range(1, 6):
        manager.apply_update(_rng_update(manager, scale=1e-3, seed=r))
        ckpts.save(manager, r)
    assert [p.name for p in ckpts.checkpoints()] == ["ckpt-00000005.safetensors", "ckpt-00000004.safetensors"]


def test_crash_mid_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    manager = _mlp_manager()
    ckpts = CheckpointManager(tmp_path, keep=3)
    ckpts.save(manager, 1)
    good_hash = manager.hash
    manager.apply_update(_rng_update(manager))

    real_open = open

    class Torn:
        """A file whose write dies half-way, as a killed process would."""

        def __init__(self, fh):
            self.fh = fh

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            self.fh.flush()
            raise OSError(28, "No space left on device")

    def torn_open(path, mode="r", *a, **kw):
        fh = real_open(path, mode, *a, **kw)
        return Torn(fh) if "w" in mode and ".tmp" in str(path) else fh

    monkeypatch.setattr(checkpoint_module, "open", torn_open, raising=False)
    with pytest.raises(OSError, match="No space"):
        ckpts.save(manager, 2)
    monkeypatch.undo()
    assert [p.name for p in ckpts.checkpoints()] == ["ckpt-00000001.safetensors"]
    assert not list(tmp_path.glob(".*tmp*"))  # the torn temp file was removed
    fresh = _mlp_manager()
    fresh.apply_update(_rng_update(fresh, seed=9))
    assert ckpts.resume(fresh).round == 1
    assert fresh.hash == good_hash


def test_corrupted_checkpoint_refused_with_fallback(tmp_path):
    manager = _mlp_manager()
    ckpts = CheckpointManager(tmp_path, keep=5)
    ckpts.save(manager, 1)
    first_hash = manager.hash
    manager.apply_update(_rng_update(manager))
    newest = ckpts.save(manager, 2)
    raw = bytearray(newest.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit inside the tensors
    newest.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="digest"):
        ckpts.load(newest)
    fresh = _mlp_manager()
    ckpt = ckpts.resume(fresh)
    assert ckpt is not None and ckpt.round == 1 and fresh.hash == first_hash
    assert [p.name for p, _ in ckpts.skipped] == ["ckpt-00000002.safetensors"]
    # Truncated files (a non-atomic writer's torn output) are refused too.
    (tmp_path / "ckpt-00000003.safetensors").write_bytes(raw[:100])
    assert ckpts.resume(_mlp_manager()).round == 1
    # When nothing valid is left, resuming is an error, not a silent fresh start.
    (tmp_path / "ckpt-00000001.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no valid checkpoint"):
        ckpts.resume(_mlp_manager())


def test_checkpoint_config_mismatch_and_empty_dir(tmp_path):
    assert CheckpointManager(tmp_path / "none").resume(_mlp_manager()) is None
    manager = _mlp_manager()
    CheckpointManager(tmp_path, config_hash="a").save(manager, 1)
    with pytest.raises(CheckpointError, match="different configuration"):
        CheckpointManager(tmp_path, config_hash="b").resume(_mlp_manager())
    assert CheckpointManager(tmp_path, config_hash="b").resume(_mlp_manager(), check_config=False).round == 1
    cnn = ModelManager(build_model(load_config(None).training, (1, 8, 8), 10))
    with pytest.raises(CheckpointError, match="does not fit this model"):
        CheckpointManager(tmp_path, config_hash="a").resume(cnn)
    assert os.listdir(tmp_path) == ["ckpt-00000001.safetensors"]


def test_checkpoint_manager_from_config(tmp_path):
    cfg = load_config(None, [f"coordinator.checkpoint_dir='{tmp_path}'", "coordinator.checkpoint_every=3",
                             "coordinator.keep_checkpoints=4"])
    ckpts = CheckpointManager.from_config(cfg)
    assert (ckpts.directory, ckpts.every, ckpts.keep) == (tmp_path, 3, 4)
    assert [r for r in range(1, 10) if ckpts.due(r)] == [3, 6, 9]
    ckpts.save(_mlp_manager(), 3)
    # Changing a port does not block resuming; changing the learning rate does.
    moved = load_config(None, [f"coordinator.checkpoint_dir='{tmp_path}'", "api.port=9999"])
    assert CheckpointManager.from_config(moved).resume(_mlp_manager()).round == 3
    retuned = load_config(None, [f"coordinator.checkpoint_dir='{tmp_path}'", "training.lr=0.5"])
    with pytest.raises(CheckpointError, match="different configuration"):
        CheckpointManager.from_config(retuned).resume(_mlp_manager())
