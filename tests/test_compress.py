"""hypergpu.update.codec: round trips within each codec's stated bound,
error feedback for every lossy codec, zstd, payload sizes, and every kind
of bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hypergpu.errors import (
    CodecError,
    DtypeMismatchError,
    EmptyInputError,
    InvalidArgumentError,
    NonContiguousError,
    NonFiniteError,
    ShapeMismatchError,
    UnknownCodecError,
)
from hypergpu.node.update_encoder import UpdateEncoder
from hypergpu.protocol import Assignment, UpdateMeta
from hypergpu.protocol import decode as decode_message
from hypergpu.protocol import encode as encode_message
from hypergpu.update.codec import Codec, Encoded, decode, encode

SIZES = [1, 255, 257, 10_000, 100_003]


def sample(kind: str, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "normal":
        return rng.standard_normal(n).astype(np.float32)
    if kind == "heavy":  # gradients: mostly tiny, a few large
        return (rng.standard_t(2, n) * 1e-3).astype(np.float32)
    if kind == "spread":  # many binades, fp16's normal range
        mag = 2.0 ** rng.uniform(-14, 15, n)
        return (mag * rng.choice([-1, 1], n)).astype(np.float32)
    if kind == "blocky":  # blocks of very different scale, some all-zero
        x = rng.standard_normal(n).astype(np.float32)
        x[(np.arange(n) // 300) % 3 == 1] *= 1e4
        x[(np.arange(n) // 300) % 7 == 2] = 0
        return x
    raise AssertionError(kind)


KINDS = ["normal", "heavy", "spread", "blocky"]


def int8_bound(x: np.ndarray, block_size: int) -> np.ndarray:
    pad = -len(x) % block_size
    blocks = np.abs(np.pad(x, (0, pad))).reshape(-1, block_size)
    scale = blocks.max(axis=1) / np.float32(127)
    return np.repeat(scale, block_size)[: len(x)] * (0.5 + 2.0**-15)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
def test_casts_round_trip_within_their_bounds(kind: str, n: int) -> None:
    x = sample(kind, n)
    assert np.array_equal(encode(x, "raw").decode(), x)
    ax = np.abs(x)
    normal = ax >= 2.0**-14
    y16 = encode(x, "fp16").decode()
    err = np.abs(y16 - x)
    assert np.all(err[normal] <= ax[normal] * 2.0**-11)
    assert np.all(err[~normal] <= 2.0**-25)
    ybf = encode(x, "bf16").decode()
    assert np.all(np.abs(ybf - x) <= ax * 2.0**-8)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [1, 64, 256, 4096])
def test_int8_round_trips_within_half_a_scale(kind: str, n: int, block_size: int) -> None:
    x = sample(kind, n, seed=block_size)
    y = encode(x, "int8", block_size=block_size).decode()
    assert np.all(np.abs(y - x) <= int8_bound(x, block_size))


def int4_bound(x: np.ndarray, block_size: int) -> np.ndarray:
    """The documented int4 bound, scale·(1/2 + 2⁻¹⁹), with scale = max|block|/7
    rounded up to a float32 (so at most one ulp, or 2⁻¹⁴⁹, above it)."""
    pad = -len(x) % block_size
    blocks = np.abs(np.pad(x.astype(np.float64), (0, pad))).reshape(-1, block_size)
    scale = blocks.max(axis=1) / 7 * (1 + 2.0**-22) + 2.0**-149
    return np.repeat(scale, block_size)[: len(x)] * (0.5 + 2.0**-19)


def int4_scales(enc: Encoded, block_size: int) -> np.ndarray:
    """The per-element scale read from the payload (after the 12-byte header)."""
    blocks = math.ceil(enc.numel / block_size)
    scales = np.frombuffer(enc.payload, np.float32, count=blocks, offset=12).astype(np.float64)
    return np.repeat(scales, block_size)[: enc.numel]


def check_int4(x: np.ndarray, block_size: int) -> np.ndarray:
    """Round trip ``x`` through int4 and hold it to the bound, both against
    max|block|/7 and against the scales the payload carries."""
    enc = encode(x, "int4", block_size=block_size)
    y = enc.decode()
    err = np.abs(y.astype(np.float64) - x.astype(np.float64))
    assert np.all(err <= int4_bound(x, block_size))
    scales = int4_scales(enc, block_size)
    assert np.all(err <= scales * (0.5 + 2.0**-19))
    return y


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("block_size", [1, 7, 64, 256, 4096])
def test_int4_round_trips_within_half_a_scale(kind: str, n: int, block_size: int) -> None:
    check_int4(sample(kind, n, seed=block_size), block_size)


TINY = np.float32(2.0**-149)  # the smallest subnormal


@pytest.mark.parametrize(
    ("case", "x"),
    [
        ("all equal", np.full(1001, -0.3, np.float32)),
        ("outlier per block", np.where(np.arange(1024) % 64 == 17, 1e30, 1e-3).astype(np.float32)),
        ("zeros", np.zeros(77, np.float32)),
        ("n = 1", np.float32([2.5])),
        ("n = 2", np.float32([-1.0, 3.0])),
        ("n = 3", np.float32([0.1, -7.0, 1e-30])),
        ("subnormals", np.float32([1, -2, 3, 6, 7, 8, 60, 0]) * TINY),
        ("f32 extremes", np.float32([3.4028235e38, -3.4028235e38, 1.0, 0.0])),
        ("exact half steps", np.arange(-14, 15, dtype=np.float32) * np.float32(0.5)),
    ],
)
@pytest.mark.parametrize("block_size", [1, 3, 64])
def test_int4_holds_its_bound_on_adversarial_inputs(case: str, x: np.ndarray, block_size: int) -> None:
    y = check_int4(x, block_size)
    assert np.all(np.isfinite(y)), case
    if case == "zeros":
        assert not y.any()
    if case == "all equal":
        assert np.all(y == y[0]) and abs(y[0] + 0.3) < 1e-7
    if case == "outlier per block" and block_size == 64:
        # The outlier takes the block's scale; the rest round to zero.
        assert np.array_equal(y != 0, x > 1)
    if case == "subnormals":
        # The scale is rounded up, never to zero: a tiny block still arrives.
        assert y[np.argmax(np.abs(x))] != 0


def test_int4_packs_two_levels_a_byte() -> None:
    enc = encode(np.float32([7, -7, 1, 0, 3]), "int4", block_size=8)
    header = (8).to_bytes(4, "little") + (5).to_bytes(8, "little")
    assert enc.payload == header + np.float32(1.0).tobytes() + bytes([0x97, 0x01, 0x03])


@pytest.mark.parametrize("n", SIZES)
def test_topk_sends_the_k_largest_exactly(n: int) -> None:
    x = sample("heavy", n)
    k = max(1, n // 100)
    y = encode(x, "topk", k=k).decode()
    sent = np.flatnonzero(y)
    assert len(sent) == k
    assert np.array_equal(y[sent], x[sent])
    kth = np.sort(np.abs(x))[::-1][k - 1]
    assert np.abs(x[sent]).min() == kth


def test_topk_ratio_picks_k_by_ceiling() -> None:
    x = sample("normal", 1000)
    enc = encode(x, "topk", ratio=0.0105)
    assert np.count_nonzero(enc.decode()) == 11
    assert Codec("topk", ratio=1.0).k_for(1000) == 1000


@pytest.mark.parametrize("codec", ["raw", "fp16", "bf16", "int8", "int4", "topk"])
def test_shape_is_kept_and_output_is_float32(codec: str) -> None:
    x = sample("normal", 6 * 7 * 8).reshape(6, 7, 8)
    enc = encode(x, codec, k=30 if codec == "topk" else None)
    assert enc.shape == (6, 7, 8) and enc.numel == 336
    y = enc.decode()
    assert y.shape == (6, 7, 8) and y.dtype == np.float32


@pytest.mark.parametrize("codec", ["raw", "fp16", "bf16", "int8"])
def test_half_precision_and_torch_inputs(codec: str) -> None:
    x32 = sample("normal", 5000)
    inputs = {
        "numpy f16": x32.astype(np.float16),
        "torch f32": torch.from_numpy(x32.copy()),
        "torch f16": torch.from_numpy(x32).to(torch.float16),
        "torch bf16": torch.from_numpy(x32).to(torch.bfloat16),
    }
    for name, update in inputs.items():
        if isinstance(update, torch.Tensor):
            exact = update.float().numpy()
        else:
            exact = update.astype(np.float32)
        y = encode(update, codec).decode()
        err, ax = np.abs(y - exact), np.abs(exact)
        if codec == "raw" or codec == name[-4:]:  # lossless: raw, fp16 of f16, bf16 of bf16
            assert np.array_equal(y, exact), name
        elif codec == "fp16":
            assert np.all(err <= np.maximum(ax * 2.0**-11, 2.0**-25)), name
        elif codec == "bf16":
            assert np.all(err <= ax * 2.0**-8), name
        else:
            assert np.all(err <= int8_bound(exact, 256)), name


@pytest.mark.parametrize("residual_kind", ["numpy", "torch"])
def test_topk_error_feedback_loses_nothing_over_50_rounds(residual_kind: str) -> None:
    n, k = 4096, 40
    rng = np.random.default_rng(7)
    residual: np.ndarray | torch.Tensor = (
        np.zeros(n, np.float32) if residual_kind == "numpy" else torch.zeros(n)
    )
    total_in = np.zeros(n)
    total_sent = np.zeros(n)
    for _ in range(50):
        x = rng.standard_normal(n).astype(np.float32)
        total_in += x
        sent = encode(x, "topk", k=k, residual=residual).decode()
        assert np.count_nonzero(sent) == k
        r = residual if isinstance(residual, np.ndarray) else residual.numpy()
        assert np.all(r[sent != 0] == 0)
        total_sent += sent
    r = residual if isinstance(residual, np.ndarray) else residual.numpy()
    np.testing.assert_allclose(total_sent + r, total_in, rtol=1e-5, atol=1e-4)
    assert np.abs(r).sum() > 0  # something is still waiting to be sent


LOSSY = [
    Codec("fp16"),
    Codec("bf16"),
    Codec("int8", block_size=64),
    Codec("int4", block_size=64),
    Codec("int4", block_size=33),
    Codec("topk", k=40),
]


@pytest.mark.parametrize("codec", LOSSY, ids=lambda c: f"{c.name}-{c.block_size}")
def test_error_feedback_loses_nothing_over_200_rounds(codec: Codec) -> None:
    n = 4096
    rng = np.random.default_rng(11)
    residual = np.zeros(n, np.float32)
    total_in, total_sent, slack = np.zeros(n), np.zeros(n), np.zeros(n)
    for r in range(200):
        # Small updates on a drifting scale: fp16 flushes many below its
        # range, int4 rounds most of each block away.
        x = (rng.standard_normal(n) * 1e-6 * (1 + r % 10)).astype(np.float32)
        before = residual.copy()
        sent = codec.encode(x, residual).decode()
        # Each round, what is sent plus what is kept is update + residual, exactly.
        assert np.array_equal(sent + residual, x + before)
        total_in += x
        total_sent += sent
        # ... up to rounding update + residual to float32 once a round.
        slack += (np.abs(x) + np.abs(before)) * 2.0**-23
    assert np.all(np.abs(total_sent + residual - total_in) <= slack)
    assert np.abs(residual).sum() > 0  # something is still waiting to be sent


def test_without_feedback_what_is_below_the_step_never_arrives() -> None:
    x = np.full(64, 1e-3, np.float32)
    x[0] = 1.0  # int4's step in this block is 1/7: 1e-3 always rounds to 0
    plain = sum(encode(x, "int4").decode()[1] for _ in range(100))
    residual = np.zeros(64, np.float32)
    fed = sum(encode(x, "int4", residual=residual).decode()[1] for _ in range(100))
    assert plain == 0
    assert fed > 0  # once 1/14 had gathered it went out
    assert fed + residual[1] == pytest.approx(100 * 1e-3, rel=1e-4)


@pytest.mark.parametrize("codec", LOSSY, ids=lambda c: f"{c.name}-{c.block_size}")
def test_refused_error_feedback_leaves_the_residual_untouched(codec: Codec) -> None:
    x = np.float32([1.0, 2.0, 3.0, 4.0] * 20)
    codec = Codec("topk", k=2) if codec.name == "topk" else codec
    residual = np.full(80, 0.5, np.float32)
    residual[7] = np.nan
    before = residual.copy()
    with pytest.raises(NonFiniteError, match="position 7"):
        codec.encode(x, residual)
    np.testing.assert_array_equal(residual, before)
    bad = x.copy()
    bad[9] = np.nan
    residual = np.full(80, 0.5, np.float32)
    with pytest.raises(NonFiniteError, match="position 9"):
        codec.encode(bad, residual)
    assert np.all(residual == 0.5)
    with pytest.raises(ShapeMismatchError):
        codec.encode(x, np.zeros(79, np.float32))


def test_fp16_feedback_refuses_a_sum_beyond_its_range() -> None:
    residual = np.float32([0.0, 60000.0, 0.0])
    with pytest.raises(CodecError, match="position 1"):
        encode(np.float32([0.0, 6000.0, 0.0]), "fp16", residual=residual)
    assert residual.tolist() == [0.0, 60000.0, 0.0]


def test_error_feedback_is_on_by_default_for_lossy_codecs() -> None:
    assert not Codec("raw").error_feedback
    assert all(Codec(name, k=1 if name == "topk" else None).error_feedback
               for name in ["fp16", "bf16", "int8", "int4", "topk"])
    assert not Codec("int4", error_feedback=False).error_feedback
    assert Codec("int8") == Codec("int8", error_feedback=True)
    with pytest.raises(InvalidArgumentError, match="raw is exact"):
        Codec("raw", error_feedback=True)
    with pytest.raises(InvalidArgumentError, match="bool"):
        Codec("int8", error_feedback=1)  # type: ignore[arg-type]


META = UpdateMeta(samples=8, loss=0.5, steps=1)


def node_sends(encoder: UpdateEncoder, update: np.ndarray, codec: str, round_id: int) -> np.ndarray:
    """What the coordinator decodes from the node's ``update`` message."""
    assignment = Assignment(batch_size=8, local_steps=1, codec=codec)
    msg = decode_message(encode_message(encoder.message(update, assignment, META, round_id)))
    assert msg.codec == codec
    payload = msg.sections["update"]
    return payload if codec == "raw" else decode(payload, codec, zstd=msg.zstd, numel=update.size)


def test_the_node_keeps_the_int4_residual_across_rounds_and_a_raw_round_flushes_it() -> None:
    rng = np.random.default_rng(5)
    encoder = UpdateEncoder()
    n = 3000
    total_in, total_sent = np.zeros(n), np.zeros(n)
    residual = None
    for round_id in range(1, 101):
        update = (rng.standard_normal(n) * 1e-3).astype(np.float32)
        total_in += update
        total_sent += node_sends(encoder, update, "int4", round_id)
        # One buffer, kept and updated in place from round to round.
        assert encoder.residual is not None and (residual is None or encoder.residual is residual)
        residual = encoder.residual
    assert np.count_nonzero(residual) > n // 2
    np.testing.assert_allclose(total_sent + residual, total_in, rtol=0, atol=1e-8)
    # A change of lossy codec carries the residual over; a raw round sends it.
    update = np.zeros(n, np.float32)
    total_sent += node_sends(encoder, update, "int8", 101)
    total_sent += node_sends(encoder, update, "raw", 102)
    assert encoder.residual is None
    np.testing.assert_allclose(total_sent, total_in, rtol=0, atol=1e-8)


def test_topk_residual_can_be_shaped_like_the_update() -> None:
    x = sample("normal", 120).reshape(10, 12)
    residual = np.zeros((10, 12), np.float32)
    sent = encode(x, "topk", k=5, residual=residual).decode()
    assert np.array_equal(sent + residual, x)


@pytest.mark.parametrize("codec", ["raw", "fp16", "bf16", "int8", "int4", "topk"])
def test_zstd_round_trips_and_shrinks_a_compressible_payload(codec: str) -> None:
    x = np.tile(np.float32([0.0, 0.5, -0.25, 1.0]), 25_000)
    k = 5000 if codec == "topk" else None
    plain = encode(x, codec, k=k)
    packed = encode(x, codec, k=k, zstd=True)
    assert packed.zstd and not plain.zstd
    assert np.array_equal(packed.decode(), plain.decode())
    assert packed.nbytes * 3 < plain.nbytes
    assert packed.compression_ratio > plain.compression_ratio


def test_zstd_level_is_validated() -> None:
    x = sample("normal", 100)
    assert encode(x, "raw", zstd=True, zstd_level=19).decode().tobytes() == x.tobytes()
    with pytest.raises(InvalidArgumentError, match="zstd level"):
        encode(x, "raw", zstd=True, zstd_level=1000)


@pytest.mark.parametrize("n", [1, 1000, 1_000_001])
def test_payload_sizes_are_what_the_layout_implies(n: int) -> None:
    x = sample("normal", n)
    expected = {
        Codec("raw"): 4 * n,
        Codec("fp16"): 2 * n,
        Codec("bf16"): 2 * n,
        Codec("int8", block_size=256): 12 + 4 * math.ceil(n / 256) + n,
        Codec("int8", block_size=64): 12 + 4 * math.ceil(n / 64) + n,
        Codec("int4", block_size=256): 12 + 4 * math.ceil(n / 256) + math.ceil(n / 2),
        Codec("int4", block_size=7): 12 + 4 * math.ceil(n / 7) + math.ceil(n / 2),
        Codec("topk", ratio=0.01): 12 + 8 * math.ceil(n * 0.01),
    }
    for codec, size in expected.items():
        enc = codec.encode(x)
        assert enc.nbytes == size == codec.encoded_len(n), codec
        assert enc.compression_ratio == pytest.approx(4 * n / size)
        assert codec.expected_ratio(n) == pytest.approx(enc.compression_ratio)
    if n == 1_000_001:
        assert Codec("int8").expected_ratio(n) == pytest.approx(3.94, abs=0.01)
        assert Codec("int4").expected_ratio(n) == pytest.approx(7.76, abs=0.01)
        assert Codec("topk", ratio=0.01).expected_ratio(n) == pytest.approx(50, rel=1e-3)


# ---- bad input -----------------------------------------------------------------


def test_unknown_codec_is_refused() -> None:
    x = sample("normal", 10)
    with pytest.raises(UnknownCodecError, match="zip"):
        encode(x, "zip")
    with pytest.raises(UnknownCodecError, match="zip"):
        decode(b"\0" * 8, "zip")
    with pytest.raises(UnknownCodecError):
        encode(x, 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"codec": "int8", "block_size": 0}, "block_size"),
        ({"codec": "int8", "block_size": 2**40}, "block_size"),
        ({"codec": "int8", "block_size": True}, "block_size"),
        ({"codec": "topk"}, "exactly one of k or ratio"),
        ({"codec": "topk", "k": 3, "ratio": 0.1}, "exactly one of k or ratio"),
        ({"codec": "topk", "k": 0}, "k must be"),
        ({"codec": "topk", "k": 11}, "k must be in 1..=10"),
        ({"codec": "topk", "ratio": 0.0}, "ratio"),
        ({"codec": "topk", "ratio": 1.5}, "ratio"),
        ({"codec": "fp16", "k": 3}, "topk codec only"),
        ({"codec": "int4", "block_size": 0}, "block_size"),
        ({"codec": "int4", "ratio": 0.5}, "topk codec only"),
    ],
)
def test_parameters_out_of_range_are_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        encode(sample("normal", 10), **kwargs)


def test_bad_residuals_are_refused_and_left_untouched() -> None:
    x = sample("normal", 10)
    with pytest.raises(ShapeMismatchError, match="9 elements"):
        encode(x, "topk", k=2, residual=np.zeros(9, np.float32))
    with pytest.raises(DtypeMismatchError, match="float64"):
        encode(x, "topk", k=2, residual=np.zeros(10))
    with pytest.raises(NonContiguousError, match="residual"):
        encode(x, "topk", k=2, residual=np.zeros(20, np.float32)[::2])
    readonly = np.zeros(10, np.float32)
    readonly.flags.writeable = False
    with pytest.raises(InvalidArgumentError, match="writeable"):
        encode(x, "topk", k=2, residual=readonly)
    with pytest.raises(InvalidArgumentError, match="share no memory"):
        encode(x, "topk", k=2, residual=x)
    with pytest.raises(InvalidArgumentError, match="raw is exact"):
        encode(x, "raw", residual=np.zeros(10, np.float32))
    with pytest.raises(InvalidArgumentError, match="error_feedback off"):
        Codec("int8", error_feedback=False).encode(x, np.zeros(10, np.float32))
    residual = np.full(10, 0.5, np.float32)
    residual[3] = np.nan
    before = residual.copy()
    with pytest.raises(NonFiniteError, match="position 3"):
        encode(x, "topk", k=2, residual=residual)
    np.testing.assert_array_equal(residual, before)


def test_bad_updates_are_refused() -> None:
    with pytest.raises(EmptyInputError):
        encode(np.zeros(0, np.float32), "int8")
    with pytest.raises(NonContiguousError):
        encode(np.zeros(20, np.float32)[::2], "fp16")
    with pytest.raises(DtypeMismatchError, match="int64"):
        encode(np.arange(10), "raw")
    with pytest.raises(DtypeMismatchError, match="list"):
        encode([1.0, 2.0], "raw")
    x = sample("normal", 100)
    for codec in ["raw", "fp16", "bf16", "int8", "int4", "topk"]:
        bad = x.copy()
        bad[42] = np.inf
        with pytest.raises(NonFiniteError, match="position 42"):
            encode(bad, codec, k=5 if codec == "topk" else None)
    big = x.copy()
    big[17] = 70000.0
    with pytest.raises(CodecError, match="position 17"):
        encode(big, "fp16")


def test_truncated_and_corrupted_payloads_raise_codec_error() -> None:
    x = sample("normal", 1000)
    int8 = encode(x, "int8", block_size=100).payload
    topk = encode(x, "topk", k=10).payload
    with pytest.raises(CodecError, match="truncated"):
        decode(int8[:7], "int8")
    with pytest.raises(CodecError, match="bytes"):
        decode(int8[:-1], "int8")
    with pytest.raises(CodecError, match="expected 999"):
        decode(int8, "int8", numel=999)
    with pytest.raises(CodecError, match="whole number"):
        decode(b"\0\0\0", "fp16")
    with pytest.raises(CodecError, match="expected 7"):
        decode(b"\0" * 16, "raw", shape=(7,))
    bad = bytearray(topk)
    bad[12:16] = (5000).to_bytes(4, "little")
    with pytest.raises(CodecError, match="strictly increase|out of range"):
        decode(bytes(bad), "topk")
    bad = bytearray(topk)
    bad[12 + 36 : 12 + 40] = (1000).to_bytes(4, "little")
    with pytest.raises(CodecError, match="out of range"):
        decode(bytes(bad), "topk", numel=1000)
    bad = bytearray(int8)
    bad[12:16] = np.float32(np.nan).tobytes()
    with pytest.raises(CodecError, match="invalid scale NaN for block 0"):
        decode(bytes(bad), "int8")
    with pytest.raises(CodecError, match="zstd"):
        decode(b"definitely not zstd", "int8", zstd=True)
    packed = encode(x, "int8", zstd=True).payload
    with pytest.raises(CodecError, match="zstd"):
        decode(packed[: len(packed) // 2], "int8", zstd=True)
    with pytest.raises(CodecError, match="expands past"):
        decode(encode(x, "raw", zstd=True).payload, "raw", zstd=True, numel=10)


def test_decode_accepts_any_bytes_like_payload() -> None:
    x = sample("normal", 300)
    payload = encode(x, "int8").payload
    for view in (bytearray(payload), memoryview(payload), np.frombuffer(payload, np.uint8)):
        np.testing.assert_array_equal(decode(view, "int8", numel=300), decode(payload, "int8"))


_VALID = {
    codec: encode(sample("heavy", 97, seed=3), codec, k=9 if codec == "topk" else None, zstd=z)
    for codec in ["raw", "fp16", "bf16", "int8", "int4", "topk"]
    for z in [False]
} | {
    f"{codec}+zstd": encode(sample("heavy", 97, seed=3), codec, k=9 if codec == "topk" else None, zstd=True)
    for codec in ["int8", "int4", "topk"]
}


@settings(max_examples=300, deadline=None)
@given(
    which=st.sampled_from(sorted(_VALID)),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), min_size=1, max_size=4),
    cut=st.integers(0, 10_000),
)
def test_corrupted_payloads_never_crash(which: str, flips: list, cut: int) -> None:
    enc = _VALID[which]
    payload = bytearray(enc.payload)
    for at, xor in flips:
        payload[at % len(payload)] ^= xor
    payload = payload[: max(0, len(payload) - cut % 8)]
    try:
        y = decode(bytes(payload), enc.codec, zstd=enc.zstd, numel=enc.numel)
    except CodecError:
        return
    assert y.dtype == np.float32 and y.shape == (enc.numel,)
    assert np.all(np.isfinite(y))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=300), codec=st.sampled_from(["raw", "fp16", "bf16", "int8", "int4", "topk"]))
def test_random_bytes_never_crash(data: bytes, codec: str) -> None:
    for zstd in (False, True):
        try:
            decode(data, codec, zstd=zstd)
        except CodecError:
            pass


def test_encoded_is_a_plain_record() -> None:
    enc = encode(sample("normal", 8), "fp16")
    assert isinstance(enc, Encoded) and isinstance(enc.payload, bytes)
    assert "payload" not in repr(enc)
