"""The training lifecycle behind the control plane.

A :class:`TrainingService` holds the configuration of the next run, starts a
run (the local-run harness, :func:`hypergpu.launch.local_run`: a
coordinator in this asyncio loop plus local node processes and, when
settlement is on, the chain recorder), relays stop/pause/resume and node
exclusions to it, and keeps every run of this process as a :class:`Session`
with its metrics, so finished runs can be compared with the current one.
The read side (status, node grid) is :class:`~hypergpu.api.service_views.ServiceViews`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import tempfile
import time
from collections import defaultdict, deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hypergpu.api.service_views import LATENCY_HISTORY, ServiceViews
from hypergpu.api.sessions import MetricLog, Session, metric_point, planner_label
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import ConfigError, ConflictError, NotRunningError, UnknownSessionError
from hypergpu.events import EventBus

if TYPE_CHECKING:  # the coordinator pulls in torch: imported when the first run starts
    from hypergpu.coordinator import Coordinator
    from hypergpu.launch import LocalRun
    from hypergpu.round import Planner, RoundRecord

log = logging.getLogger("hypergpu.api")

#: Decisions (exclusions, planner choices) kept per node.
DECISION_HISTORY = 50


class TrainingService(ServiceViews):
    """Owns the configuration and the runs; one run at a time."""

    def __init__(
        self,
        config: HyperGPUConfig,
        *,
        events: EventBus | None = None,
        log_dir: Path | None = None,
        planner_factory: Callable[[HyperGPUConfig], Planner] | None = None,
        max_local_nodes: int = 64,
    ):
        self.config = config
        self.events = events or EventBus(config.coordinator.event_window)
        self.log_dir = log_dir
        self.planner_factory = planner_factory
        self.max_local_nodes = max_local_nodes
        self.sessions: list[Session] = []
        self.coordinator: Coordinator | None = None
        #: A chain recorder (``status()``, ``contributions()``, ``transactions()``) when settlement is on.
        self.chain: Any = None
        #: Called with each round record after the service's own bookkeeping (e.g. Prometheus).
        self.round_listeners: list[Callable[[RoundRecord], None]] = []
        self.latency: dict[int, deque[tuple[int, float]]] = defaultdict(lambda: deque(maxlen=LATENCY_HISTORY))
        self.decisions: dict[int, deque[dict[str, Any]]] = defaultdict(lambda: deque(maxlen=DECISION_HISTORY))
        self.assignments: dict[int, dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None
        # Where sessions spill their per-round points (removed when the service is collected or
        # the process exits): memory keeps only api.metrics_window of them per session.
        self._spill: tempfile.TemporaryDirectory[str] | None = None

    # --- state ----------------------------------------------------------------

    def session(self, session_id: int) -> Session:
        for s in self.sessions:
            if s.id == session_id:
                return s
        raise UnknownSessionError(f"unknown session id {session_id}")

    def _spill_dir(self) -> Path:
        if self._spill is None:
            self._spill = tempfile.TemporaryDirectory(prefix="hypergpu-metrics-")
        return Path(self._spill.name)

    def set_config(self, config: HyperGPUConfig) -> None:
        """Replace the configuration the next run uses (the current run keeps its own)."""
        self.config = config

    # --- lifecycle ------------------------------------------------------------

    async def start(self, config: HyperGPUConfig | None = None, *, resume: bool = False) -> Session:
        """Start a run of ``config`` (default: the held configuration); ``resume`` continues
        from its newest valid checkpoint."""
        if self.running:
            raise ConflictError("training is already running; stop it first")
        cfg = config or self.config
        if cfg.nodes.count > self.max_local_nodes:
            raise ConfigError(
                f"nodes.count: {cfg.nodes.count} local node processes is more than this server starts "
                f"(at most {self.max_local_nodes})"
            )
        # The first import pulls in torch (seconds): keep it off the event loop.
        await asyncio.to_thread(importlib.import_module, "hypergpu.launch")
        from hypergpu.launch import local_run, planner_for

        if self._task is not None and not self._task.done():
            await asyncio.shield(self._task)  # the last run is still being torn down
        self.config = cfg
        planner = self.planner_factory(cfg) if self.planner_factory else planner_for(cfg, self.events.publish)
        session = Session(len(self.sessions) + 1, planner_label(planner), cfg)
        session.metrics = MetricLog(self._spill_dir() / f"session-{session.id}.jsonl", cfg.api.metrics_window)
        self.sessions.append(session)
        self.latency.clear()
        self.decisions.clear()
        self.assignments.clear()
        if self.chain is not None:  # the last run's recorder, kept readable until now
            await asyncio.to_thread(self.chain.close)
            self.chain = None
        harness = contextlib.AsyncExitStack()
        try:
            run = await harness.enter_async_context(local_run(
                cfg, log_dir=self.log_dir, events=self.events, planner=planner, observers=[self._on_round],
                keep_recorder=True, resume=resume,
            ))
        except BaseException as exc:  # the session shows why; the caller gets the error
            session.state, session.error, session.finished_at = "failed", str(exc), time.time()
            raise
        self.coordinator, self.chain = run.coordinator, run.recorder
        session.state = "running"
        self.events.publish("training", type="session-started", session=session.id, label=session.label)
        self._task = asyncio.ensure_future(self._run(session, run, harness))
        self._watch = asyncio.ensure_future(self._watch_decisions())
        return session

    async def _run(self, session: Session, run: LocalRun, harness: contextlib.AsyncExitStack) -> None:
        try:
            try:
                session.finished(await run.train())
            except Exception as exc:  # the run failed; the service stays up for the next one
                log.exception("training run %d failed", session.id)
                session.state, session.error = "failed", str(exc)
                self.events.publish("alert", level="error", message=f"training failed: {exc}")
            finally:
                # Closes the coordinator, stops the nodes, settles the last epoch on chain
                # (the recorder stays readable for the chain panel).
                await harness.aclose()
        except Exception as exc:  # tearing the run down failed; the service stays up for the next one
            log.exception("cleaning up training run %d failed", session.id)
            self.events.publish("alert", level="error", message=f"stopping the run failed: {exc}")
        finally:
            if self._watch is not None:
                self._watch.cancel()
            session.finished_at = time.time()
            self.events.publish("training", type="session-ended", session=session.id, state=session.state)

    async def wait(self) -> Session | None:
        """Wait for the current run to end."""
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.current

    def stop(self) -> Session:
        session = self._require_running()
        session.state = "stopping"
        self._require_coordinator().request_stop()
        return session

    def pause(self) -> Session:
        session = self._require_running()
        if session.state == "paused":
            raise ConflictError("training is already paused")
        if session.state == "stopping":
            raise ConflictError("training is stopping")
        self._require_coordinator().pause()
        session.state = "paused"
        return session

    def resume(self) -> Session:
        session = self._require_running()
        if session.state != "paused":
            raise ConflictError("training is not paused")
        self._require_coordinator().resume()
        session.state = "running"
        return session

    def exclude(self, node_id: int, reason: str) -> None:
        coord = self._require_coordinator()
        coord.registry.get(node_id)
        others = [n.node_id for n in coord.registry.alive() if n.node_id != node_id and n.node_id not in coord.excluded]
        if node_id not in coord.excluded and not others:
            raise ConflictError(f"node {node_id} is the last node taking part; excluding it would stall training")
        coord.exclude(node_id, reason)

    def include(self, node_id: int) -> None:
        self._require_coordinator().include(node_id)

    def shutdown_soon(self) -> None:
        """Ask a run in progress to stop (safe from a signal handler; no error when idle)."""
        if self.running and self.current is not None and self.current.state != "stopping":
            self.stop()

    async def shutdown(self) -> None:
        """Stop a run in progress and wait for it (server shutdown)."""
        if self.running:
            self.stop()
        await self.wait()  # the run's own failures were handled (and published) in _run
        if self.chain is not None:
            await asyncio.to_thread(self.chain.close)
            self.chain = None
        if self._spill is not None:  # the sessions keep their latest points in memory
            self._spill.cleanup()
            self._spill = None

    def _require_running(self) -> Session:
        session = self.current
        if session is None or not session.active:
            raise NotRunningError("no training is running")
        return session

    # --- observation ----------------------------------------------------------

    def _on_round(self, coord: Coordinator, record: RoundRecord) -> None:
        session = self.current
        if session is not None:
            session.metrics.append(metric_point(record))
        for node_id, assignment in record.assignments.items():
            self.assignments[node_id] = assignment.as_meta()
        for node in coord.registry.all():
            stats = coord.link_stats(node.node_id)
            if stats is not None:
                self.latency[node.node_id].append((record.round, float(stats.srtt_ms)))
        for listener in self.round_listeners:
            listener(record)

    async def _watch_decisions(self) -> None:
        async for event in self.events.subscribe(self.events.last_seq):
            if event.kind == "decision" and isinstance(event.data.get("node"), int):
                self.decisions[event.data["node"]].append({"time": event.time, **event.data})
