"""What each node is asked to do in a round.

The coordinator asks a *planner* before every round which nodes take part
and what each one does. :class:`StaticPlanner` gives every live node the
configured batch size, local steps and codec; the adaptive planner (in
``hypergpu.adapt``) replaces it with decisions drawn from each link.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator.registry import NodeInfo

if TYPE_CHECKING:
    import numpy as np

    from hypergpu.model.manager import ModelManager


@dataclass(frozen=True)
class Assignment:
    """One node's work for one round."""

    batch_size: int
    local_steps: int  # 0: the configured number of local epochs instead
    accumulation: int = 1
    codec: str = "raw"
    codec_ratio: float | None = None  # top-k: fraction of coordinates sent
    zstd: bool = False
    down_codec: str = "raw"  # parameters to this node: whole (raw) or a delta in this codec

    def as_meta(self) -> dict[str, Any]:
        return asdict(self)


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


class Planner(Protocol):
    def plan(self, round_id: int, nodes: list[NodeInfo]) -> RoundPlan: ...

    def observe(self, record: dict[str, Any]) -> None:
        """Learn from a finished round's record."""


class OuterOptimizer(Protocol):
    """Applies a round's averaged update (``params_after - params_received``) to the model."""

    def step(self, model: ModelManager, update: np.ndarray) -> int: ...


class StaticPlanner:
    """Every live node, the configured batch size and local steps, fixed codecs up and down."""

    def __init__(self, config: HyperGPUConfig, codec: str = "raw", down_codec: str = "raw"):
        t = config.training
        self.assignment = Assignment(
            batch_size=t.batch_size, local_steps=t.local_steps, codec=codec, down_codec=down_codec
        )

    def plan(self, round_id: int, nodes: list[NodeInfo]) -> RoundPlan:
        return RoundPlan(round_id, {n.node_id: self.assignment for n in nodes})

    def observe(self, record: dict[str, Any]) -> None:
        return None
