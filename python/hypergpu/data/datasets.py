"""Datasets as plain arrays: ``x`` float32 samples and ``y`` int64 labels.

Images are ``(N, C, H, W)`` scaled to [0, 1]; synthetic samples are
``(N, features)``. Every loader refuses a bad file with a
:class:`~hypergpu.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

import gzip
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hypergpu.config.schema import DataConfig
from hypergpu.errors import DataError
from hypergpu.extras import require


@dataclass(frozen=True)
class Dataset:
    """Samples and labels of one dataset (or one part of it)."""

    name: str
    x: np.ndarray  # float32, (N, *input_shape)
    y: np.ndarray  # int64, (N,)
    num_classes: int

    def __post_init__(self) -> None:
        if self.x.dtype != np.float32 or self.y.dtype != np.int64:
            raise DataError(f"{self.name}: expected float32 samples and int64 labels")
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} samples but {len(self.y)} labels")
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise DataError(f"{self.name}: labels outside 0..{self.num_classes - 1}")

    def __len__(self) -> int:
        return len(self.y)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    def subset(self, indices: np.ndarray) -> Dataset:
        return Dataset(self.name, self.x[indices], self.y[indices], self.num_classes)


def load_dataset(cfg: DataConfig, seed: int = 0) -> Dataset:
    """The whole dataset named by ``cfg`` (train and test not yet split)."""
    if cfg.dataset == "digits":
        return load_digits()
    if cfg.dataset == "synthetic":
        return make_synthetic(
            cfg.synthetic_samples, cfg.synthetic_features, cfg.synthetic_classes, seed
        )
    assert cfg.path is not None  # the config refuses file datasets without a path
    if cfg.dataset in ("mnist", "fashion-mnist"):
        return load_idx_dir(Path(cfg.path), cfg.dataset)
    if cfg.dataset == "cifar10":
        return load_cifar10(Path(cfg.path))
    raise DataError(f"unknown dataset {cfg.dataset!r}")


def split_train_test(data: Dataset, test_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """A stratified split that depends only on ``seed``: ceil(test_fraction × n)
    test samples, shared among the classes in proportion to their sizes (the
    largest remainders take the leftover places), drawn at random within each."""
    n = len(data)
    n_test = math.ceil(test_fraction * n)
    if n < 2 or not 0 < n_test < n:
        raise DataError(f"{data.name}: cannot split {n} samples with test_fraction={test_fraction}")
    rng = np.random.default_rng(seed)
    labels, counts = np.unique(data.y, return_counts=True)
    exact = counts * (n_test / n)
    share = np.floor(exact).astype(np.int64)
    leftover = n_test - int(share.sum())
    # Ties between equal remainders are broken by the seeded draw, not by label order.
    order = np.lexsort((rng.random(len(labels)), -(exact - share)))
    share[order[:leftover]] += 1
    test = np.concatenate([rng.permutation(np.flatnonzero(data.y == label))[:k] for label, k in zip(labels, share)])
    keep = np.ones(n, dtype=bool)
    keep[test] = False
    return data.subset(np.flatnonzero(keep)), data.subset(np.sort(test))


def load_digits() -> Dataset:
    """scikit-learn's bundled 8x8 handwritten digits (1797 samples, offline; the ``data`` extra)."""
    require("data")
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None, :, :]
    return Dataset("digits", np.ascontiguousarray(x), bunch.target.astype(np.int64), 10)


def make_synthetic(samples: int, features: int, classes: int, seed: int) -> Dataset:
    """Gaussian blobs: seeded, any size, and learnable by a small MLP. Class
    centres are drawn uniformly in [-10, 10]^features, each sample is its
    centre plus N(0, 2²) noise, the classes as even in size as ``samples`` allows."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10.0, 10.0, size=(classes, features))
    y = rng.permutation(np.arange(samples) % classes)
    x = centres[y] + rng.normal(0.0, 2.0, size=(samples, features))
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    return Dataset("synthetic", x.astype(np.float32), y.astype(np.int64), classes)


# --- IDX (MNIST, Fashion-MNIST) -----------------------------------------------

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (raw or gzip), checked against its own header."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: corrupt gzip data: {exc}") from None
    if len(blob) < 4 or blob[:2] != b"\x00\x00":
        raise DataError(f"{path}: not an IDX file (bad magic)")
    dtype = _IDX_DTYPES.get(blob[2])
    if dtype is None:
        raise DataError(f"{path}: unknown IDX element type 0x{blob[2]:02x}")
    ndim = blob[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(blob) < header:
        raise DataError(f"{path}: truncated IDX header")
    shape = tuple(int(d) for d in np.frombuffer(blob, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(blob) - header != expected:
        raise DataError(
            f"{path}: IDX header promises {shape} ({expected} bytes) "
            f"but the file holds {len(blob) - header} bytes of data"
        )
    return np.frombuffer(blob, dtype=dtype, offset=header).reshape(shape)


def load_idx_dir(path: Path, name: str = "mnist") -> Dataset:
    """``train-*`` and (if present) ``t10k-*`` image/label IDX files of ``path``."""
    if not path.is_dir():
        raise DataError(f"{name}: data.path {path} is not a directory")
    xs, ys = [], []
    for prefix in ("train", "t10k"):
        images = _find(path, f"{prefix}-images*idx3-ubyte*")
        labels = _find(path, f"{prefix}-labels*idx1-ubyte*")
        if images is None and labels is None and prefix == "t10k":
            continue
        if images is None or labels is None:
            missing = "images" if images is None else "labels"
            raise DataError(
                f"{name}: no {prefix} {missing} in {path} "
                f"(expected {prefix}-{missing}-idx{3 if missing == 'images' else 1}-ubyte[.gz])"
            )
        x, y = read_idx(images), read_idx(labels)
        if x.ndim != 3 or y.ndim != 1:
            raise DataError(f"{name}: {images.name} must be 3-d and {labels.name} 1-d")
        if len(x) != len(y):
            raise DataError(f"{name}: {images.name} has {len(x)} images but {labels.name} {len(y)} labels")
        xs.append(x)
        ys.append(y)
    x = np.concatenate(xs).astype(np.float32)[:, None] / 255.0
    y = np.concatenate(ys).astype(np.int64)
    classes = 10
    if len(y) and (y.min() < 0 or y.max() >= classes):
        raise DataError(f"{name}: labels outside 0..9 in {path}")
    return Dataset(name, np.ascontiguousarray(x, dtype=np.float32), y, classes)


def _find(path: Path, pattern: str) -> Path | None:
    hits = sorted(p for p in path.glob(pattern) if p.is_file())
    return hits[0] if hits else None


# --- CIFAR-10 python batches --------------------------------------------------


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the dicts of NumPy arrays CIFAR batches hold, and nothing else.

    A pickle can run arbitrary code; batch files come from outside, so only
    the globals NumPy needs to rebuild an array are allowed.
    """

    _ALLOWED = {
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 python batch: (N, 3, 32, 32) uint8 images and labels."""
    try:
        with path.open("rb") as fh:
            batch = _ArrayOnlyUnpickler(fh, encoding="bytes").load()
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    except Exception as exc:  # any unpickling failure means a bad file
        raise DataError(f"{path}: not a CIFAR-10 batch ({type(exc).__name__}: {exc})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR-10 batch (expected a dict)")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise DataError(f"{path}: CIFAR-10 batch lacks 'data' or 'labels'")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.dtype != np.uint8:
        raise DataError(f"{path}: 'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if labels.shape != (len(data),):
        raise DataError(f"{path}: {len(data)} images but {labels.size} labels")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def load_cifar10(path: Path) -> Dataset:
    """``data_batch_*`` and ``test_batch`` of ``path`` (or its cifar-10-batches-py)."""
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    if not path.is_dir():
        raise DataError(f"cifar10: data.path {path} is not a directory")
    files = sorted(path.glob("data_batch_*")) + sorted(path.glob("test_batch"))
    if not files:
        raise DataError(f"cifar10: no data_batch_* files in {path}")
    parts = [read_cifar_batch(f) for f in files]
    x = np.concatenate([p[0] for p in parts]).astype(np.float32) / 255.0
    y = np.concatenate([p[1] for p in parts])
    if y.min() < 0 or y.max() > 9:
        raise DataError(f"cifar10: labels outside 0..9 in {path}")
    return Dataset("cifar10", np.ascontiguousarray(x), y, 10)
