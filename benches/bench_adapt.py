"""Adaptive orchestration against a synchronous all-nodes baseline, same run.

Ten node processes on mixed links (3 good, 4 average, 2 poor, 1 unstable;
one good link degrades to poor mid-run) train the CNN on digits; the
coordinator's own link is unshaped. Both arms use the same coordinator
settings (round timeout, quorum, late-update policy) and differ only in
the planner:

* baseline: ``StaticPlanner`` — every live node every round, raw updates,
  the configured batch size and local steps;
* adaptive: ``AdaptivePlanner`` — per-link selection, codec, local steps
  and batch split.

Both arms train the same number of rounds (no early stop), so each ends
well past the target. Reported in ``extra_info`` (and printed): time to
97 % test accuracy for each arm and their ratio; final accuracy, the mean
of the last ``FINAL_EVALS`` evaluations (one evaluation of 360 test images
moves in steps of 0.28 points and with the round's noise, so a single
final reading would compare noise); bytes per node in each direction; and
the planner's overhead as a share of round time. Under
``--benchmark-disable`` a three-node, three-round version runs as a smoke test.
"""

from __future__ import annotations

import asyncio
import statistics
from typing import Any

import pytest

from hypergpu.adapt import AdaptivePlanner
from hypergpu.config import load_config
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.events import EventBus
from hypergpu.launch import TrialResult, run_trial
from hypergpu.round import StaticPlanner

# Both arms train every round: the baseline's alone take several minutes.
pytestmark = pytest.mark.timeout(1800)

TARGET = 0.97
FINAL_EVALS = 5

FULL = (
    "nodes.count=10",
    "training.model='cnn'",
    "training.rounds=12",
    "training.target_accuracy=null",
    "training.local_steps=10",
    "training.batch_size=32",
    "training.lr=0.002",
    "network.default_profile='average'",
    "network.node_profiles={0='good', 1='good', 2='good', 7='poor', 8='poor', 9='unstable'}",
    "network.events=[{node=2, profile='poor', at_round=3}]",
    "coordinator.round_timeout_s=30",
    "coordinator.quorum=0.7",
)
SMOKE = (
    "nodes.count=3",
    "training.model='mlp'",
    "training.hidden_sizes=[32]",
    "training.rounds=3",
    "training.local_steps=5",
    "network.node_profiles={0='good', 1='average', 2='poor'}",
    "network.events=[{node=1, profile='poor', at_round=2}]",
    "coordinator.round_timeout_s=4",
    "coordinator.quorum=0.6",
)
COMMON = ("data.dataset='digits'", "data.cache_dir=null", "coordinator.checkpoint_every=0",
          "coordinator.heartbeat_interval_s=1.0")


def _config(full: bool, tmp: str, adaptive: bool) -> HyperGPUConfig:
    return load_config(None, [*COMMON, *(FULL if full else SMOKE), f"coordinator.checkpoint_dir='{tmp}/ckpt'",
                              f"adapt.enabled={'true' if adaptive else 'false'}"])


def _per_node(result: TrialResult) -> dict[str, float]:
    down = [n["bytes_sent"] for n in result.nodes]  # coordinator -> node (parameters)
    up = [n["bytes_received"] for n in result.nodes]  # node -> coordinator (updates)
    return {"down_mb_mean": statistics.fmean(down) / 1e6, "up_mb_mean": statistics.fmean(up) / 1e6,
            "up_mb_max": max(up) / 1e6}


def _arms(full: bool, tmp: str) -> dict[str, Any]:
    base_cfg = _config(full, tmp, adaptive=False)
    adapt_cfg = _config(full, tmp, adaptive=True)
    baseline = asyncio.run(run_trial(base_cfg, StaticPlanner(base_cfg, codec="raw")))
    events = EventBus()
    planner = AdaptivePlanner(adapt_cfg, publish=events.publish)
    adaptive = asyncio.run(run_trial(adapt_cfg, planner, events=events))
    return {"baseline": baseline, "adaptive": adaptive, "planner": planner}


def test_adaptive_vs_synchronous_baseline(benchmark, tmp_path) -> None:
    full = not benchmark.disabled
    out: dict[str, Any] = {}

    def both() -> None:
        out.update(_arms(full, str(tmp_path)))

    benchmark.pedantic(both, rounds=1, iterations=1)
    base: TrialResult = out["baseline"]
    adapt: TrialResult = out["adaptive"]
    planner: AdaptivePlanner = out["planner"]
    assert base.rounds and adapt.rounds
    assert base.accuracy is not None and adapt.accuracy is not None

    t_base, t_adapt = base.time_to(TARGET), adapt.time_to(TARGET)
    base_final, adapt_final = base.final_accuracy(FINAL_EVALS), adapt.final_accuracy(FINAL_EVALS)
    assert base_final is not None and adapt_final is not None
    info: dict[str, Any] = {
        "full_run": full,
        "target_accuracy": TARGET,
        "baseline_time_to_target_s": t_base,
        "adaptive_time_to_target_s": t_adapt,
        # A run that never got there counts as its whole wall time (a lower bound).
        "speedup": ((t_base or base.rounds[-1].t_s) / t_adapt) if t_adapt else None,
        "baseline_reached": t_base is not None,
        "baseline_final_accuracy": base_final,
        "adaptive_final_accuracy": adapt_final,
        "accuracy_gap_points": 100 * (adapt_final - base_final),
        "baseline_last_accuracy": base.accuracy,
        "adaptive_last_accuracy": adapt.accuracy,
        "baseline_rounds": len(base.rounds),
        "adaptive_rounds": len(adapt.rounds),
        "baseline_mean_round_s": statistics.fmean(r.duration_s for r in base.rounds),
        "adaptive_mean_round_s": statistics.fmean(r.duration_s for r in adapt.rounds),
        "adaptation_overhead": planner.overhead,
        "adaptive_decisions": len(planner.decisions),
        **{f"baseline_{k}": v for k, v in _per_node(base).items()},
        **{f"adaptive_{k}": v for k, v in _per_node(adapt).items()},
    }
    benchmark.extra_info.update(info)
    print("\nadaptive vs synchronous baseline:")
    for key, value in info.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    for label, result in (("baseline", base), ("adaptive", adapt)):
        for r in result.rounds:
            acc = f"{r.accuracy:.3f}" if r.accuracy is not None else "-"
            print(f"  {label} round {r.round}: t={r.t_s:.1f}s dur={r.duration_s:.1f}s acc={acc} "
                  f"reported={r.reported}")
    kinds: dict[str, int] = {}
    for d in planner.decisions:
        kinds[d["knob"]] = kinds.get(d["knob"], 0) + 1
    print(f"  adaptive decisions by kind: {kinds}")
    for d in list(planner.decisions):
        if d["knob"] in ("selection", "standing", "rollback"):
            print(f"    r{d['round']} node {d['node']} {d['knob']}: {d['old']} -> {d['new']} ({d['reason']})")
    # The planner's own work must be small next to the rounds it plans.
    assert planner.overhead < 0.05
