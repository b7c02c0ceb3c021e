"""Datasets, the split, stratified shards, reassignment, checksums, the cache, file loaders."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest

from hypergpu.config import DataConfig, load_config
from hypergpu.data import (
    Shard,
    ShardCache,
    ShardManager,
    load_cifar10,
    load_dataset,
    load_digits,
    load_idx_dir,
    make_synthetic,
    partition,
    prepare_data,
    read_idx,
    split_train_test,
)
from hypergpu.errors import DataError, UnknownNodeError


@pytest.fixture(scope="module")
def digits_train():
    train, _ = split_train_test(load_digits(), 0.2, seed=0)
    return train


def test_digits_are_real_images_in_unit_range():
    d = load_digits()
    assert d.x.shape == (1797, 1, 8, 8) and d.x.dtype == np.float32
    assert d.x.min() == 0.0 and d.x.max() == 1.0
    assert set(np.unique(d.y)) == set(range(10))


def test_split_is_seeded_stratified_and_disjoint():
    d = load_digits()
    train_a, test_a = split_train_test(d, 0.2, seed=3)
    train_b, test_b = split_train_test(d, 0.2, seed=3)
    np.testing.assert_array_equal(test_a.x, test_b.x)
    assert len(train_a) + len(test_a) == len(d)
    assert len(test_a) == 360
    share = np.bincount(test_a.y, minlength=10) / np.bincount(d.y, minlength=10)
    assert np.all(np.abs(share - 0.2) < 0.02)
    _, test_c = split_train_test(d, 0.2, seed=4)
    assert not np.array_equal(test_a.y, test_c.y) or not np.array_equal(test_a.x, test_c.x)


def test_synthetic_is_seeded_and_sized():
    a = make_synthetic(500, 12, 4, seed=1)
    b = make_synthetic(500, 12, 4, seed=1)
    assert a.x.shape == (500, 12) and a.num_classes == 4
    np.testing.assert_array_equal(a.x, b.x)
    assert not np.array_equal(a.x, make_synthetic(500, 12, 4, seed=2).x)


@pytest.mark.parametrize("nodes", [2, 5, 10, 20])
def test_shards_equal_stratified_and_exhaustive(digits_train, nodes):
    shards = partition(digits_train, nodes, seed=0)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    every = np.concatenate([s.indices for s in shards])
    assert len(every) == len(digits_train)
    np.testing.assert_array_equal(np.sort(every), np.arange(len(digits_train)))  # each exactly once
    total = np.bincount(digits_train.y, minlength=10)
    for s in shards:
        np.testing.assert_array_equal(s.x, digits_train.x[s.indices])
        expected = total / nodes
        assert np.all(np.abs(s.class_counts() - expected) <= 1.0 + 1e-9), s.class_counts()
    again = partition(digits_train, nodes, seed=0)
    assert [s.checksum for s in again] == [s.checksum for s in shards]


def test_too_many_shards_refused(digits_train):
    with pytest.raises(DataError, match="non-empty shards"):
        partition(digits_train.subset(np.arange(3)), 5, seed=0)


def test_reassignment_touches_only_orphans(digits_train):
    manager = ShardManager.from_dataset(digits_train, 5, seed=0)
    before = manager.assign(range(5))
    assert before == {n: [n] for n in range(5)}
    moved = manager.leave(2)
    after = manager.assignment()
    assert sum(len(v) for v in moved.values()) == 1 and moved[next(iter(moved))] == [2]
    for node in (0, 1, 3, 4):
        assert after[node][0] == before[node][0]  # everyone keeps their own shard
    manager.leave(4)
    after = manager.assignment()
    held = sorted(i for ids in after.values() for i in ids)
    assert held == [0, 1, 2, 3, 4]  # orphans are lent, nothing lost
    assert max(len(v) for v in after.values()) - min(len(v) for v in after.values()) <= 1
    own = {n: ids[0] for n, ids in after.items()}
    got = manager.join(7)
    assert len(got) == 1 and got[0] in (2, 4)  # the newcomer takes back an orphan
    for node, shard in own.items():
        assert manager.assignment()[node][0] == shard
    assert manager.join(8)[0] in (2, 4)
    assert manager.join(9) == []  # every shard owned: nothing to give
    final = manager.assignment()
    assert sorted(i for ids in final.values() for i in ids) == [0, 1, 2, 3, 4]
    assert [len(s) for s in manager.shards_of(0)] == [len(manager.shards[final[0][0]])]
    with pytest.raises(UnknownNodeError, match="node 42"):
        manager.leave(42)


def test_node_with_lent_shards_trains_on_all(digits_train):
    manager = ShardManager.from_dataset(digits_train, 3, seed=0)
    manager.assign([10, 11, 12])
    manager.leave(12)
    lent_to = [n for n, ids in manager.assignment().items() if len(ids) == 2][0]
    data = Shard.concat(manager.shards_of(lent_to))
    assert len(data) == sum(len(s) for s in manager.shards_of(lent_to))
    data.verify()


def test_shard_bytes_round_trip_and_tampering(digits_train):
    shard = partition(digits_train, 4, seed=0)[1]
    blob = shard.to_bytes()
    back = Shard.from_bytes(blob)
    assert back.checksum == shard.checksum and back.index == 1
    np.testing.assert_array_equal(back.x, shard.x)
    np.testing.assert_array_equal(back.indices, shard.indices)
    # Flip one byte in the sample data (the tail of the blob): the checksum catches it.
    tampered = bytearray(blob)
    tampered[-5] ^= 0xFF
    with pytest.raises(DataError, match="fails its checksum"):
        Shard.from_bytes(bytes(tampered))
    relabelled = Shard(shard.index, shard.indices, shard.x, (shard.y + 1) % 10, 10, "digits", shard.checksum)
    with pytest.raises(DataError, match="tampered"):
        relabelled.verify()
    for junk in (b"", b"12345678", blob[:40]):
        with pytest.raises(DataError):
            Shard.from_bytes(junk)


def test_cache_hit_miss_and_invalidation(tmp_path):
    cache = ShardCache(tmp_path / "cache")
    cfg = DataConfig(dataset="synthetic", synthetic_samples=300, synthetic_features=6, synthetic_classes=3)
    first = prepare_data(cfg, seed=0, num_shards=3, cache=cache)
    assert first.cache == "miss" and cache.stats.misses == 1
    second = prepare_data(cfg, seed=0, num_shards=3, cache=cache)
    assert second.cache == "hit" and cache.stats.hits == 1
    assert [s.checksum for s in second.shards] == [s.checksum for s in first.shards]
    np.testing.assert_array_equal(second.test.x, first.test.x)
    # A different data config or seed is a different key: a miss, not a stale hit.
    assert prepare_data(cfg, seed=1, num_shards=3, cache=cache).cache == "miss"
    assert prepare_data(cfg.model_copy(update={"test_fraction": 0.3}), 0, 3, cache=cache).cache == "miss"
    # A corrupted cached shard is detected, dropped and rebuilt.
    shard_file = cache.entry(first.key) / "shard-1.safetensors"
    raw = bytearray(shard_file.read_bytes())
    raw[-3] ^= 0x55
    shard_file.write_bytes(bytes(raw))
    third = prepare_data(cfg, seed=0, num_shards=3, cache=cache)
    assert third.cache == "invalidated" and cache.stats.invalidations == 1
    assert [s.checksum for s in third.shards] == [s.checksum for s in first.shards]
    assert prepare_data(cfg, seed=0, num_shards=3, cache=cache).cache == "hit"


def test_cache_dir_from_config_and_disabled(tmp_path):
    cfg = load_config(None, [f"data.cache_dir='{tmp_path / 'c'}'", "data.dataset=synthetic",
                             "data.synthetic_samples=100"])
    assert prepare_data(cfg.data, 0, 2).cache == "miss"
    assert prepare_data(cfg.data, 0, 2).cache == "hit"
    assert prepare_data(cfg.data, 0, 2, cache=None).cache == "disabled"


# --- IDX and CIFAR files written by the test ---------------------------------


def _idx(array: np.ndarray, code: int = 0x08) -> bytes:
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def _write_mnist(root, n_train=30, n_test=10, gz=True):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = np.arange(n, dtype=np.uint8) % 10
        for kind, arr, dim in (("images", images, 3), ("labels", labels, 1)):
            blob = _idx(arr)
            name = f"{prefix}-{kind}-idx{dim}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (root / name).write_bytes(blob)
    return root


@pytest.mark.parametrize("gz", [True, False])
def test_idx_loader(tmp_path, gz):
    root = _write_mnist(tmp_path / "mnist", gz=gz)
    data = load_idx_dir(root, "mnist")
    assert data.x.shape == (40, 1, 28, 28) and data.x.dtype == np.float32
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert data.y.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    cfg = DataConfig(dataset="fashion-mnist", path=root, test_fraction=0.25)
    assert load_dataset(cfg).name == "fashion-mnist"
    prepared = prepare_data(cfg, seed=0, num_shards=2, cache=None)
    assert len(prepared.test) == 10 and sum(len(s) for s in prepared.shards) == 30


def test_idx_bad_files(tmp_path):
    root = _write_mnist(tmp_path / "m", gz=False)
    labels = root / "train-labels-idx1-ubyte"
    images = root / "train-images-idx3-ubyte"
    good_images = images.read_bytes()
    images.write_bytes(good_images[:-7])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: IDX header promises"):
        load_idx_dir(root)
    images.write_bytes(b"\x12\x34" + good_images[2:])
    with pytest.raises(DataError, match="bad magic"):
        read_idx(images)
    images.write_bytes(good_images[:2] + b"\x42" + good_images[3:])
    with pytest.raises(DataError, match="unknown IDX element type 0x42"):
        read_idx(images)
    images.write_bytes(good_images)
    labels.write_bytes(_idx(np.zeros(29, dtype=np.uint8)))
    with pytest.raises(DataError, match="30 images but train-labels-idx1-ubyte 29 labels"):
        load_idx_dir(root)
    labels.unlink()
    with pytest.raises(DataError, match="no train labels"):
        load_idx_dir(root)
    gzipped = tmp_path / "broken.gz"
    gzipped.write_bytes(b"\x1f\x8b" + b"garbage" * 3)
    with pytest.raises(DataError, match="corrupt gzip"):
        read_idx(gzipped)
    with pytest.raises(DataError, match="not a directory"):
        load_idx_dir(tmp_path / "nowhere")


def _write_cifar(root, batches=2, n=8):
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i + 1}" for i in range(batches)] + ["test_batch"]
    for name in names:
        batch = {
            b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=n)],
            b"batch_label": name.encode(),
        }
        with open(root / name, "wb") as fh:
            pickle.dump(batch, fh)
    return root


def test_cifar_loader(tmp_path):
    root = _write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_cifar10(tmp_path)  # finds the standard sub-directory
    assert data.x.shape == (24, 3, 32, 32) and data.num_classes == 10
    assert data.x.max() <= 1.0
    first = pickle.loads((root / "data_batch_1").read_bytes())
    np.testing.assert_allclose(data.x[0].reshape(-1), first[b"data"][0] / 255.0, rtol=1e-6)


def test_cifar_bad_files(tmp_path):
    root = _write_cifar(tmp_path / "c", batches=1)
    (root / "data_batch_1").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_1: not a CIFAR-10 batch"):
        load_cifar10(root)
    with open(root / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, fh)
    with pytest.raises(DataError, match=r"shape \(N, 3072\)"):
        load_cifar10(root)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(root / "data_batch_1", "wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar10(root)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no data_batch"):
        load_cifar10(empty)


def test_fashion_mnist_loads_by_name_from_debians_package() -> None:
    from hypergpu.config.schema import DEBIAN_FASHION_MNIST, DataConfig
    from hypergpu.data.datasets import load_dataset

    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST}); `make system-deps` installs it")
    cfg = DataConfig(dataset="fashion-mnist")
    assert cfg.path == DEBIAN_FASHION_MNIST
    data = load_dataset(cfg)
    assert data.name == "fashion-mnist" and len(data) == 70_000 and data.input_shape == (1, 28, 28)
    assert np.bincount(data.y).tolist() == [7000] * 10
    assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 1.0
