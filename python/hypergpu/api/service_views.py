"""What the control plane shows of the service: the run's status and the
node grid, read from the current coordinator when asked."""

from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from hypergpu.api.sessions import Session
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator.effects import EffectTotals
from hypergpu.errors import UnknownNodeError

if TYPE_CHECKING:
    from hypergpu.coordinator import Coordinator, NodeInfo

#: Link latency samples (and per-node rounds) kept per node for the dashboard.
LATENCY_HISTORY = 120


class ServiceViews:
    """The read side of :class:`~hypergpu.api.service.TrainingService` (mixed into it)."""

    config: HyperGPUConfig
    coordinator: Coordinator | None
    chain: Any
    sessions: list[Session]
    latency: dict[int, deque[tuple[int, float]]]
    decisions: dict[int, deque[dict[str, Any]]]
    assignments: dict[int, dict[str, Any]]

    @property
    def current(self) -> Session | None:
        return self.sessions[-1] if self.sessions else None

    @property
    def running(self) -> bool:
        return self.current is not None and self.current.active

    def _require_coordinator(self) -> Coordinator:
        if self.coordinator is None:
            raise UnknownNodeError("no training has run yet, so no node is known")
        return self.coordinator

    def metrics(self, session: Session | None = None, *, after: int | None = None,
                limit: int | None = None) -> list[dict[str, Any]]:
        """A session's per-round points (default: the current one's), oldest first: those of
        rounds after ``after``, at most ``limit`` (the file is paged, never held whole)."""
        session = session or self.current
        return list(session.metrics.page(after, limit)) if session is not None else []

    def status(self) -> dict[str, Any]:
        session = self.current
        coord = self.coordinator
        cfg = session.config if session else self.config
        base: dict[str, Any] = {
            "state": session.state if session else "idle",
            "session": session.id if session else None,
            "label": session.label if session else None,
            "task": cfg.task,
            "rounds": cfg.training.rounds,
            "round": 0, "epoch": 0, "progress": 0.0, "eta_s": None, "elapsed_s": 0.0,
            "train_loss": None, "test_loss": None, "test_accuracy": None,
            "test_perplexity": None, "test_bits_per_byte": None, "samples": 0,
            "nodes_alive": 0, "nodes_total": 0, "model_version": None, "paused": False,
            "chain_enabled": self.chain is not None,
        }
        if session is None or coord is None:
            return base
        st = coord.status()
        # Running figures of the session's points: a status costs the same at round 10 and 10 million.
        points = session.metrics
        last, per_round = points.last, points.mean_duration_s
        done = st["round"] if session.active else (last["round"] if last else 0)
        rounds = st["rounds"]
        eta = None
        if session.active and last is not None and per_round is not None:
            eta = max(0.0, (rounds - last["round"]) * per_round)
        # Every evaluation has a held-out loss, whatever the task; accuracy is a classifier's figure.
        last_eval = points.last_eval
        samples_per_epoch = max(1, sum(len(s) for s in coord.data.manager.shards))
        base.update(
            round=done,
            # An epoch is one pass over the training data, across all nodes.
            epoch=st["samples"] // samples_per_epoch,
            progress=min(1.0, done / rounds) if rounds else 0.0,
            eta_s=eta,
            elapsed_s=(session.finished_at or time.time()) - session.started_at,
            train_loss=last["train_loss"] if last else None,
            test_loss=last_eval["test_loss"] if last_eval else None,
            test_accuracy=last_eval["test_accuracy"] if last_eval else None,
            test_perplexity=last_eval["test_perplexity"] if last_eval else None,
            test_bits_per_byte=last_eval["test_bits_per_byte"] if last_eval else None,
            samples=st["samples"],
            nodes_alive=st["nodes"],
            nodes_total=len(coord.registry),
            model_version=st["model_version"],
            paused=st["paused"],
        )
        return base

    def node_view(self, node: NodeInfo) -> dict[str, Any]:
        coord = self.coordinator
        d: dict[str, Any] = dict(node.as_dict())
        finished = node.rounds_ok + node.rounds_missed
        d["success_rate"] = node.rounds_ok / finished if finished else None
        stats = coord.link_stats(node.node_id) if coord is not None else None
        d["rtt_ms"] = float(stats.srtt_ms) if stats is not None else None
        d["lost_packets"] = int(stats.lost_packets) if stats is not None else None
        d["connected"] = stats is not None
        d["excluded"] = coord.excluded.get(node.node_id) if coord is not None else None
        d["assignment"] = self.assignments.get(node.node_id)
        d["quality"] = node_quality(d["success_rate"], d["rtt_ms"])
        d["profile"] = self.config.network.profile_of(node.node_id) if node.node_id < self.config.nodes.count else None
        # its updates' effects on the held-out loss (coordinator/effects.py): what the rewards are judged on
        d.update(coord.effects.of_node(node.node_id) if coord is not None else EffectTotals().as_dict())
        return d

    def nodes(self) -> list[dict[str, Any]]:
        coord = self.coordinator
        if coord is None:
            return []
        return [self.node_view(n) for n in sorted(coord.registry.all(), key=lambda n: n.node_id)]

    def node(self, node_id: int) -> dict[str, Any]:
        coord = self._require_coordinator()
        d = self.node_view(coord.registry.get(node_id))
        # Copies first (list() of a deque is atomic): the event loop appends to these windows
        # while this runs on a request thread, and iterating a deque that changes raises.
        latency = list(self.latency.get(node_id, ()))
        d["latency_history"] = [{"round": r, "rtt_ms": ms} for r, ms in latency]
        d["decisions"] = list(self.decisions.get(node_id, ()))
        rounds: list[dict[str, Any]] = []
        for rec in reversed(list(coord.history)):
            if len(rounds) == LATENCY_HISTORY:
                break
            if node_id in rec.answers:
                rounds.append({"round": rec.round, **rec.answers[node_id].as_dict()})
        d["rounds"] = rounds[::-1]
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
