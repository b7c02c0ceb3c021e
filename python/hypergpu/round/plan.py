"""What each node is asked to do in a round, and who decides it.

Before every round the coordinator hands a :class:`Planner` a
:class:`PlanView` — plain data: the live nodes, their links as the
transport measured them, the samples they hold — and gets back a
:class:`RoundPlan`. After the round the planner observes its
:class:`~hypergpu.round.records.RoundRecord`. The planner never reaches
into the coordinator. :class:`StaticPlanner` gives every live node the
configured settings; the adaptive planner (``hypergpu.adapt``) draws them
from each link.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.protocol import Assignment

if TYPE_CHECKING:
    from hypergpu._core import LinkStats
    from hypergpu.round.records import RoundRecord


@dataclass(frozen=True)
class NodeView:
    """What a planner may know of one live, connected node."""

    node_id: int
    name: str = ""
    speed_factor: float = 1.0
    updates_accepted: int = 0
    shard_samples: int | None = None  # training samples in the shards it holds
    link: LinkStats | None = None  # the transport's latest measurements of its link


@dataclass(frozen=True)
class PlanView:
    """The data a planner plans a round from."""

    nodes: list[NodeView] = field(default_factory=list)
    num_params: int = 0  # the model's size (its float32 vector is 4x this many bytes)

    @classmethod
    def of(cls, *node_ids: int, num_params: int = 0) -> PlanView:
        """Bare nodes with nothing measured yet (tests, static runs)."""
        return cls([NodeView(n) for n in node_ids], num_params)


@dataclass
class RoundPlan:
    round: int
    assignments: dict[int, Assignment] = field(default_factory=dict)
    # node id -> why it sits this round out
    excluded: dict[int, str] = field(default_factory=dict)
    # stop waiting after this long once a quorum is in (None: the configured round timeout)
    deadline_s: float | None = None
    # participants the quorum does not wait for (e.g. in only for fairness)
    optional: set[int] = field(default_factory=set)

    @property
    def participants(self) -> set[int]:
        return set(self.assignments)

    def leave_out(self, node_id: int, reason: str) -> None:
        """Take a node out of the plan (an operator's exclusion, a busy link)."""
        if self.assignments.pop(node_id, None) is not None:
            self.excluded[node_id] = reason
            self.optional.discard(node_id)


class Planner(Protocol):
    #: A short name for runs planned this way ('baseline', 'adaptive'), shown by the API.
    label: str

    def plan(self, round_id: int, view: PlanView) -> RoundPlan:
        """Who takes part in ``round_id`` and what each participant does."""

    def observe(self, record: RoundRecord) -> None:
        """Learn from a finished round's record."""

    def status(self) -> dict[str, Any] | None:
        """What the planner knows and decided, for the dashboard (None: nothing to show)."""


class StaticPlanner:
    """Every live node, the configured batch size and local steps, fixed codecs up and down."""

    label = "baseline"

    def __init__(self, config: HyperGPUConfig, codec: str = "raw", down_codec: str = "raw"):
        t = config.training
        self.assignment = Assignment(
            batch_size=t.batch_size, local_steps=t.local_steps, codec=codec, down_codec=down_codec
        )

    def plan(self, round_id: int, view: PlanView) -> RoundPlan:
        return RoundPlan(round_id, {n.node_id: self.assignment for n in view.nodes})

    def observe(self, record: RoundRecord) -> None:
        return None

    def status(self) -> dict[str, Any] | None:
        return None
