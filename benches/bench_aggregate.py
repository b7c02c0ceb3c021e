"""Aggregation speed against NumPy and PyTorch doing the same work in this process.

The fused Rust weighted mean (mean + per-update L2 norms + non-finite check)
is compared with the straightforward NumPy and torch code for the same
result; the coordinate-wise median with ``np.median(axis=0)`` on a
pre-stacked array; each update's cosine with the mean (the coordinator's
per-node agreement figure) with NumPy's dot products and norms. Ratios (baseline time / Rust time) and GB/s of update
data read go into ``benchmark.extra_info``. Under ``--benchmark-disable``
each bench runs once on small updates as a smoke test.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest
import torch

from hypergpu.update.aggregate import cosines, median, weighted_mean

N_UPDATES = 10
MEAN_ELEMENTS = 16 * 1024 * 1024  # 64 MiB per float32 update
MEDIAN_ELEMENTS = 4 * 1024 * 1024
SMOKE_ELEMENTS = 100_000

_cache: dict[int, list[np.ndarray]] = {}


def _updates(elements: int) -> list[np.ndarray]:
    if elements not in _cache:
        _cache.clear()
        rng = np.random.default_rng(0)
        _cache[elements] = [rng.standard_normal(elements, dtype=np.float32) for _ in range(N_UPDATES)]
    return _cache[elements]


def _size(benchmark, full: int) -> int:
    return SMOKE_ELEMENTS if benchmark.disabled else full


def _best_time(fn: Callable[[], object], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _numpy_weighted_mean(ups: list[np.ndarray], weights: np.ndarray):
    w = weights / weights.sum()
    acc = np.zeros_like(ups[0])
    tmp = np.empty_like(ups[0])
    norms = np.empty(len(ups))
    for i, (u, wi) in enumerate(zip(ups, w)):
        if not np.isfinite(u).all():
            raise ValueError(f"update {i} is not finite")
        norms[i] = np.linalg.norm(u)
        np.multiply(u, np.float32(wi), out=tmp)
        acc += tmp
    return acc, norms


def _torch_weighted_mean(ups: list[torch.Tensor], weights: np.ndarray):
    w = (weights / weights.sum()).tolist()
    acc = torch.zeros_like(ups[0])
    norms = torch.empty(len(ups), dtype=torch.float64)
    for i, (u, wi) in enumerate(zip(ups, w)):
        if not bool(torch.isfinite(u).all()):
            raise ValueError(f"update {i} is not finite")
        norms[i] = torch.linalg.vector_norm(u)
        acc.add_(u, alpha=wi)
    return acc, norms


def test_weighted_mean_fused(benchmark):
    ups = _updates(_size(benchmark, MEAN_ELEMENTS))
    weights = np.linspace(1.0, 2.0, N_UPDATES)
    tensors = [torch.from_numpy(u) for u in ups]
    rounds = 1 if benchmark.disabled else 5

    result = benchmark.pedantic(weighted_mean, args=(ups, weights), rounds=rounds, warmup_rounds=0 if benchmark.disabled else 1)

    # Same answer as the baselines, then time them on the same data.
    np_mean, np_norms = _numpy_weighted_mean(ups, weights)
    np.testing.assert_allclose(result.mean, np_mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(result.norms, np_norms, rtol=1e-4)
    rust_s = _best_time(lambda: weighted_mean(ups, weights), rounds)
    numpy_s = _best_time(lambda: _numpy_weighted_mean(ups, weights), rounds)
    torch_s = _best_time(lambda: _torch_weighted_mean(tensors, weights), rounds)
    nbytes = sum(u.nbytes for u in ups)
    benchmark.extra_info.update(
        elements_per_update=ups[0].size,
        updates=len(ups),
        rust_s=rust_s,
        numpy_s=numpy_s,
        torch_s=torch_s,
        speedup_vs_numpy=numpy_s / rust_s,
        speedup_vs_torch=torch_s / rust_s,
        rust_gb_per_s=nbytes / rust_s / 1e9,
        numpy_gb_per_s=nbytes / numpy_s / 1e9,
        torch_gb_per_s=nbytes / torch_s / 1e9,
        torch_threads=torch.get_num_threads(),
    )


def test_weighted_mean_numpy_baseline(benchmark):
    ups = _updates(_size(benchmark, MEAN_ELEMENTS))
    weights = np.linspace(1.0, 2.0, N_UPDATES)
    benchmark.pedantic(_numpy_weighted_mean, args=(ups, weights), rounds=1 if benchmark.disabled else 3)


def test_weighted_mean_torch_baseline(benchmark):
    ups = [torch.from_numpy(u) for u in _updates(_size(benchmark, MEAN_ELEMENTS))]
    weights = np.linspace(1.0, 2.0, N_UPDATES)
    benchmark.pedantic(_torch_weighted_mean, args=(ups, weights), rounds=1 if benchmark.disabled else 3)


def test_median_vs_numpy(benchmark):
    ups = _updates(_size(benchmark, MEDIAN_ELEMENTS))
    stacked = np.stack(ups)  # NumPy needs one 2-D array; stacking is left out of its time
    rounds = 1 if benchmark.disabled else 3

    result = benchmark.pedantic(median, args=(ups,), rounds=rounds)

    np.testing.assert_array_equal(result.value, np.median(stacked, axis=0))
    _record_vs_numpy(benchmark, ups, lambda: median(ups), lambda: np.median(stacked, axis=0), rounds)


def _record_vs_numpy(
    benchmark, ups: list[np.ndarray], rust: Callable[[], object], numpy: Callable[[], object], rounds: int
) -> None:
    """Time both on the same data; put the ratio and the Rust read rate into extra_info."""
    rust_s = _best_time(rust, rounds)
    numpy_s = _best_time(numpy, rounds)
    benchmark.extra_info.update(
        elements_per_update=ups[0].size,
        updates=len(ups),
        rust_s=rust_s,
        numpy_s=numpy_s,
        speedup_vs_numpy=numpy_s / rust_s,
        rust_gb_per_s=sum(u.nbytes for u in ups) / rust_s / 1e9,
    )


def _numpy_cosines(ups: list[np.ndarray], ref: np.ndarray) -> np.ndarray:
    ref_norm = np.linalg.norm(ref)
    return np.array([float(np.dot(u, ref)) / (np.linalg.norm(u) * ref_norm) for u in ups])


def test_cosines_vs_numpy(benchmark):
    ups = _updates(_size(benchmark, MEAN_ELEMENTS))
    ref = weighted_mean(ups).mean
    rounds = 1 if benchmark.disabled else 5

    result = benchmark.pedantic(cosines, args=(ups, ref), rounds=rounds)

    np.testing.assert_allclose(result, _numpy_cosines(ups, ref), rtol=1e-4)
    _record_vs_numpy(benchmark, ups, lambda: cosines(ups, ref), lambda: _numpy_cosines(ups, ref), rounds)


@pytest.fixture(autouse=True, scope="module")
def _release_updates():
    yield
    _cache.clear()
