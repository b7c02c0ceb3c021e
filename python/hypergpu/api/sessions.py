"""The runs a :class:`~hypergpu.api.service.TrainingService` has started,
and the per-round figures each keeps for the charts and the CSV export."""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

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


class MetricLog:
    """A session's per-round points: every one in a JSON-lines file, the latest
    ``window`` in memory, and the running figures the status needs (count, mean
    round time, the last evaluation) — so a run of any length holds the same
    memory. Without a file (a session built by hand, or once the service that
    kept it has shut down) only the window is kept.
    """

    def __init__(self, path: Path | None = None, window: int = 1000):
        self.path = path
        self.recent: deque[dict[str, Any]] = deque(maxlen=max(1, window))
        self.count = 0
        #: the latest point with a held-out loss (every evaluation has one, whatever the task)
        self.last_eval: dict[str, Any] | None = None
        self._seconds = 0.0
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("", encoding="utf-8")

    @classmethod
    def of(cls, points: Iterable[dict[str, Any]]) -> MetricLog:
        """A log in memory holding ``points``."""
        held = list(points)
        log = cls(window=max(1, len(held)))
        for point in held:
            log.append(point)
        return log

    def append(self, point: dict[str, Any]) -> None:
        if self.path is not None and self.path.parent.exists():
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(point) + "\n")
        self.recent.append(point)
        self.count += 1
        self._seconds += point.get("duration_s") or 0.0
        if point.get("test_loss") is not None:
            self.last_eval = point

    def __len__(self) -> int:
        return self.count

    @property
    def last(self) -> dict[str, Any] | None:
        return self.recent[-1] if self.recent else None

    @property
    def mean_duration_s(self) -> float | None:
        return self._seconds / self.count if self.count else None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Every point, oldest first (read back from the file once the window has moved on)."""
        return self.page()

    def page(self, after: int | None = None, limit: int | None = None) -> Iterator[dict[str, Any]]:
        """The points of rounds after ``after`` (every one when None), oldest first, at most ``limit``."""
        recent = list(self.recent)  # a copy: the event loop appends while a request thread reads
        if self.path is None or not self.path.exists() or self.count == len(recent) or (
                after is not None and recent and after >= recent[0]["round"] - 1):
            points: Iterable[dict[str, Any]] = recent
        else:
            points = self._read(after)
        taken = 0
        for point in points:
            if limit is not None and taken >= limit:
                return
            if after is None or point["round"] > after:
                taken += 1
                yield point

    def _read(self, after: int | None) -> Iterator[dict[str, Any]]:
        assert self.path is not None
        with self.path.open("rb") as fh:
            if after is not None:
                fh.seek(_first_line_after(fh, after))
            for line in fh:
                if line.endswith(b"\n"):  # a line still being written is left for the next read
                    yield json.loads(line)


def _first_line_after(fh: BinaryIO, after: int) -> int:
    """The offset of the first line whose round is past ``after``, by bisection (a session's
    rounds only grow): a page deep in a long run costs a few reads, not the file."""
    fh.seek(0, 2)
    lo, hi = 0, fh.tell()  # lines starting before lo are at or before `after`; from hi on, past it
    while lo < hi:
        mid = (lo + hi) // 2
        start = _line_start(fh, mid)
        line = fh.readline() if start < hi else b""
        if not line.endswith(b"\n") or json.loads(line)["round"] > after:
            hi = mid
        else:
            lo = start + len(line)
    return lo


def _line_start(fh: BinaryIO, offset: int) -> int:
    """The first line start at or after ``offset``; leaves the file there."""
    if offset == 0:
        fh.seek(0)
    else:
        fh.seek(offset - 1)
        fh.readline()  # the rest of the line holding offset - 1 (just its newline if offset starts one)
    return fh.tell()


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
    metric_log: MetricLog = field(default_factory=MetricLog)

    @property
    def metrics(self) -> MetricLog:
        """The run's per-round points (:class:`MetricLog`)."""
        return self.metric_log

    @metrics.setter
    def metrics(self, points: Iterable[dict[str, Any]]) -> None:
        self.metric_log = points if isinstance(points, MetricLog) else MetricLog.of(points)

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
