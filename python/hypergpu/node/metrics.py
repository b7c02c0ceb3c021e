"""Rolling-window metrics of a node: training and communication figures."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

#: The series a node keeps; others may be recorded too.
SERIES = (
    "loss",
    "accuracy",
    "forward_s",
    "backward_s",
    "step_s",
    "compute_s",
    "throttle_s",
    "comm_s",
    "retries",
)


@dataclass
class RollingMetrics:
    """The last ``window`` values of each named series, plus lifetime totals."""

    window: int = 100
    _series: dict[str, deque[float]] = field(default_factory=dict, repr=False)
    _totals: dict[str, float] = field(default_factory=dict, repr=False)
    _counts: dict[str, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")

    def record(self, name: str, value: float) -> None:
        series = self._series.get(name)
        if series is None:
            series = self._series[name] = deque(maxlen=self.window)
        series.append(float(value))
        self._totals[name] = self._totals.get(name, 0.0) + float(value)
        self._counts[name] = self._counts.get(name, 0) + 1

    def record_comm(self, seconds: float, retries: int = 0) -> None:
        """One exchange with the coordinator: its duration and how many retries it took."""
        self.record("comm_s", seconds)
        self.record("retries", retries)

    def mean(self, name: str) -> float | None:
        series = self._series.get(name)
        return sum(series) / len(series) if series else None

    def last(self, name: str) -> float | None:
        series = self._series.get(name)
        return series[-1] if series else None

    def total(self, name: str) -> float:
        return self._totals.get(name, 0.0)

    def count(self, name: str) -> int:
        return self._counts.get(name, 0)

    def values(self, name: str) -> list[float]:
        return list(self._series.get(name, ()))

    def snapshot(self) -> dict[str, float]:
        """Window mean of every series, and ``total_retries``."""
        out = {name: sum(s) / len(s) for name, s in self._series.items() if s}
        out["total_retries"] = self.total("retries")
        return out


@dataclass
class UploadMeter:
    """Each update's send -> ack of its receipt, by this node's clock: the coordinator's direct
    measure of this node's uplink (``UpdateMeta.upload_s``), which overlap hides from its own clock."""

    _sending: dict[int, tuple[float, int]] = field(default_factory=dict)  # round -> (send began, bytes)
    last: tuple[float, int] | None = None  # the latest acked upload: (seconds, bytes)

    def began(self, round_id: int, at: float, nbytes: int) -> None:
        self._sending[round_id] = (at, nbytes)

    def acked(self, round_id: int, at: float) -> None:
        sent = self._sending.pop(round_id, None)
        for stale in [r for r in self._sending if r < round_id - 8]:  # never acked: lost with a coordinator life
            del self._sending[stale]
        if sent is not None:
            self.last = (at - sent[0], sent[1])

    def figures(self) -> dict[str, Any]:
        """The latest acked upload as ``UpdateMeta`` fields (None before any)."""
        return {"upload_s": self.last[0] if self.last else None, "upload_bytes": self.last[1] if self.last else None}
