"""What a finished (or stopped) run achieved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hypergpu.coordinator.coordinator import Coordinator
    from hypergpu.round import RoundRecord


@dataclass
class Summary:
    """What a finished (or stopped) run achieved."""

    rounds: int
    accuracy: float | None
    loss: float | None
    wall_s: float
    samples: int
    reached_target: bool
    stopped_early: bool
    nodes: list[dict[str, Any]] = field(default_factory=list)
    refusals: dict[str, int] = field(default_factory=dict)
    task: str = "classification"
    perplexity: float | None = None  # language models
    bits_per_byte: float | None = None  # language models
    #: share of the training set trained on in each finished epoch
    coverage: list[float] = field(default_factory=list)

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.wall_s if self.wall_s > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "samples_per_s": self.samples_per_s}


def run_status(coord: Coordinator) -> dict[str, Any]:
    """Where a coordinator's run stands, JSON-ready (``Coordinator.status``)."""
    return {
        "round": coord.round,
        "rounds": coord.config.training.rounds,
        "paused": coord.paused,
        "stopping": coord.stopping,
        "model_version": coord.model.version,
        "model_hash": coord.model.hash,
        "nodes": len(coord.registry.alive()),
        "samples": coord.samples,
        "last": coord.history[-1].as_dict() if coord.history else {},
        "task": coord.task.name,
        "data": coord.data.describe(),
        "epoch": coord.work.sampler.epoch,
        "refusals": dict(coord.refusals),
        # an adaptive planner's links, standings, settings and decisions
        "planner": coord.planner.status(),
    }


def run_summary(coord: Coordinator, last: RoundRecord | None, reached: bool, wall_s: float) -> Summary:
    """What ``coord``'s run achieved; ``last`` is its last evaluated round."""
    return Summary(
        rounds=coord.round,
        accuracy=last.test_accuracy if last else None,
        loss=last.test_loss if last else None,
        perplexity=last.test_perplexity if last else None,
        bits_per_byte=last.test_bits_per_byte if last else None,
        task=coord.task.name,
        coverage=[c.fraction for c in coord.work.sampler.coverage() if c.complete],
        wall_s=wall_s,
        samples=coord.samples,
        reached_target=reached,
        stopped_early=coord.stopping,
        # each node with its updates' effects on the held-out loss (coordinator/effects.py)
        nodes=[{**n.as_dict(), **coord.effects.of_node(n.node_id)} for n in coord.registry.all()],
        refusals=dict(coord.refusals),
    )
