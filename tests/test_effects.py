"""Updates judged by their verified effect on a held-out loss (issue 12, item 3).

The judging function and the epoch tally are driven directly; the scorer is
driven with a real model, real digits data and real updates (one trained by
SGD on a training shard, and its hostile and noise-level counterparts) through
a real :class:`Round`. The end-to-end run — real node processes, scripted
hostile peers over the real transport, the embedded chain — is in
``test_effects_e2e.py``.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from hypergpu.config import load_config
from hypergpu.coordinator.effects import EffectScorer
from hypergpu.data.run_data import prepare_run_data
from hypergpu.errors import InvalidArgumentError
from hypergpu.model.manager import ModelManager
from hypergpu.model.nets import build_model
from hypergpu.model.task import task_for
from hypergpu.protocol import Assignment, Message, UpdateMeta
from hypergpu.rewards import EffectPolicy, EpochTally, judge, score_epoch
from hypergpu.round import NodeAnswer, Round, RoundBook, RoundPlan, RoundRecord
from hypergpu.round.effects import NodeEffect, RoundEffects

RNG = np.random.default_rng(7)


# --- the judging function ----------------------------------------------------------------------


def test_an_update_that_lowers_the_loss_beyond_noise_scores_a_positive_effect_and_quality_above_one() -> None:
    before = RNG.uniform(1.0, 3.0, 256)
    e = judge(before, before - 0.3 + RNG.normal(0, 0.05, 256))
    assert e.effect == pytest.approx(0.3, abs=0.02) and e.se is not None and 0 < e.se < 0.01
    assert not e.harmful and 1.0 < e.quality <= 1.5
    noise = 2 * e.se + 0.005 * before.mean()  # two standard errors and half a percent of the loss
    assert e.quality == pytest.approx(1 + 0.5 * np.tanh((e.effect - noise) / 0.05))


def test_an_update_that_raises_the_loss_beyond_noise_is_harmful_and_earns_nothing() -> None:
    before = RNG.uniform(1.0, 3.0, 256)
    e = judge(before, before + 0.2 + RNG.normal(0, 0.05, 256))
    assert e.effect is not None and e.effect < 0 and e.harmful and e.quality == 0.0
    broken = judge(before, np.full(256, np.inf))  # the update broke the model: no number to show, still harmful
    assert broken.harmful and broken.quality == 0.0 and broken.effect is None and broken.loss_after is None


def test_a_noise_level_change_is_neither_punished_nor_rewarded() -> None:
    before = RNG.uniform(1.0, 3.0, 256)
    # zero-mean noise per sample: the mean difference is within two standard errors
    noise = RNG.normal(0, 0.05, 256)
    e = judge(before, before + noise - noise.mean())
    assert not e.harmful and e.quality == 1.0 and abs(e.effect or 0) < 1e-9
    # a tiny update that moves every sample's loss alike: many standard errors, but within the margin
    alike = judge(before, before + 1e-5 * before)
    assert alike.se is not None and alike.effect is not None and -alike.effect > 20 * alike.se
    assert not alike.harmful and alike.quality == 1.0
    unchanged = judge(before, before.copy())  # a zero update: no noise at all, and no harm
    assert unchanged.effect == 0.0 and unchanged.se == 0.0 and not unchanged.harmful and unchanged.quality == 1.0


def test_the_noise_threshold_and_margin_decide_what_is_harmful() -> None:
    before = np.linspace(1.0, 2.0, 100)
    worse = before + 0.01 + np.tile([-0.02, 0.02], 50)  # effect -0.01, se ~0.002
    e = judge(before, worse, EffectPolicy(margin=0.0))
    assert e.harmful and e.se is not None and e.se == pytest.approx(0.02 / np.sqrt(100) * np.sqrt(100 / 99))
    assert not judge(before, worse, EffectPolicy(noise_z=10.0, margin=0.0)).harmful  # 10 SE of allowance
    assert not judge(before, worse).harmful  # or the default margin: 0.5% of the loss of 1.5
    assert judge(before, before + 0.02).harmful  # a consistent 0.02 is beyond it
    for bad in (dict(noise_z=-1.0), dict(margin=float("nan")), dict(scale=0.0)):
        with pytest.raises(InvalidArgumentError, match="effect policy"):
            EffectPolicy(**bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="same, non-empty batch"):
        judge(before, worse[:10])
    with pytest.raises(InvalidArgumentError, match="not finite"):
        judge(np.full(3, np.nan), np.ones(3))


# --- the epoch tally -----------------------------------------------------------------------------


def answer(node: int, round_id: int, samples: int) -> NodeAnswer:
    return NodeAnswer(node_id=node, round=round_id, samples=samples, loss=0.5, compute_s=1.0, wall_s=1.0,
                      turnaround_s=1.0, update_bytes=10, params_bytes=10, codec="raw", weight=float(samples))


def record(round_id: int, effects: RoundEffects | None, samples: dict[int, int]) -> RoundRecord:
    nodes = sorted(samples)
    return RoundRecord(round=round_id, applied=True, participants=nodes, reported=nodes, missing=[], excluded={},
                       train_loss=0.5, samples=sum(samples.values()), duration_s=1.0, model_version=round_id,
                       answers={n: answer(n, round_id, s) for n, s in samples.items()}, effects=effects)


def effect(quality: float, harmful: bool = False, value: float | None = None) -> NodeEffect:
    value = value if value is not None else -1.0 if harmful else 0.1
    return NodeEffect(effect=value, se=0.01, loss_after=2.0, harmful=harmful, quality=quality, noise=0.03)


def test_a_harmful_round_earns_nothing_and_the_others_set_the_quality() -> None:
    names = {0: "honest", 1: "poisoner", 2: "sometimes"}
    tally = EpochTally()
    for r, qualities in enumerate([(1.4, None, 1.2), (1.2, None, None)], start=1):
        effects = RoundEffects(r, [0, 1, 2], batch=64)
        # "sometimes" helps in round 1 by more than it harms in round 2: its epoch's net is positive
        effects.fill({0: effect(qualities[0]), 1: effect(0.0, harmful=True),
                      **({2: effect(qualities[2], value=2.0)} if qualities[2] is not None else {2: effect(0.0, True)})},
                     2.3)
        tally.add_round(0, record(r, effects, {0: 100, 1: 100, 2: 300 if r == 1 else 100}), names, {})
    # a third round nobody scored (effects off): it counts as work at the scored rounds' quality
    tally.add_round(0, record(3, None, {0: 100, 1: 100, 2: 100}), names, {})
    epoch, stats = tally.take({})
    by = {s.node: s for s in stats}
    # Harmful twice, never outweighed: the epoch is forfeited, its unscored round too.
    assert by["poisoner"].harmful_rounds == 2 and by["poisoner"].forfeited and by["poisoner"].samples_accepted == 0
    assert by["poisoner"].effect_quality is None and by["poisoner"].rounds_succeeded == 0
    assert by["poisoner"].net_effect == pytest.approx(-2.0)
    assert by["honest"].harmful_rounds == 0 and by["honest"].samples_accepted == 300
    assert by["honest"].effect_quality == pytest.approx(1.3)  # (100 x 1.4 + 100 x 1.2) / 200
    assert by["sometimes"].samples_accepted == 400 and by["sometimes"].effect_quality == pytest.approx(1.2)
    assert not by["sometimes"].forfeited and by["sometimes"].net_effect == pytest.approx(1.0)
    scores = score_epoch(epoch, stats).nodes
    assert scores["poisoner"].quality == 0.5 and scores["poisoner"].outlier
    assert scores["honest"].quality == pytest.approx(1.3) and not scores["honest"].outlier
    assert scores["poisoner"].score == 0.0


def judged(effect_value: float, se: float = 0.01, loss_before: float = 2.0) -> NodeEffect:
    """What :func:`judge` makes of an update that moved every one of 64 held-out losses by about
    ``effect_value`` (spread to give standard error ``se``)."""
    spread = se * np.sqrt(64) * np.where(np.arange(64) % 2, 1.0, -1.0)
    before = np.full(64, loss_before)
    return judge(before, before - effect_value + spread)


def test_harm_then_repair_earns_nothing_while_honest_and_noise_level_nodes_earn() -> None:
    # Round by round the repair rounds look helpful (quality up to 1.5): the attacker would earn
    # about half its rounds. Over the epoch its effects sum to about nothing, its harm included.
    names = {0: "honest", 1: "alternating", 2: "noise-level", 3: "one-slip"}
    tally = EpochTally()
    for r in range(1, 7):
        effects = RoundEffects(r, [0, 1, 2, 3], batch=64)
        effects.fill({
            0: judged(0.05),  # helps beyond noise every round
            1: judged(-0.3 if r % 2 else 0.3),  # harms, then undoes it
            2: judged(0.0),  # within noise
            3: judged(-0.05 if r == 1 else 0.08),  # harmful once, helpful well beyond that after
        }, 2.0)
        tally.add_round(0, record(r, effects, {0: 100, 1: 100, 2: 100, 3: 100}), names, {})
    epoch, stats = tally.take({})
    by = {s.node: s for s in stats}
    # Round by round, the attacker's repairs were judged helpful, and at the most quality there is.
    assert by["alternating"].harmful_rounds == 3
    assert by["alternating"].forfeited and by["alternating"].samples_accepted == 0
    assert by["alternating"].net_effect == pytest.approx(0.0, abs=1e-9)
    assert by["alternating"].net_noise is not None and by["alternating"].net_noise > 0
    assert not by["honest"].forfeited and by["honest"].samples_accepted == 600
    assert not by["noise-level"].forfeited and by["noise-level"].samples_accepted == 600  # never harmful
    assert by["noise-level"].effect_quality == 1.0
    # Harm outweighed by help beyond noise: the harmful round still earns nothing, the rest earn.
    assert by["one-slip"].harmful_rounds == 1 and not by["one-slip"].forfeited
    assert by["one-slip"].samples_accepted == 500
    scores = score_epoch(epoch, stats).nodes
    assert scores["alternating"].score == 0.0 and scores["alternating"].outlier
    assert "net effect over the epoch" in scores["alternating"].reasons[0]
    assert all(scores[n].score > 0 for n in ("honest", "noise-level", "one-slip"))
    # Without the epoch's net, the repair rounds alone would have earned it half an honest node's work.
    repairs = [judged(0.3) for _ in range(3)]
    assert all(not e.harmful and e.quality > 1.4 for e in repairs)


def test_a_harmful_round_that_broke_the_model_forfeits_the_epoch() -> None:
    tally = EpochTally()
    broken = NodeEffect(effect=None, se=None, loss_after=None, harmful=True, quality=0.0)
    for r, e in enumerate([broken, judged(5.0), judged(5.0)], start=1):
        effects = RoundEffects(r, [0], batch=64)
        effects.fill({0: e}, 2.0)
        tally.add_round(0, record(r, effects, {0: 100}), {0: "a"}, {})
    _, stats = tally.take({})
    assert stats[0].forfeited and stats[0].net_effect is None and stats[0].samples_accepted == 0


def test_the_tally_waits_for_effects_still_being_measured() -> None:
    names = {0: "a", 1: "b"}
    tally = EpochTally()
    pending = RoundEffects(1, [0, 1], batch=64)
    tally.add_round(0, record(1, pending, {0: 10, 1: 10}), names, {})
    filler = threading.Thread(target=pending.fill, args=({0: effect(1.5), 1: effect(0.0, True)}, 2.0))
    filler.start()  # filled from another thread, as the scorer's worker does
    _, stats = tally.take({})
    filler.join()
    by = {s.node: s for s in stats}
    assert by["a"].effect_quality == 1.5 and by["b"].harmful_rounds == 1 and by["b"].samples_accepted == 0
    # effects that never come (a scorer that died) count as unscored once the wait is over
    never = RoundEffects(2, [0], batch=64)
    tally.add_round(1, record(2, never, {0: 10}), names, {})
    _, stats = tally.take({}, wait_s=0.0)
    assert stats[0].effect_quality is None and stats[0].samples_accepted == 10 and stats[0].harmful_rounds == 0


def test_a_record_shows_its_effects_once_they_are_in() -> None:
    effects = RoundEffects(4, [0], batch=32)
    rec = record(4, effects, {0: 10})
    assert rec.as_dict()["effects"] == {"scored": [0], "batch": 32, "ready": False}
    assert "effect" not in rec.as_dict()["nodes"]["0"]
    effects.fill({0: effect(1.1)}, 2.5)
    d = rec.as_dict()
    assert d["effects"]["loss_before"] == 2.5 and d["effects"]["harmful"] == []
    assert d["nodes"]["0"]["effect"] == 0.1 and d["nodes"]["0"]["effect_quality"] == 1.1
    assert d["nodes"]["0"]["harmful"] is False


# --- the scorer, on a real model ------------------------------------------------------------------


def digits(tmp_path: Path, *overrides: str):  # type: ignore[no-untyped-def]
    cfg = load_config(None, ["training.model='mlp'", f"data.cache_dir='{tmp_path / 'cache'}'", "nodes.count=2",
                             *overrides])
    data = prepare_run_data(cfg)
    model = build_model(cfg.training, data.input_shape, data.num_classes)
    return cfg, data, ModelManager(model)


def trained_update(manager: ModelManager, data, steps: int = 30) -> np.ndarray:  # type: ignore[no-untyped-def]
    """What an honest node sends: SGD on its own training shard, after minus before."""
    model = copy.deepcopy(manager.model)
    shard = data.manager.shards[0]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for step in range(steps):
        idx = np.arange(step * 32, step * 32 + 32) % len(shard)
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(shard.x[idx])), torch.from_numpy(shard.y[idx]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return manager.layout.flatten(model) - manager.flat_parameters()


def closed_round(manager: ModelManager, updates: dict[int, np.ndarray]) -> tuple[Round, RoundRecord]:
    a = Assignment(batch_size=32, local_steps=30)
    params = manager.flat_parameters()
    rnd = Round(RoundPlan(1, {n: a for n in updates}), params, RoundBook(quorum=0.5), now=0.0, timeout_s=10.0)
    for n, u in updates.items():
        meta = UpdateMeta(samples=960, loss=0.5).as_meta()
        assert rnd.accept(n, Message("update", meta, {"update": u}, round=1), 64, now=1.0).accepted
    return rnd, rnd.close(2.0, lambda mean: 1, model_version=0)


def test_the_scorer_judges_real_updates_on_held_out_samples(tmp_path: Path) -> None:
    cfg, data, manager = digits(tmp_path, "rewards.effect_batch=300")
    honest = trained_update(manager, data)
    updates = {
        0: honest,
        1: np.full_like(honest, 5.0),  # 5.0 per coordinate
        2: -honest,  # sign-flipped
        3: RNG.normal(0, 1e-6, honest.size).astype(np.float32),  # noise-level
    }
    rnd, rec = closed_round(manager, updates)
    scorer = EffectScorer(cfg, manager, data.test, task_for(cfg))

    async def score() -> RoundRecord:
        scored = await scorer.begin(rnd, manager.flat_parameters(), slice(None), rec)
        await scorer.settled()
        return scored

    scored = asyncio.run(score())
    scorer.close()
    assert scored.effects is not None and scored.effects.ready and scored.effects.error is None
    assert scored.effects.nodes == (0, 1, 2, 3) and scored.effects.batch == 300
    e = {n: scored.effects.get(n) for n in updates}
    print("\n" + "; ".join(f"node {n}: effect {x.effect}, se {x.se}, quality {x.quality}" for n, x in e.items() if x))
    assert e[0] is not None and e[0].effect is not None and e[0].effect > 0 and e[0].quality > 1.0
    assert e[1] is not None and e[1].harmful and e[1].quality == 0.0
    assert e[2] is not None and e[2].harmful and e[2].quality == 0.0
    assert e[3] is not None and not e[3].harmful and e[3].quality == 1.0
    assert rnd.take_updates() == {}  # the round handed its updates over once and kept none
    assert scorer.of_node(1) == {"effects_scored": 1, "effects_harmful": 1,
                                 "effect_mean": e[1].effect if e[1].effect is not None else None,
                                 "effect_last": e[1].effect, "effect_last_round": 1, "effect_last_harmful": True}


def test_the_scorer_scores_a_sampled_subset_and_can_be_turned_off(tmp_path: Path) -> None:
    cfg, data, manager = digits(tmp_path, "rewards.effect_batch=64", "rewards.effect_nodes=2")
    updates = {n: np.zeros(manager.layout.total, np.float32) for n in range(5)}

    async def score(scorer: EffectScorer) -> RoundRecord:
        rnd, rec = closed_round(manager, updates)
        scored = await scorer.begin(rnd, manager.flat_parameters(), slice(None), rec)
        await scorer.settled()
        return scored

    scorer = EffectScorer(cfg, manager, data.test, task_for(cfg))
    scored = asyncio.run(score(scorer))
    scorer.close()
    assert scored.effects is not None and len(scored.effects.nodes) == 2
    assert [n for n, _ in scored.effects.items()] == list(scored.effects.nodes)
    unset = cfg.model_copy(update={"rewards": cfg.rewards.model_copy(update={"effect_batch": None})})
    assert EffectScorer(unset, manager, data.test, task_for(cfg)).batch == 256  # a labelled dataset's default
    off_cfg = cfg.model_copy(update={"rewards": cfg.rewards.model_copy(update={"effect_batch": 0})})
    off = EffectScorer(off_cfg, manager, data.test, task_for(cfg))
    assert asyncio.run(score(off)).effects is None
