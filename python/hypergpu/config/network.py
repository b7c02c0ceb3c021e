"""How each node's link is emulated (``[network]``): profiles, custom settings, scheduled switches."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from hypergpu.config.base import NodeId, Section

ProfileName = Literal["perfect", "good", "average", "poor", "unstable", "custom"]
#: The transport's congestion controllers (``TransportConfig.congestion``).
Congestion = Literal["bbr", "cubic", "new_reno"]

__all__ = ["Congestion", "CustomProfile", "NetworkConfig", "NetworkEvent", "ProfileName"]


class CustomProfile(Section):
    """Link characteristics used wherever the profile name is ``custom``."""

    latency_ms: float = Field(20.0, ge=0, le=60_000)
    jitter_ms: float = Field(0.0, ge=0, le=60_000)
    loss: float = Field(0.0, ge=0, lt=1, description="packet loss probability")
    bandwidth_mbps: float = Field(100.0, gt=0, le=1_000_000)


class NetworkEvent(Section):
    """Switch one node's link to another profile at a time or a round."""

    node: NodeId
    profile: ProfileName
    at_s: float | None = Field(None, ge=0, description="seconds after the run starts")
    at_round: int | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _exactly_one_trigger(self) -> NetworkEvent:
        if (self.at_s is None) == (self.at_round is None):
            raise ValueError("needs exactly one of at_s or at_round")
        if self.profile == "custom":
            # the switch travels as a profile name; custom settings are not sent
            raise ValueError("a network event must name a built-in profile, not 'custom'")
        return self


class NetworkConfig(Section):
    """Per-link network emulation applied to each node's connection."""

    default_profile: ProfileName = "perfect"
    node_profiles: dict[NodeId, ProfileName] = Field(default_factory=dict)
    custom: CustomProfile = Field(default_factory=CustomProfile)
    events: list[NetworkEvent] = Field(default_factory=list)
    congestion: Congestion = Field(
        "bbr", description="the congestion controller the coordinator sends with, and the nodes of a local run "
        "(a node elsewhere: `hypergpu node --congestion`). BBR does not read random loss as congestion: over a "
        "20 Mbit/s link with 2 % loss it carried 17x Cubic's goodput (benches/bench_congestion.py); the planner "
        "bounds a link's throughput by its loss only under cubic or new_reno")

    def profile_of(self, node: int) -> str:
        """The profile a node starts with."""
        return self.node_profiles.get(node, self.default_profile)
