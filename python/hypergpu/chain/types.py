"""Plain records passed between the coordinator, the queue and the chain client."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from hypergpu.errors import InvalidArgumentError
from hypergpu.rewards.scoring import NodeScore

SESSION_STATUS = ("none", "active", "completed", "cancelled")

UINT96_MAX = 2**96 - 1
UINT64_MAX = 2**64 - 1
UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class Deployment:
    registry: str
    tracker: str
    distributor: str
    token: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class ContributionEntry:
    """One node's contribution in one epoch, in on-chain units."""

    node_id: int
    compute_credit: int  # verified compute, fixed-point (rewards.scoring.CREDIT_SCALE per second)
    updates_accepted: int  # samples whose update the coordinator accepted
    successful_rounds: int
    quality_bps: int  # quality multiplier in basis points, 5000..15000

    @classmethod
    def of(cls, score: NodeScore, node_id: int) -> ContributionEntry:
        """A node's epoch score in the contract's units, for its on-chain id."""
        return cls(node_id, score.compute_credit, score.samples_accepted, score.rounds_succeeded, score.quality_bps)

    def __post_init__(self) -> None:
        checks = (
            ("node_id", self.node_id, 1, UINT64_MAX),
            ("compute_credit", self.compute_credit, 0, UINT96_MAX),
            ("updates_accepted", self.updates_accepted, 0, UINT64_MAX),
            ("successful_rounds", self.successful_rounds, 0, UINT32_MAX),
            ("quality_bps", self.quality_bps, 5000, 15000),
        )
        for name, value, low, high in checks:
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise InvalidArgumentError(f"contribution {name}={value!r} is outside [{low}, {high}]")

    def as_tuple(self) -> tuple[int, int, int, int, int]:
        return (self.node_id, self.compute_credit, self.updates_accepted, self.successful_rounds, self.quality_bps)


@dataclass(frozen=True)
class ContributionRecord:
    """A node's accumulated contribution in a session, as stored on chain."""

    compute_credit: int
    updates_accepted: int
    successful_rounds: int
    quality_bps: int
    last_epoch: int


@dataclass(frozen=True)
class SessionInfo:
    session_id: int
    model_hash: bytes
    start_time: int
    end_time: int
    status: str


@dataclass(frozen=True)
class TxResult:
    action: str
    tx_hash: str
    block: int
    gas_used: int
    gas_limit: int
