"""Aggregation from Python, checked against NumPy references computed here."""

from __future__ import annotations

import threading
import tracemalloc

import numpy as np
import pytest
import torch

from hypergpu import errors
from hypergpu._buffers import as_arrays
from hypergpu.config import load_config
from hypergpu.update.aggregate import Accumulator, cosines, krum, median, trimmed_mean, weighted_mean
from hypergpu.update.robust import Rule, aggregate


def _updates(n: int, shape: tuple[int, ...], seed: int = 0, dtype=np.float32) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(n)]


def _reference_mean(updates, weights=None, clip=None):
    """Weighted mean and pre-clip norms in float64."""
    x = np.stack([np.asarray(u, dtype=np.float64).ravel() for u in updates])
    w = np.ones(len(updates)) if weights is None else np.asarray(weights, dtype=np.float64)
    norms = np.linalg.norm(x, axis=1)
    scale = np.ones_like(norms) if clip is None else np.minimum(1.0, clip / norms)
    mean = (w * scale) @ x / w.sum()
    return mean.reshape(np.shape(updates[0])), norms


# --- weighted mean --------------------------------------------------------------


def test_mean_matches_numpy():
    ups = _updates(5, (3, 50, 7))
    r = weighted_mean(ups)
    ref, norms = _reference_mean(ups)
    assert r.mean.dtype == np.float32 and r.mean.shape == (3, 50, 7)
    np.testing.assert_allclose(r.mean, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.norms, norms, rtol=1e-6)
    np.testing.assert_allclose(r.weights, np.full(5, 0.2))
    assert r.skipped == () and r.clipped == ()


@pytest.mark.parametrize("weights", [[1.0, 2.0, 0.0, 4.5], np.array([0.1, 0.2, 0.3, 0.4])])
def test_weighted_mean_matches_numpy(weights):
    ups = _updates(4, (1000,), seed=1)
    r = weighted_mean(ups, weights=weights)
    ref, _ = _reference_mean(ups, weights)
    np.testing.assert_allclose(r.mean, ref, rtol=1e-5, atol=1e-6)
    w = np.asarray(weights, dtype=np.float64)
    np.testing.assert_allclose(r.weights, w / w.sum())


def test_clipping_scales_large_updates_and_reports_pre_clip_norms():
    ups = _updates(4, (400,), seed=2)
    ups[1] *= 10.0
    ups[3] *= 5.0
    norms = [float(np.linalg.norm(u.astype(np.float64))) for u in ups]
    clip = float(np.median(norms))
    r = weighted_mean(ups, weights=[1, 2, 3, 4], clip_norm=clip)
    ref, ref_norms = _reference_mean(ups, [1, 2, 3, 4], clip)
    np.testing.assert_allclose(r.mean, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.norms, ref_norms, rtol=1e-6)
    assert r.clipped == tuple(i for i, n in enumerate(norms) if n > clip)
    assert {1, 3} <= set(r.clipped)


def test_nonfinite_raises_naming_the_first_bad_update():
    ups = _updates(5, (100,), seed=3)
    ups[2][17] = np.nan
    ups[4][3] = np.inf
    with pytest.raises(errors.NonFiniteError, match=r"update 2 at position 17") as info:
        weighted_mean(ups)
    assert info.value.update_index == 2
    with pytest.raises(errors.NonFiniteError) as info:
        weighted_mean(ups, clip_norm=1.0)
    assert info.value.update_index == 2


def test_nonfinite_skip_excludes_and_renormalises():
    ups = _updates(5, (100,), seed=4)
    ups[1][0] = -np.inf
    ups[3][99] = np.nan
    weights = [1.0, 2.0, 3.0, 4.0, 5.0]
    r = weighted_mean(ups, weights=weights, on_nonfinite="skip")
    kept = [0, 2, 4]
    ref, norms = _reference_mean([ups[i] for i in kept], [weights[i] for i in kept])
    assert r.skipped == (1, 3)
    np.testing.assert_allclose(r.mean, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.weights, [1 / 9, 0, 3 / 9, 0, 5 / 9])
    assert np.isnan(r.norms[1]) and np.isnan(r.norms[3])
    np.testing.assert_allclose(r.norms[kept], norms, rtol=1e-6)
    # Clipping takes the scan-first path; same exclusion.
    rc = weighted_mean(ups, weights=weights, clip_norm=5.0, on_nonfinite="skip")
    assert rc.skipped == (1, 3)
    np.testing.assert_allclose(
        rc.mean, _reference_mean([ups[i] for i in kept], [weights[i] for i in kept], 5.0)[0], rtol=1e-5, atol=1e-6
    )


def test_skip_with_nothing_left():
    ups = _updates(2, (10,), seed=5)
    ups[0][0] = np.nan
    ups[1][0] = np.nan
    with pytest.raises(errors.NonFiniteError):
        weighted_mean(ups, on_nonfinite="skip")
    ok = _updates(1, (10,))[0]
    with pytest.raises(errors.WeightsError, match="skipped"):
        weighted_mean([ups[0], ok], weights=[1.0, 0.0], on_nonfinite="skip")


def test_overflowing_weighted_sum_is_an_error_not_inf():
    ups = [np.full(10, 2.0, np.float32)] * 2
    with pytest.raises(errors.WeightsError, match="overflows float32"):
        weighted_mean(ups, weights=[3e38, 3e38])
    acc = Accumulator(10)
    for u in ups:
        acc.add(u, 3e38)
    with pytest.raises(errors.WeightsError, match="overflows float32"):
        acc.finalize()


def test_multi_threaded_size():
    """Several million elements: many parallel chunks, a non-finite value late on."""
    ups = _updates(4, (3_000_001,), seed=6)
    r = weighted_mean(ups, weights=[1, 2, 3, 4], clip_norm=1500.0)
    ref, norms = _reference_mean(ups, [1, 2, 3, 4], 1500.0)
    np.testing.assert_allclose(r.mean, ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(r.norms, norms, rtol=1e-6)
    ups[3][2_999_999] = np.nan
    with pytest.raises(errors.NonFiniteError, match="position 2999999") as info:
        weighted_mean(ups)
    assert info.value.update_index == 3
    med = median(ups[:3]).value
    np.testing.assert_array_equal(med, np.median(np.stack(ups[:3]), axis=0))


# --- dtypes and zero copy -----------------------------------------------------------


def test_float16_updates():
    ups = _updates(3, (64, 33), seed=7, dtype=np.float16)
    ref, norms = _reference_mean(ups, [1, 2, 3])
    r = weighted_mean(ups, weights=[1, 2, 3])
    assert r.mean.dtype == np.float32
    np.testing.assert_allclose(r.mean, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.norms, norms, rtol=1e-6)
    np.testing.assert_array_equal(median(ups).value, np.median(np.stack(ups).astype(np.float32), axis=0))


def test_torch_bfloat16_and_float32_tensors():
    gen = torch.Generator().manual_seed(8)
    bf = [torch.randn(10, 300, generator=gen).to(torch.bfloat16) for _ in range(4)]
    wide = [t.float().numpy() for t in bf]
    r = weighted_mean(bf, weights=[4, 3, 2, 1])
    ref, norms = _reference_mean(wide, [4, 3, 2, 1])
    np.testing.assert_allclose(r.mean, ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.norms, norms, rtol=1e-6)
    np.testing.assert_array_equal(median(bf).value, np.median(np.stack(wide), axis=0))

    f32 = [torch.randn(10, 300, generator=gen) for _ in range(3)]
    before = [t.clone() for t in f32]
    r = weighted_mean(f32)
    np.testing.assert_allclose(r.mean, _reference_mean([t.numpy() for t in f32])[0], rtol=1e-5, atol=1e-6)
    for t, b in zip(f32, before):
        assert torch.equal(t, b)


def test_inputs_are_borrowed_not_copied():
    tensors = [torch.randn(1 << 20) for _ in range(4)]
    views = as_arrays(tensors)
    assert all(np.shares_memory(v, t.numpy()) for v, t in zip(views, tensors))
    ups = _updates(4, (1 << 20,), seed=9)
    tracemalloc.start()
    try:
        weighted_mean(ups, clip_norm=100.0)
        weighted_mean(tensors)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # NumPy reports its buffers to tracemalloc: a copy of even one update would show.
    assert peak < ups[0].nbytes // 8


# --- robust aggregators --------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 4, 7])
def test_median_matches_numpy(n):
    ups = _updates(n, (37, 41), seed=10 + n)
    r = median(ups)
    np.testing.assert_array_equal(r.value, np.median(np.stack(ups), axis=0))
    assert r.skipped == ()


@pytest.mark.parametrize(("n", "trim"), [(5, 0.0), (5, 0.2), (10, 0.25), (9, 0.45)])
def test_trimmed_mean_matches_sorted_reference(n, trim):
    ups = _updates(n, (2000,), seed=20 + n)
    k = int(np.floor(trim * n))
    ref = np.sort(np.stack(ups).astype(np.float64), axis=0)[k : n - k].mean(axis=0)
    np.testing.assert_allclose(trimmed_mean(ups, trim=trim).value, ref, rtol=1e-5, atol=1e-6)


def test_robust_aggregators_skip_nonfinite():
    ups = _updates(5, (50,), seed=30)
    ups[4][7] = np.nan
    with pytest.raises(errors.NonFiniteError) as info:
        median(ups)
    assert info.value.update_index == 4
    r = median(ups, on_nonfinite="skip")
    assert r.skipped == (4,)
    np.testing.assert_array_equal(r.value, np.median(np.stack(ups[:4]), axis=0))
    assert trimmed_mean(ups, 0.25, on_nonfinite="skip").skipped == (4,)


def test_krum_picks_an_honest_update_among_outliers():
    rng = np.random.default_rng(40)
    centre = rng.standard_normal(5000).astype(np.float32)
    honest = [centre + 0.01 * rng.standard_normal(5000).astype(np.float32) for _ in range(7)]
    byzantine = [np.full(5000, 50.0, np.float32), -3.0 * centre]
    ups = byzantine[:1] + honest[:4] + byzantine[1:] + honest[4:]
    honest_idx = {1, 2, 3, 4, 6, 7, 8}
    r = krum(ups, f=2)
    assert r.selected[0] in honest_idx
    np.testing.assert_array_equal(r.value, ups[r.selected[0]])
    assert int(np.argmin(r.scores)) == r.selected[0]
    multi = krum(ups, f=2, m=4)
    assert set(multi.selected) <= honest_idx and len(multi.selected) == 4
    np.testing.assert_allclose(multi.value, np.mean([ups[i] for i in multi.selected], axis=0), rtol=1e-6, atol=1e-6)
    # Reference scores: sum of the n - f - 2 smallest squared distances to the others.
    x = np.stack(ups).astype(np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    ref = [np.sort(np.delete(d[i], i))[: len(ups) - 4].sum() for i in range(len(ups))]
    np.testing.assert_allclose(r.scores, ref, rtol=1e-5)


# --- the incremental accumulator -----------------------------------------------------------


@pytest.mark.parametrize("clip", [None, 30.0])
def test_incremental_equals_batch(clip):
    ups = _updates(6, (70_000,), seed=50)
    ups[2] *= 3
    weights = [1.0, 0.5, 2.0, 0.0, 3.0, 1.25]
    batch = weighted_mean(ups, weights=weights, clip_norm=clip)
    acc = Accumulator((70_000,))
    norms = [acc.add(u, w, clip_norm=clip) for u, w in zip(ups, weights)]
    assert acc.count == 6 and acc.total_weight == sum(weights)
    assert norms == batch.norms.tolist()
    np.testing.assert_array_equal(acc.finalize(), batch.mean)
    # finalize leaves the state alone: more updates can follow.
    acc.add(ups[0], clip_norm=clip)
    more = weighted_mean(ups + [ups[0]], weights=weights + [1.0], clip_norm=clip)
    np.testing.assert_array_equal(acc.finalize(), more.mean)
    acc.reset()
    assert acc.count == 0 and acc.dtype is None


def test_incremental_skipping_equals_batch_skip_mode():
    ups = _updates(5, (50_000,), seed=55)
    ups[1][40_000] = np.inf
    batch = weighted_mean(ups, weights=[1, 2, 3, 4, 5], clip_norm=200.0, on_nonfinite="skip")
    acc = Accumulator(50_000)
    rejected = []
    for i, (u, w) in enumerate(zip(ups, [1, 2, 3, 4, 5])):
        try:
            acc.add(u, w, clip_norm=200.0)
        except errors.NonFiniteError:
            rejected.append(i)
    assert tuple(rejected) == batch.skipped == (1,)
    np.testing.assert_array_equal(acc.finalize(), batch.mean)


def test_accumulator_rejects_bad_updates_atomically():
    ups = _updates(2, (4, 5), seed=60)
    acc = Accumulator([4, 5])
    acc.add(ups[0], 2.0)
    acc.add(ups[1], 1.0)
    before = acc.finalize()
    nan = ups[0].copy()
    nan[3, 1] = np.nan
    with pytest.raises(errors.NonFiniteError) as info:
        acc.add(nan)
    assert info.value.update_index == 2
    with pytest.raises(errors.ShapeMismatchError, match=r"\[4, 5\]"):
        acc.add(ups[0].reshape(5, 4))
    with pytest.raises(errors.DtypeMismatchError, match="f16"):
        acc.add(ups[0].astype(np.float16))
    with pytest.raises(errors.DtypeMismatchError, match="float64"):
        acc.add(ups[0].astype(np.float64))
    with pytest.raises(errors.NonContiguousError):
        acc.add(np.asfortranarray(ups[0]))
    for bad_weight in (-1.0, np.nan, np.inf, 1e39, "heavy"):
        with pytest.raises(errors.WeightsError):
            acc.add(ups[0], bad_weight)
    with pytest.raises(errors.InvalidArgumentError):
        acc.add(ups[0], clip_norm=0.0)
    assert acc.count == 2 and acc.total_weight == 3.0 and acc.dtype == "f32"
    np.testing.assert_array_equal(acc.finalize(), before)


def test_accumulator_from_many_threads():
    ups = _updates(16, (20_000,), seed=70)
    acc = Accumulator(20_000)
    threads = [threading.Thread(target=acc.add, args=(u,)) for u in ups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert acc.count == 16
    np.testing.assert_allclose(acc.finalize(), _reference_mean(ups)[0], rtol=1e-5, atol=1e-6)


def test_accumulator_bad_construction_and_empty_finalize():
    with pytest.raises(errors.InvalidArgumentError):
        Accumulator((-1, 3))
    with pytest.raises(errors.EmptyInputError):
        Accumulator((0, 3))
    with pytest.raises(errors.InvalidArgumentError, match="too large"):
        Accumulator((2**40, 2**40))
    with pytest.raises(errors.InvalidArgumentError, match="cannot allocate"):
        Accumulator((2**61,))
    acc = Accumulator(3)
    with pytest.raises(errors.EmptyInputError, match="no updates"):
        acc.finalize()
    acc.add(np.ones(3, np.float32), 0.0)
    with pytest.raises(errors.WeightsError, match="zero"):
        acc.finalize()


# --- bad input to the batch functions --------------------------------------------------------

ALL = [
    lambda u: weighted_mean(u),
    lambda u: median(u),
    lambda u: trimmed_mean(u, 0.1),
    lambda u: krum(u, f=0),
]


@pytest.mark.parametrize("call", ALL)
def test_bad_update_lists(call):
    a = np.ones((4, 3), np.float32)
    with pytest.raises(errors.EmptyInputError, match="empty"):
        call([])
    with pytest.raises(errors.EmptyInputError, match="no elements"):
        call([np.ones(0, np.float32)] * 3)
    with pytest.raises(errors.ShapeMismatchError, match="update 2"):
        call([a, a, a.reshape(3, 4)])
    with pytest.raises(errors.DtypeMismatchError, match="update 1"):
        call([a, a.astype(np.float16), a])
    with pytest.raises(errors.DtypeMismatchError, match="float64"):
        call([a, a.astype(np.float64), a])
    with pytest.raises(errors.DtypeMismatchError, match="list"):
        call([a, [1.0, 2.0], a])
    with pytest.raises(errors.NonContiguousError, match="update 1"):
        call([a, np.ones((4, 6), np.float32)[:, ::2], a])
    with pytest.raises(errors.NonContiguousError):
        call([torch.ones(3, 4).t()] * 3)


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([1.0], "1 weights given for 3"),
        ([1.0, -1.0, 1.0], "negative"),
        ([1.0, np.nan, 1.0], "finite"),
        ([1.0, np.inf, 1.0], "finite"),
        ([0.0, 0.0, 0.0], "zero"),
        ([[1.0, 1.0, 1.0]], "one-dimensional"),
        (["a", "b", "c"], "numbers"),
    ],
)
def test_bad_weights(weights, match):
    with pytest.raises(errors.WeightsError, match=match):
        weighted_mean(_updates(3, (5,)), weights=weights)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda u: weighted_mean(u, clip_norm=0.0), "clip_norm"),
        (lambda u: weighted_mean(u, clip_norm=np.nan), "clip_norm"),
        (lambda u: weighted_mean(u, clip_norm="big"), "clip_norm"),
        (lambda u: median(u, on_nonfinite="drop"), "on_nonfinite"),
        (lambda u: weighted_mean(u, on_nonfinite="ignore"), "on_nonfinite"),
        (lambda u: trimmed_mean(u, trim=0.5), "trim"),
        (lambda u: trimmed_mean(u, trim=-0.1), "trim"),
        (lambda u: trimmed_mean(u, trim="a lot"), "trim"),
        (lambda u: krum(u, f=-1), "f must be between 0"),
        (lambda u: krum(u, f=2**70), "f must be between 0"),
        (lambda u: krum(u, f=2**62), "2f"),
        (lambda u: krum(u, f=1.5), "f must be an integer"),
        (lambda u: krum(u, f=2), r"2f\+3 = 7"),
        (lambda u: krum(u, f=1, m=0), "m must be"),
        (lambda u: krum(u, f=1, m=5), "m must be"),
    ],
)
def test_bad_parameters(call, match):
    with pytest.raises(errors.InvalidArgumentError, match=match):
        call(_updates(5, (8,)))


# --- agreement with the mean ------------------------------------------------------


def test_cosines_match_numpy_and_undefined_ones_are_nan():
    updates = _updates(4, (70_001,), seed=5)  # several parallel chunks and a ragged tail
    mean = weighted_mean(updates).mean
    x = np.stack([u.astype(np.float64) for u in updates])
    m = mean.astype(np.float64)
    expected = x @ m / (np.linalg.norm(x, axis=1) * np.linalg.norm(m))
    np.testing.assert_allclose(cosines(updates, mean), expected, rtol=1e-6)
    np.testing.assert_allclose(cosines([-2 * mean, mean], mean), [-1.0, 1.0], atol=1e-9)
    odd = [np.zeros(3, np.float32), np.array([1, np.nan, 0], np.float32)]
    assert np.isnan(cosines(odd, np.ones(3, np.float32))).all()
    half = cosines([u.astype(np.float16) for u in updates], mean.astype(np.float16))
    np.testing.assert_allclose(half, expected, atol=2e-3)


def test_cosines_refuse_a_reference_of_another_length():
    with pytest.raises(errors.ShapeMismatchError):
        cosines(_updates(2, (10,)), np.ones(11, np.float32))


# --- the configured rule (hypergpu.update.robust) ----------------------------------------


def test_each_rule_against_its_reference_on_random_updates():
    ups = _updates(7, (3000,), seed=80)
    ups[3] = ups[3] * 40  # one update far longer than the rest
    weights = [1.0, 2.0, 1.0, 3.0, 1.0, 1.0, 2.0]
    norms = [float(np.linalg.norm(u.astype(np.float64))) for u in ups]
    x = np.stack(ups).astype(np.float64)
    center = np.median(x, axis=0)  # clipped-mean: each update's distance from the median, clipped
    distances = np.linalg.norm(x - center, axis=1)
    bound = 1.5 * float(np.median(distances))
    clipped = aggregate(Rule("clipped-mean", clip_factor=1.5), ups, weights, norms)
    pulls = _reference_mean(list(x - center), weights, bound)[0]
    np.testing.assert_allclose(clipped.value, center + pulls, rtol=1e-5, atol=1e-6)
    assert clipped.clip_norm == pytest.approx(bound) and 3 in clipped.clipped
    assert set(clipped.clipped) == {i for i, d in enumerate(distances) if d > bound}
    np.testing.assert_allclose(aggregate(Rule("median"), ups, weights, norms).value, np.median(x, axis=0), rtol=1e-6)
    trimmed = aggregate(Rule("trimmed-mean", trim_fraction=0.3), ups, weights, norms)  # floor(2.1) = 2 per end
    np.testing.assert_allclose(trimmed.value, np.sort(x, axis=0)[2:5].mean(axis=0), rtol=1e-5, atol=1e-6)
    assert trimmed.trimmed == 2
    k = aggregate(Rule("krum", krum_f=2), ups, weights, norms)
    assert 3 in k.dropped and len(k.dropped) == 2
    kept = [i for i in range(7) if i not in k.dropped]
    np.testing.assert_allclose(k.value, _reference_mean([ups[i] for i in kept], [weights[i] for i in kept])[0],
                               rtol=1e-5, atol=1e-6)
    mean = aggregate(Rule("mean"), ups, weights, norms)
    np.testing.assert_allclose(mean.value, _reference_mean(ups, weights)[0], rtol=1e-5, atol=1e-6)


def test_rules_that_average_read_the_streamed_sum_when_given():
    ups = _updates(4, (500,), seed=81)
    acc = Accumulator(500)
    norms = [acc.add(u, w) for u, w in zip(ups, [1.0, 2.0, 3.0, 4.0])]
    streamed = acc.finalize()
    assert np.array_equal(aggregate(Rule("mean"), [], [], [], streamed=acc).value, streamed)
    same = aggregate(Rule("clipped-mean"), ups, [1.0, 2.0, 3.0, 4.0], norms, streamed=acc)
    assert same.clipped == () and np.array_equal(same.value, streamed)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "mode"}, "unknown aggregation"),
        ({"clip_factor": 0.0}, "clip_factor"),
        ({"clip_factor": float("nan")}, "clip_factor"),
        ({"trim_fraction": 0.5}, "trim_fraction"),
        ({"trim_fraction": -0.1}, "trim_fraction"),
        ({"krum_f": -1}, "krum_f"),
        ({"krum_f": 1.5}, "krum_f must be an integer"),
    ],
)
def test_bad_rules_are_refused(kwargs, match):
    with pytest.raises(errors.InvalidArgumentError, match=match):
        Rule(**kwargs)


def test_a_rule_needs_the_updates_it_aggregates():
    with pytest.raises(errors.InvalidArgumentError, match="none were given"):
        aggregate(Rule("median"), [], [], [])
    with pytest.raises(errors.InvalidArgumentError, match="2 updates, 1 weights"):
        aggregate(Rule("krum"), _updates(2, (4,)), [1.0], [1.0, 1.0])


def test_the_configured_rule_and_its_bounds():
    cfg = load_config(None, ["coordinator.aggregation='krum'", "coordinator.krum_f=3"])
    assert Rule.of(cfg.coordinator) == Rule("krum", 1.5, 0.2, 3)
    assert Rule.of(load_config(None, []).coordinator).name == "clipped-mean"
    for bad in ("coordinator.aggregation='mode'", "coordinator.trim_fraction=0.5", "coordinator.clip_factor=0",
                "coordinator.krum_f=-1"):
        with pytest.raises(errors.ConfigError, match=bad.split("=")[0].split(".")[1]):
            load_config(None, [bad])
