"""Encode/decode throughput of hypergpu's codecs against the equivalent
NumPy code, measured in the same run.

Each group benchmarks NumPy first and hypergpu second; the hypergpu entry
records ``speedup_vs_numpy`` (NumPy mean time / hypergpu mean time), both
record ``gbps`` (float32 input bytes per second) and ``compression_ratio``.
With ``--benchmark-disable`` every body runs once on a small input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from hypergpu.update.codec import decode, encode

FULL_N = 1 << 24  # ~16M float32 = 64 MiB
SMOKE_N = 1 << 16
BLOCK = 256
TOPK_RATIO = 0.01

_means: dict[str, float] = {}


@pytest.fixture(scope="module")
def x(request: pytest.FixtureRequest) -> np.ndarray:
    n = SMOKE_N if request.config.getoption("benchmark_disable") else FULL_N
    return np.random.default_rng(0).standard_normal(n).astype(np.float32)


# ---- NumPy baselines -----------------------------------------------------------


def np_int8_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blocks = x.reshape(-1, BLOCK)
    scale = np.abs(blocks).max(axis=1) / np.float32(127)
    inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.rint(blocks * inv[:, None]).clip(-127, 127).astype(np.int8)
    return scale, q


def np_int8_decode(scale: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) * scale[:, None]).reshape(-1)


def np_int4_encode(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    blocks = x.reshape(-1, BLOCK)
    scale = np.abs(blocks).max(axis=1) / np.float32(7)
    inv = np.divide(1, scale, out=np.zeros_like(scale), where=scale > 0)
    q = np.rint(blocks * inv[:, None]).clip(-7, 7).astype(np.int8).reshape(-1)
    # Two levels a byte, the even element in the low nibble (int8 shifts wrap).
    packed = (q[0::2] & np.int8(0x0F)) | (q[1::2] << np.int8(4))
    return scale, packed.view(np.uint8)


def np_int4_decode(scale: np.ndarray, packed: np.ndarray) -> np.ndarray:
    p = packed.view(np.int8)
    q = np.empty(2 * p.size, np.int8)
    q[0::2] = (p << np.int8(4)) >> np.int8(4)
    q[1::2] = p >> np.int8(4)
    return (q.astype(np.float32).reshape(-1, BLOCK) * scale[:, None]).reshape(-1)


def np_int4_ef_encode(x: np.ndarray, residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    residual += x
    scale, packed = np_int4_encode(residual)
    residual -= np_int4_decode(scale, packed)
    return scale, packed


def np_topk_encode(acc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    idx = np.sort(np.argpartition(np.abs(acc), -k)[-k:]).astype(np.uint32)
    return idx, acc[idx]


def np_topk_ef_encode(x: np.ndarray, residual: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    residual += x
    idx, vals = np_topk_encode(residual, k)
    residual[idx] = 0
    return idx, vals


def np_topk_decode(idx: np.ndarray, vals: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, np.float32)
    out[idx] = vals
    return out


# ---- harness ---------------------------------------------------------------------


def run(benchmark: Any, group: str, impl: str, fn: Callable[[], Any], x: np.ndarray, ratio: float) -> None:
    benchmark.group = group
    benchmark(fn)
    benchmark.extra_info["compression_ratio"] = round(ratio, 3)
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: the body ran once, nothing timed
        return
    mean = stats.stats.mean
    _means[f"{group}/{impl}"] = mean
    benchmark.extra_info["gbps"] = round(x.nbytes / mean / 1e9, 3)
    baseline = _means.get(f"{group}/numpy")
    if impl == "hypergpu" and baseline is not None:
        benchmark.extra_info["speedup_vs_numpy"] = round(baseline / mean, 2)


IMPLS = ["numpy", "hypergpu"]


@pytest.mark.parametrize("impl", IMPLS)
def test_fp16_encode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    fn = (lambda: x.astype(np.float16)) if impl == "numpy" else (lambda: encode(x, "fp16"))
    run(benchmark, "fp16-encode", impl, fn, x, 2.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_fp16_decode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    payload = encode(x, "fp16").payload
    if impl == "numpy":
        fn = lambda: np.frombuffer(payload, np.float16).astype(np.float32)  # noqa: E731
    else:
        fn = lambda: decode(payload, "fp16", numel=x.size)  # noqa: E731
    run(benchmark, "fp16-decode", impl, fn, x, 2.0)


@pytest.mark.parametrize("impl", IMPLS)
def test_int8_encode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    if impl == "numpy":
        fn = lambda: np_int8_encode(x)  # noqa: E731
    else:
        fn = lambda: encode(x, "int8", block_size=BLOCK)  # noqa: E731
    ratio = encode(x, "int8", block_size=BLOCK).compression_ratio
    run(benchmark, "int8-encode", impl, fn, x, ratio)


@pytest.mark.parametrize("impl", IMPLS)
def test_int8_decode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    enc = encode(x, "int8", block_size=BLOCK)
    if impl == "numpy":
        scale, q = np_int8_encode(x)
        fn = lambda: np_int8_decode(scale, q)  # noqa: E731
    else:
        fn = lambda: enc.decode()  # noqa: E731
    run(benchmark, "int8-decode", impl, fn, x, enc.compression_ratio)


@pytest.mark.parametrize("impl", IMPLS)
def test_int4_encode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    if impl == "numpy":
        fn = lambda: np_int4_encode(x)  # noqa: E731
    else:
        fn = lambda: encode(x, "int4", block_size=BLOCK)  # noqa: E731
    ratio = encode(x, "int4", block_size=BLOCK).compression_ratio
    run(benchmark, "int4-encode", impl, fn, x, ratio)


@pytest.mark.parametrize("impl", IMPLS)
def test_int4_error_feedback_encode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    # The residual stays within half a step of each block, so repeated
    # rounds measure the steady state.
    residual = np.zeros_like(x)
    if impl == "numpy":
        fn = lambda: np_int4_ef_encode(x, residual)  # noqa: E731
    else:
        fn = lambda: encode(x, "int4", block_size=BLOCK, residual=residual)  # noqa: E731
    run(benchmark, "int4-ef-encode", impl, fn, x, encode(x, "int4", block_size=BLOCK).compression_ratio)


@pytest.mark.parametrize("impl", IMPLS)
def test_int4_decode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    enc = encode(x, "int4", block_size=BLOCK)
    if impl == "numpy":
        scale, packed = np_int4_encode(x)
        fn = lambda: np_int4_decode(scale, packed)  # noqa: E731
    else:
        fn = lambda: enc.decode()  # noqa: E731
    run(benchmark, "int4-decode", impl, fn, x, enc.compression_ratio)


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_encode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    k = int(x.size * TOPK_RATIO)
    if impl == "numpy":
        fn = lambda: np_topk_encode(x, k)  # noqa: E731
    else:
        fn = lambda: encode(x, "topk", k=k)  # noqa: E731
    run(benchmark, "topk-encode", impl, fn, x, encode(x, "topk", k=k).compression_ratio)


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_error_feedback_encode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    k = int(x.size * TOPK_RATIO)
    residual = np.zeros_like(x)
    if impl == "numpy":
        fn = lambda: np_topk_ef_encode(x, residual, k)  # noqa: E731
    else:
        fn = lambda: encode(x, "topk", k=k, residual=residual)  # noqa: E731
    run(benchmark, "topk-ef-encode", impl, fn, x, x.nbytes / (12 + 8 * k))


@pytest.mark.parametrize("impl", IMPLS)
def test_topk_decode(benchmark: Any, x: np.ndarray, impl: str) -> None:
    k = int(x.size * TOPK_RATIO)
    enc = encode(x, "topk", k=k)
    if impl == "numpy":
        idx, vals = np_topk_encode(x, k)
        fn = lambda: np_topk_decode(idx, vals, x.size)  # noqa: E731
    else:
        fn = lambda: enc.decode()  # noqa: E731
    run(benchmark, "topk-decode", impl, fn, x, enc.compression_ratio)
