"""Policy presets: how fast and how far the planner reacts."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    name: str
    slack: float  # adaptive selection: allowed multiple of the typical (median) node's exchange time
    strikes_to_quarantine: int
    margin: float  # quality hysteresis, score points
    dwell: int  # quality / codec: observations before a change
    step: float  # largest per-round change factor of batch and local steps
    deadband: float  # batch and local steps ignore a target this close (relative) to what they have
    upload_budget_s: float  # codec: target upload time
    compute_ratio: float  # local steps: compute time per unit of communication time
    rollback_tolerance: float  # throughput drop that undoes a change
    loss_tolerance: float  # loss rise that undoes a change
    freeze_rounds: int  # after a rollback, leave the node's settings alone this long


POLICIES = {
    "conservative": Policy("conservative", 4.0, 3, 8.0, 3, 1.5, 0.5, 1.0, 0.5, 0.10, 0.05, 6),
    "reactive": Policy("reactive", 2.5, 2, 5.0, 2, 2.0, 0.3, 0.5, 1.0, 0.20, 0.10, 4),
    "aggressive": Policy("aggressive", 1.5, 1, 3.0, 1, 4.0, 0.1, 0.25, 2.0, 0.30, 0.20, 2),
}
