"""The coordinator's view of its nodes: who they are and how they fare."""

from __future__ import annotations

import enum
import time
from collections import Counter
from dataclasses import dataclass, field

from hypergpu.errors import UnknownNodeError


class NodeStatus(str, enum.Enum):
    ACTIVE = "active"  # connected and answering
    SUSPECT = "suspect"  # missed heartbeats or rounds, not yet given up on
    DEAD = "dead"  # gave up on it; its shard goes to others
    LEFT = "left"  # said goodbye


@dataclass
class NodeInfo:
    node_id: int
    name: str
    device: str = "cpu"
    speed_factor: float = 1.0
    status: NodeStatus = NodeStatus.ACTIVE
    joined_at: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    consecutive_failures: int = 0
    rounds_ok: int = 0
    rounds_missed: int = 0
    updates_accepted: int = 0
    refusals: Counter[str] = field(default_factory=Counter)
    samples: int = 0
    compute_s: float = 0.0
    busy_s: float = 0.0  # in its trainer (compute, data, an emulated slower GPU's sleep), by its clock
    idle_s: float = 0.0  # waiting for work or for the parameters its update builds on, by its clock
    bytes_sent: int = 0
    bytes_received: int = 0
    last_loss: float | None = None
    address: str | None = None  # the key its hello proved (hypergpu.identity)
    payout: str | None = None  # where its rewards go: the address its hello signed

    @property
    def utilisation(self) -> float | None:
        """The share of the wall time its updates covered that it spent training rather
        than waiting on the network, from its first work on: joining, waiting for the run to
        begin and for its first parameters are start-up (None before any update)."""
        wall = self.busy_s + self.idle_s
        return self.busy_s / wall if wall > 0 else None

    def as_dict(self) -> dict[str, object]:
        return {
            "node_id": self.node_id,
            "name": self.name,
            "device": self.device,
            "speed_factor": self.speed_factor,
            "status": self.status.value,
            "consecutive_failures": self.consecutive_failures,
            "rounds_ok": self.rounds_ok,
            "rounds_missed": self.rounds_missed,
            "updates_accepted": self.updates_accepted,
            "refusals": dict(self.refusals),
            "samples": self.samples,
            "compute_s": round(self.compute_s, 3),
            "utilisation": None if (u := self.utilisation) is None else round(u, 4),
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
            "last_loss": self.last_loss,
            "address": self.address,
            "payout": self.payout,
        }


class NodeRegistry:
    """Nodes by id; a node that reconnects under the same name keeps its id.

    A node may ask for an id (a local run's node *i* asks for *i*, so the
    per-node settings in the config refer to it); it gets it unless another
    name holds it already.
    """

    def __init__(self, max_failures: int = 3):
        self.max_failures = max_failures
        self._nodes: dict[int, NodeInfo] = {}
        self._by_name: dict[str, int] = {}

    def join(
        self, name: str, device: str = "cpu", speed_factor: float = 1.0, preferred_id: int | None = None
    ) -> NodeInfo:
        node_id = self._by_name.get(name)
        if node_id is None:
            if preferred_id is not None and preferred_id >= 0 and preferred_id not in self._nodes:
                node_id = preferred_id
            else:
                node_id = max(self._nodes, default=-1) + 1
                while node_id in self._nodes:
                    node_id += 1
            self._by_name[name] = node_id
            self._nodes[node_id] = NodeInfo(node_id, name, device, speed_factor)
        node = self._nodes[node_id]
        node.status = NodeStatus.ACTIVE
        node.consecutive_failures = 0
        node.device, node.speed_factor = device, speed_factor
        node.last_seen = time.monotonic()
        return node

    def get(self, node_id: int) -> NodeInfo:
        try:
            return self._nodes[node_id]
        except KeyError:
            raise UnknownNodeError(f"unknown node id {node_id}") from None

    def __contains__(self, node_id: object) -> bool:
        return node_id in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def restore(self, node: NodeInfo) -> None:
        """Know ``node`` (from a checkpoint) by id and name, before it reconnects."""
        self._nodes[node.node_id] = node
        self._by_name[node.name] = node.node_id

    def all(self) -> list[NodeInfo]:
        return list(self._nodes.values())

    def alive(self) -> list[NodeInfo]:
        return [n for n in self._nodes.values() if n.status in (NodeStatus.ACTIVE, NodeStatus.SUSPECT)]

    def seen(self, node_id: int) -> None:
        node = self.get(node_id)
        node.last_seen = time.monotonic()
        if node.status is NodeStatus.SUSPECT:
            node.status = NodeStatus.ACTIVE

    def succeeded(self, node_id: int) -> None:
        node = self.get(node_id)
        node.consecutive_failures = 0
        node.rounds_ok += 1
        self.seen(node_id)

    def credit(self, node_id: int, samples: int, compute_s: float, loss: float | None,
               busy_s: float = 0.0, idle_s: float = 0.0) -> None:
        """Count one accepted update of the node's (and the time it says it took)."""
        node = self.get(node_id)
        node.updates_accepted += 1
        node.samples += samples
        node.compute_s += compute_s
        node.busy_s += busy_s
        node.idle_s += idle_s
        if loss is not None:
            node.last_loss = loss

    def late(self, node_id: int) -> None:
        """Count a round missed by a node whose earlier update came in it, late: no step toward
        retirement (with overlap a node can deliver every round's update a round late)."""
        node = self.get(node_id)
        node.rounds_missed += 1
        node.consecutive_failures = 0
        self.seen(node_id)

    def failed(self, node_id: int) -> bool:
        """Count a missed round or exchange; True if the node is now dead."""
        node = self.get(node_id)
        node.consecutive_failures += 1
        node.rounds_missed += 1
        if node.consecutive_failures >= self.max_failures:
            node.status = NodeStatus.DEAD
            return True
        node.status = NodeStatus.SUSPECT
        return False

    def mark(self, node_id: int, status: NodeStatus) -> None:
        self.get(node_id).status = status

    def silent_since(self, cutoff: float) -> list[NodeInfo]:
        """Alive nodes not heard from since ``cutoff`` (a monotonic time)."""
        return [n for n in self.alive() if n.last_seen < cutoff]
