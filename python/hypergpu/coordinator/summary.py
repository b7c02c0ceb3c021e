"""What a finished (or stopped) run achieved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
