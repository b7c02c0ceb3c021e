"""Contribution scoring and reward splitting (pure Python)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hypergpu.chain.types import ContributionEntry
from hypergpu.errors import InvalidArgumentError
from hypergpu.rewards import (
    NodeEpochStats,
    RewardPolicy,
    ScoreBook,
    allocate,
    largest_remainder,
    quality_multiplier,
    reliability_multiplier,
    score_epoch,
    session_totals,
)

weights_st = st.dictionaries(
    st.text("abcdefgh", min_size=1, max_size=3),
    st.one_of(st.integers(0, 10**6), st.floats(0, 1e6, allow_nan=False)),
    min_size=1,
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(pool=st.integers(0, 10**30), weights=weights_st)
def test_largest_remainder_is_exact_and_bounded(pool: int, weights: dict) -> None:
    amounts = largest_remainder(pool, weights)
    assert set(amounts) == set(weights) and all(a >= 0 for a in amounts.values())
    total = sum(amounts.values())
    if any(w > 0 for w in weights.values()):
        assert total == pool
        wsum = sum(weights.values())
        for node, w in weights.items():  # each share is within one wei of its exact quota
            assert abs(amounts[node] - pool * w / wsum) <= 1 + pool * 1e-12
    else:
        assert total == 0


def test_edge_cases_are_defined() -> None:
    assert largest_remainder(10**18, {"only": 3.5}) == {"only": 10**18}
    assert largest_remainder(10, {"a": 1, "b": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert largest_remainder(10**18, {"a": 0, "b": 0.0}) == {"a": 0, "b": 0}
    assert largest_remainder(0, {"a": 1}) == {"a": 0}
    assert largest_remainder(10**18, {"a": 0.1, "b": 0.2, "c": 0.7}) == {
        "a": 10**17,
        "b": 2 * 10**17,
        "c": 7 * 10**17,
    }
    for bad in (-1, float("nan"), float("inf")):
        with pytest.raises(InvalidArgumentError, match="weight"):
            largest_remainder(10, {"a": bad})
    with pytest.raises(InvalidArgumentError, match="pool"):
        largest_remainder(-5, {"a": 1})


def stats(node: str, samples: int = 100, seconds: float = 10.0, **kw) -> NodeEpochStats:
    kw.setdefault("effect_quality", 1.2)
    return NodeEpochStats(node, samples, seconds, **kw)


def test_multipliers_stay_in_bounds() -> None:
    # the epoch's effect quality as it is; neutral with nothing scored; the minimum when all scored was harmful
    assert quality_multiplier(1.5) == 1.5 and quality_multiplier(1.0) == 1.0 and quality_multiplier(1.3, 2) == 1.3
    assert quality_multiplier(None) == 1.0 and quality_multiplier(None, harmful_rounds=1) == 0.5
    assert quality_multiplier(0.0) == 0.5
    assert reliability_multiplier(1.0, 10, 10) == pytest.approx(1.2)
    assert reliability_multiplier(0.0, 0, 10) == pytest.approx(0.8)
    assert reliability_multiplier(1.0, 5, 10) == pytest.approx(1.1)


def test_scoring_uses_verified_work_and_flags_outliers() -> None:
    epoch = score_epoch(
        3,
        [
            stats("a", effect_quality=1.4),
            stats("b", effect_quality=1.1),
            stats("c", effect_quality=1.3, reported_seconds=40.0),  # claims 4x what was measured
            stats("d", effect_quality=1.2),
            # every update it sent made the held-out loss worse: its work was left out of the counts
            stats("evil", samples=0, seconds=0.0, effect_quality=None, harmful_rounds=3),
            stats("idle", samples=0, seconds=0.0, effect_quality=None, uptime=0.5, exchanges_ok=1, exchanges_total=4),
        ],
    )
    s = epoch.nodes
    assert s["c"].verified_seconds == 10.0 and s["c"].outlier and "reported" in s["c"].reasons[0]
    assert s["evil"].outlier and s["evil"].quality == 0.5 and s["evil"].score == 0.0
    assert s["evil"].harmful_rounds == 3 and "worse beyond noise" in s["evil"].reasons[0]
    assert set(epoch.outliers) == {"c", "evil"}
    assert s["idle"].score == 0.0 and s["idle"].reliability == pytest.approx(0.8 + 0.4 * (0.25 + 0.125))
    for n in s.values():
        assert 0.5 <= n.quality <= 1.5 and 0.8 <= n.reliability <= 1.2
        assert n.score == pytest.approx(n.base_credit * n.quality * n.reliability)
    assert s["a"].score > s["b"].score > s["evil"].score
    entry = ContributionEntry.of(s["a"], node_id=4)
    assert (entry.compute_credit, entry.updates_accepted, entry.quality_bps) == (10_000, 100, round(s["a"].quality * 1e4))


def test_scoring_rejects_bad_stats() -> None:
    for bad in (
        stats("x", samples=-1),
        stats("x", seconds=float("nan")),
        stats("x", effect_quality=1.6),
        stats("x", effect_quality=float("nan")),
        stats("x", harmful_rounds=-1),
        stats("x", uptime=2.0),
        NodeEpochStats("x", 1, 1.0, exchanges_ok=3, exchanges_total=2),
    ):
        with pytest.raises(InvalidArgumentError, match="node 'x'"):
            score_epoch(0, [bad])
    with pytest.raises(InvalidArgumentError, match="twice"):
        score_epoch(0, [stats("x"), stats("x")])


POOL = 10**18 + 7  # not divisible by anything convenient


def scores():
    return score_epoch(
        0,
        [stats("a", samples=400, effect_quality=1.45), stats("b", samples=200, effect_quality=1.2),
         stats("c", samples=100, effect_quality=1.0)],
    ).nodes


@pytest.mark.parametrize(
    "policy",
    [
        RewardPolicy(mode="proportional"),
        RewardPolicy(mode="performance"),
        RewardPolicy(mode="tiered", top_fraction=0.3, tier_bonus_share=0.3),
        RewardPolicy(mode="minimum", minimum_wei=10**17),
    ],
    ids=lambda p: p.mode,
)
def test_policies_sum_to_the_pool(policy: RewardPolicy) -> None:
    amounts = allocate(POOL, scores(), policy)
    assert sum(amounts.values()) == POOL
    assert amounts["a"] > amounts["b"] > amounts["c"] > 0


def test_policy_semantics() -> None:
    s = scores()
    perf = allocate(POOL, s, RewardPolicy(mode="performance"))
    prop = allocate(POOL, s, RewardPolicy(mode="proportional"))
    assert perf["a"] > prop["a"]  # quality raises the best node's share
    tiered = allocate(POOL, s, RewardPolicy(mode="tiered", top_fraction=0.3, tier_bonus_share=0.5))
    assert tiered["a"] - perf["a"] == pytest.approx(POOL // 2 - perf["a"] // 2, rel=1e-9)
    minimum = allocate(POOL, s, RewardPolicy(mode="minimum", minimum_wei=POOL // 3))
    assert min(minimum.values()) >= POOL // 3
    starved = allocate(10, s, RewardPolicy(mode="minimum", minimum_wei=100))  # pool cannot cover the floor
    assert sorted(starved.values()) == [3, 3, 4]
    zero = score_epoch(0, [stats("a", samples=0, seconds=0.0), stats("b", samples=0, seconds=0.0)]).nodes
    for mode in ("proportional", "performance", "tiered", "minimum"):
        assert allocate(POOL, zero, RewardPolicy(mode=mode, minimum_wei=5)) == {"a": 0, "b": 0}
    one = score_epoch(0, [stats("solo")]).nodes
    for mode in ("proportional", "performance", "tiered", "minimum"):
        assert allocate(POOL, one, RewardPolicy(mode=mode, minimum_wei=5)) == {"solo": POOL}


def test_score_book_persists_and_totals(tmp_path) -> None:
    path = tmp_path / "history.jsonl"
    book = ScoreBook(path, session_id=9)
    e0, e1 = score_epoch(0, [stats("a"), stats("b")]), score_epoch(1, [stats("a", samples=50)])
    book.add_epoch(e0)
    book.add_epoch(e1)
    book.add_epoch(e1)  # replay after a crash: ignored
    book.add_rewards(0, {"a": 6, "b": 4})
    reopened = ScoreBook(path, session_id=9)
    assert reopened.totals()["a"] == {"compute_credit": 20_000, "updates_accepted": 150, "successful_rounds": 0}
    assert reopened.reward_totals() == {"a": 6, "b": 4}
    assert session_totals(reopened.epochs.values())["a"] == pytest.approx(e0.nodes["a"].score + e1.nodes["a"].score)
    assert len(path.read_text().splitlines()) == 3
