"""The training lifecycle behind the control plane.

A :class:`TrainingService` holds the configuration of the next run, starts a
run (a :class:`~hypergpu.coordinator.Coordinator` in this asyncio loop plus
local node processes), relays stop/pause/resume and node exclusions to it,
and keeps every run of this process as a :class:`Session` with its metrics,
so finished runs can be compared with the current one.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import ConfigError, HyperGPUError, UnknownNodeError
from hypergpu.events import EventBus

log = logging.getLogger("hypergpu.api")

#: Link latency samples kept per node for the dashboard.
LATENCY_HISTORY = 120
#: Decisions (exclusions, planner choices) kept per node.
DECISION_HISTORY = 50


class ConflictError(HyperGPUError):
    """The request does not fit the service's state (e.g. start while running)."""


class NotRunningError(ConflictError):
    """There is no run to act on."""


class UnknownSessionError(LookupError):
    """No session has this id."""


def planner_label(planner: Any) -> str:
    """'baseline' for the static planner; a planner may name itself with ``label``."""
    from hypergpu.coordinator.plan import StaticPlanner

    label = getattr(planner, "label", None)
    if isinstance(label, str) and label:
        return label
    return "baseline" if isinstance(planner, StaticPlanner) else type(planner).__name__.lower()


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
    result: Any = None  # the coordinator's Summary once the run ended
    metrics: list[dict[str, Any]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running", "paused", "stopping")

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "label": self.label,
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


def metric_point(record: dict[str, Any]) -> dict[str, Any]:
    """The part of a round record the charts and the CSV export need."""
    return {
        "round": record["round"],
        "time": time.time(),
        "applied": record.get("applied"),
        "train_loss": record.get("train_loss"),
        "test_loss": record.get("test_loss"),
        "test_accuracy": record.get("test_accuracy"),
        "samples": record.get("samples", 0),
        "duration_s": record.get("duration_s"),
        "participants": len(record.get("participants", ())),
        "reported": len(record.get("reported", ())),
    }


class TrainingService:
    """Owns the configuration and the runs; one run at a time."""

    def __init__(
        self,
        config: HyperGPUConfig,
        *,
        events: EventBus | None = None,
        log_dir: Path | None = None,
        planner_factory: Callable[[HyperGPUConfig], Any] | None = None,
        max_local_nodes: int = 64,
    ):
        self.config = config
        self.events = events or EventBus()
        self.log_dir = log_dir
        self.planner_factory = planner_factory
        self.max_local_nodes = max_local_nodes
        self.sessions: list[Session] = []
        self.coordinator: Any = None
        #: A chain recorder (``status()``, ``contributions()``, ``transactions()``) when settlement is on.
        self.chain: Any = None
        #: Called with each round record after the service's own bookkeeping (e.g. Prometheus).
        self.round_listeners: list[Callable[[dict[str, Any]], None]] = []
        self.latency: dict[int, deque[tuple[int, float]]] = defaultdict(lambda: deque(maxlen=LATENCY_HISTORY))
        self.decisions: dict[int, deque[dict[str, Any]]] = defaultdict(lambda: deque(maxlen=DECISION_HISTORY))
        self.assignments: dict[int, dict[str, Any]] = {}
        self._nodes: Any = None
        self._task: asyncio.Task[None] | None = None
        self._watch: asyncio.Task[None] | None = None

    # --- state ----------------------------------------------------------------

    @property
    def current(self) -> Session | None:
        return self.sessions[-1] if self.sessions else None

    @property
    def running(self) -> bool:
        return self.current is not None and self.current.active

    def session(self, session_id: int) -> Session:
        for s in self.sessions:
            if s.id == session_id:
                return s
        raise UnknownSessionError(f"unknown session id {session_id}")

    def set_config(self, config: HyperGPUConfig) -> None:
        """Replace the configuration the next run uses (the current run keeps its own)."""
        self.config = config

    # --- lifecycle ------------------------------------------------------------

    async def start(self, config: HyperGPUConfig | None = None) -> Session:
        """Start a run of ``config`` (default: the held configuration)."""
        if self.running:
            raise ConflictError("training is already running; stop it first")
        cfg = config or self.config
        if cfg.nodes.count > self.max_local_nodes:
            raise ConfigError(
                f"nodes.count: {cfg.nodes.count} local node processes is more than this server starts "
                f"(at most {self.max_local_nodes})"
            )
        # The first import pulls in torch (seconds): keep it off the event loop.
        await asyncio.to_thread(importlib.import_module, "hypergpu.coordinator")
        from hypergpu.cluster import LocalNodes
        from hypergpu.coordinator import Coordinator

        self.config = cfg
        # The coordinator takes a free port: its join string goes to the nodes we spawn.
        run_cfg = cfg.model_copy(update={"coordinator": cfg.coordinator.model_copy(update={"port": 0})})
        planner = self.planner_factory(run_cfg) if self.planner_factory else None
        coord = await asyncio.to_thread(Coordinator, run_cfg, events=self.events, planner=planner)
        session = Session(len(self.sessions) + 1, planner_label(coord.planner), cfg)
        self.sessions.append(session)
        self.latency.clear()
        self.decisions.clear()
        self.assignments.clear()
        coord.observers.append(self._on_round)
        self.coordinator = coord
        await self._attach_chain(run_cfg, coord)
        try:
            join = await coord.start()
            self._nodes = LocalNodes(run_cfg, join, coord.token, self.log_dir)
            await asyncio.to_thread(self._nodes.start_all)
        except BaseException as exc:
            session.state, session.error, session.finished_at = "failed", str(exc), time.time()
            await coord.close()
            raise
        session.state = "running"
        self.events.publish("training", type="session-started", session=session.id, label=session.label)
        self._task = asyncio.ensure_future(self._run(session))
        self._watch = asyncio.ensure_future(self._watch_decisions())
        return session

    async def _run(self, session: Session) -> None:
        coord = self.coordinator
        try:
            summary = await coord.run()
        except Exception as exc:  # the run failed; the service stays up for the next one
            log.exception("training run %d failed", session.id)
            session.state, session.error = "failed", str(exc)
            self.events.publish("alert", level="error", message=f"training failed: {exc}")
        else:
            session.summary = {
                "rounds": summary.rounds,
                "accuracy": summary.accuracy,
                "loss": summary.loss,
                "wall_s": summary.wall_s,
                "samples": summary.samples,
                "samples_per_s": summary.samples_per_s,
                "reached_target": summary.reached_target,
                "stopped_early": summary.stopped_early,
            }
            session.result = summary
            session.state = "stopped" if summary.stopped_early else "finished"
        finally:
            if self.chain is not None and session.result is not None:
                # Settle the last epoch; the recorder stays readable for the chain panel.
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self.chain.finish, coord, complete=not session.result.stopped_early)
            with contextlib.suppress(Exception):
                await coord.close()
            if self._nodes is not None:
                await asyncio.to_thread(self._nodes.stop)
            if self._watch is not None:
                self._watch.cancel()
            session.finished_at = time.time()
            self.events.publish("training", type="session-ended", session=session.id, state=session.state)

    async def _attach_chain(self, cfg: HyperGPUConfig, coord: Any) -> None:
        """Record contributions on chain for this run when ``rewards.enabled``."""
        if self.chain is not None:
            await asyncio.to_thread(self.chain.close)
            self.chain = None
        if not cfg.rewards.enabled:
            return
        from hypergpu.chain.recorder import ChainRecorder

        recorder = await asyncio.to_thread(ChainRecorder(cfg).start, coord)
        coord.observers.append(recorder)
        self.chain = recorder

    async def wait(self) -> Session | None:
        """Wait for the current run to end."""
        if self._task is not None:
            await asyncio.shield(self._task)
        return self.current

    def stop(self) -> Session:
        session = self._require_running()
        session.state = "stopping"
        self.coordinator.request_stop()
        return session

    def pause(self) -> Session:
        session = self._require_running()
        if session.state == "paused":
            raise ConflictError("training is already paused")
        if session.state == "stopping":
            raise ConflictError("training is stopping")
        self.coordinator.pause()
        session.state = "paused"
        return session

    def resume(self) -> Session:
        session = self._require_running()
        if session.state != "paused":
            raise ConflictError("training is not paused")
        self.coordinator.resume()
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
        with contextlib.suppress(Exception):
            await self.wait()
        if self.chain is not None:
            await asyncio.to_thread(self.chain.close)
            self.chain = None

    def _require_running(self) -> Session:
        session = self.current
        if session is None or not session.active:
            raise NotRunningError("no training is running")
        return session

    def _require_coordinator(self) -> Any:
        if self.coordinator is None:
            raise UnknownNodeError("no training has run yet, so no node is known")
        return self.coordinator

    # --- observation ----------------------------------------------------------

    def _on_round(self, coord: Any, record: dict[str, Any]) -> None:
        session = self.current
        if session is not None:
            session.metrics.append(metric_point(record))
        for node_id_text, assignment in record.get("assignments", {}).items():
            self.assignments[int(node_id_text)] = assignment
        for node in coord.registry.all():
            stats = coord.link_stats(node.node_id)
            if stats and stats.get("srtt_ms") is not None:
                self.latency[node.node_id].append((record["round"], float(stats["srtt_ms"])))
        for listener in self.round_listeners:
            listener(record)

    async def _watch_decisions(self) -> None:
        async for event in self.events.subscribe(self.events.last_seq):
            if event.kind == "decision" and isinstance(event.data.get("node"), int):
                self.decisions[event.data["node"]].append({"time": event.time, **event.data})

    # --- views ----------------------------------------------------------------

    def metrics(self, session: Session | None = None) -> list[dict[str, Any]]:
        session = session or self.current
        return list(session.metrics) if session is not None else []

    def status(self) -> dict[str, Any]:
        session = self.current
        coord = self.coordinator
        base: dict[str, Any] = {
            "state": session.state if session else "idle",
            "session": session.id if session else None,
            "label": session.label if session else None,
            "rounds": (session.config if session else self.config).training.rounds,
            "round": 0,
            "epoch": 0,
            "progress": 0.0,
            "eta_s": None,
            "elapsed_s": 0.0,
            "train_loss": None,
            "test_loss": None,
            "test_accuracy": None,
            "samples": 0,
            "nodes_alive": 0,
            "nodes_total": 0,
            "model_version": None,
            "paused": False,
            "chain_enabled": self.chain is not None,
        }
        if session is None or coord is None:
            return base
        st = coord.status()
        points = session.metrics
        done = st["round"] if session.active else (points[-1]["round"] if points else 0)
        rounds = st["rounds"]
        elapsed = (session.finished_at or time.time()) - session.started_at
        eta = None
        if session.active and points:
            per_round = sum(p["duration_s"] or 0 for p in points) / len(points)
            eta = max(0.0, (rounds - points[-1]["round"]) * per_round)
        last_eval = next((p for p in reversed(points) if p["test_accuracy"] is not None), None)
        samples_per_epoch = max(1, sum(len(s) for s in coord.data.shards))
        base.update(
            round=done,
            # An epoch is one pass over the training data, across all nodes.
            epoch=st["samples"] // samples_per_epoch,
            progress=min(1.0, done / rounds) if rounds else 0.0,
            eta_s=eta,
            elapsed_s=elapsed,
            train_loss=points[-1]["train_loss"] if points else None,
            test_loss=last_eval["test_loss"] if last_eval else None,
            test_accuracy=last_eval["test_accuracy"] if last_eval else None,
            samples=st["samples"],
            nodes_alive=st["nodes"],
            nodes_total=len(coord.registry),
            model_version=st["model_version"],
            paused=st["paused"],
        )
        return base

    def node_view(self, node: Any) -> dict[str, Any]:
        coord = self.coordinator
        d = dict(node.as_dict())
        finished = node.rounds_ok + node.rounds_missed
        d["success_rate"] = node.rounds_ok / finished if finished else None
        stats = coord.link_stats(node.node_id) if coord is not None else None
        d["rtt_ms"] = float(stats["srtt_ms"]) if stats and stats.get("srtt_ms") is not None else None
        d["lost_packets"] = int(stats.get("lost_packets", 0)) if stats else None
        d["connected"] = stats is not None
        d["excluded"] = coord.excluded.get(node.node_id) if coord is not None else None
        d["assignment"] = self.assignments.get(node.node_id)
        d["quality"] = node_quality(d["success_rate"], d["rtt_ms"])
        d["profile"] = self.config.network.profile_of(node.node_id) if node.node_id < self.config.nodes.count else None
        return d

    def nodes(self) -> list[dict[str, Any]]:
        coord = self.coordinator
        if coord is None:
            return []
        return [self.node_view(n) for n in sorted(coord.registry.all(), key=lambda n: n.node_id)]

    def node(self, node_id: int) -> dict[str, Any]:
        coord = self._require_coordinator()
        d = self.node_view(coord.registry.get(node_id))
        d["latency_history"] = [{"round": r, "rtt_ms": ms} for r, ms in self.latency.get(node_id, ())]
        d["decisions"] = list(self.decisions.get(node_id, ()))
        d["rounds"] = [
            {"round": rec["round"], **rec["nodes"][str(node_id)]}
            for rec in coord.history
            if str(node_id) in rec.get("nodes", {})
        ][-LATENCY_HISTORY:]
        return d


def node_quality(success_rate: float | None, rtt_ms: float | None) -> float | None:
    """A 0..1 health figure for the node grid: reliability, discounted by link latency.

    A node that answers every round on a 20 ms link scores ~0.9; each doubling
    of latency beyond that costs about as much again. None until it has
    finished a round.
    """
    if success_rate is None:
        return None
    latency_factor = 1.0 if rtt_ms is None else 1.0 / (1.0 + rtt_ms / 200.0)
    return round(success_rate * latency_factor, 4)
