"""The tracker protocol, the metrics of one round, and the observer that logs them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.round import RoundRecord

log = logging.getLogger("hypergpu.tracking")


class Tracker(Protocol):
    """One experiment tracker: the configuration once, scalars per step, then finish."""

    name: str

    def log_config(self, config: Mapping[str, Any]) -> None:
        """Records the run's configuration (nested sections as they are in the TOML)."""

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        """Records ``metrics`` at ``step`` (the round)."""

    def finish(self) -> None:
        """Flushes and closes; the tracker is not used again."""


def round_metrics(record: RoundRecord, per_node: bool = True) -> dict[str, float]:
    """The scalars of one finished round: its loss and held-out figures, who took part,
    what the aggregation did, and bytes each way (with ``per_node``, each node's too)."""
    answers = list(record.answers.values())
    metrics: dict[str, float] = {
        "round/applied": float(record.applied),
        "round/duration_s": record.duration_s,
        "round/samples": float(record.samples),
        "round/participants": float(len(record.participants)),
        "round/reported": float(len(record.reported)),
        "round/missing": float(len(record.missing)),
        "round/late": float(len(record.late)),
        "round/clipped": float(record.clipped),
        "round/dropped": float(record.dropped),
        "round/model_version": float(record.model_version),
        "bytes/updates": float(sum(a.update_bytes for a in answers)),
        "bytes/params": float(sum(a.params_bytes or 0 for a in answers)),
    }
    for key, value in (("train/loss", record.train_loss), ("eval/loss", record.test_loss),
                       ("eval/accuracy", record.test_accuracy), ("eval/perplexity", record.test_perplexity),
                       ("eval/bits_per_byte", record.test_bits_per_byte), ("round/clip_norm", record.clip_norm)):
        if value is not None:
            metrics[key] = float(value)
    if per_node:
        for answer in answers:
            node = f"node/{answer.node_id}"
            if answer.loss is not None:
                metrics[f"{node}/loss"] = float(answer.loss)
            metrics[f"{node}/compute_s"] = answer.compute_s
            metrics[f"{node}/update_bytes"] = float(answer.update_bytes)
    return metrics


class RoundTracking:
    """A round observer that logs every round's metrics to each tracker.

    One tracker failing does not keep the round from the others; the first
    error is raised after all were tried (the coordinator logs it and counts it
    as an observer fault).
    """

    def __init__(self, trackers: Sequence[Tracker], per_node: bool = True):
        self.trackers = list(trackers)
        self.per_node = per_node

    async def __call__(self, _coordinator: object, record: RoundRecord) -> None:
        # Off the event loop: a tracker may write files or talk to its service.
        await asyncio.to_thread(self.log_round, record)

    def log_round(self, record: RoundRecord) -> None:
        self._each("log", round_metrics(record, self.per_node), record.round)

    def finish(self) -> None:
        self._each("finish")

    def _each(self, method: str, *args: Any) -> None:
        first: Exception | None = None
        for tracker in self.trackers:
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # one tracker's failure must not starve the others
                log.exception("tracker %s: %s failed", tracker.name, method)
                first = first or exc
        if first is not None:
            raise first


def shareable_config(config: HyperGPUConfig) -> dict[str, Any]:
    """The configuration as trackers may keep it: the API's bearer token left out
    (chain keys never are in it: the chain section refuses secrets)."""
    data = config.model_dump(mode="json")
    if data["api"].get("token") is not None:
        data["api"]["token"] = "<redacted>"
    return data


def open_trackers(config: HyperGPUConfig) -> RoundTracking | None:
    """The configured trackers, started and given the configuration; None when
    ``tracking.backends`` is empty. A tracker that cannot start closes those
    already started and raises."""
    settings = config.tracking
    if not settings.backends:
        return None
    from hypergpu.tracking.backends import BACKENDS

    run_name = settings.run_name or time.strftime("hypergpu-%Y%m%d-%H%M%S")
    started: list[Tracker] = []
    try:
        for name in dict.fromkeys(settings.backends):  # each once, in the order given
            tracker: Tracker = BACKENDS[name](settings, run_name)
            started.append(tracker)
            tracker.log_config(shareable_config(config))
    except BaseException:
        with contextlib.suppress(Exception):  # the error that stopped the start is the one to see
            RoundTracking(started).finish()
        raise
    return RoundTracking(started, settings.per_node)
