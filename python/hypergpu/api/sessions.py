"""The runs a :class:`~hypergpu.api.service.TrainingService` has started,
and the per-round figures each keeps for the charts and the CSV export."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from hypergpu.config.schema import HyperGPUConfig

if TYPE_CHECKING:  # the coordinator pulls in torch: `import hypergpu.api` should not
    from hypergpu.coordinator import Summary
    from hypergpu.round import Planner, RoundRecord


def planner_label(planner: Planner) -> str:
    """A planner's display name ('baseline', 'adaptive')."""
    return planner.label


def metric_point(record: RoundRecord) -> dict[str, Any]:
    """The part of a round record the charts and the CSV export need."""
    return {
        "round": record.round,
        "time": time.time(),
        "applied": record.applied,
        "train_loss": record.train_loss,
        "test_loss": record.test_loss,
        "test_accuracy": record.test_accuracy,
        "test_perplexity": record.test_perplexity,
        "test_bits_per_byte": record.test_bits_per_byte,
        "samples": record.samples,
        "duration_s": record.duration_s,
        "participants": len(record.participants),
        "reported": len(record.reported),
    }


@dataclass
class Session:
    """One training run started by this service."""

    id: int
    label: str
    config: HyperGPUConfig
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None
    state: str = "starting"  # starting, running, paused, stopping, finished, stopped, failed
    error: str | None = None
    summary: dict[str, Any] | None = None
    result: Summary | None = None  # the coordinator's Summary once the run ended
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def task(self) -> str:
        """'classification' or 'lm': which figures its points carry and the dashboard plots."""
        return self.config.task

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "paused", "stopping")

    def finished(self, summary: Summary) -> None:
        """Keep the run's result; its state says whether it ran to the end."""
        self.summary = {
            "rounds": summary.rounds,
            "accuracy": summary.accuracy,
            "loss": summary.loss,
            "perplexity": summary.perplexity,
            "wall_s": summary.wall_s,
            "samples": summary.samples,
            "samples_per_s": summary.samples_per_s,
            "reached_target": summary.reached_target,
            "stopped_early": summary.stopped_early,
        }
        self.result = summary
        self.state = "stopped" if summary.stopped_early else "finished"

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
            "task": self.task,
            "state": self.state,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "rounds": self.config.training.rounds,
            "nodes": self.config.nodes.count,
            "dataset": self.config.data.dataset,
            "model": self.config.training.model,
            "error": self.error,
            "summary": self.summary,
        }
