"""The node processes a run starts (``[nodes]``): how many, how fast, on which
device, and where — on this machine, or each under a Ray actor on a Ray
cluster (``launcher = "ray"``, the ``ray`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field

from hypergpu.config.base import Address, NodeId, Section

Device = Literal["auto", "cpu", "cuda"]
Launcher = Literal["local", "ray"]


class NodesConfig(Section):
    """The node processes of a run that starts its own nodes (``hypergpu train``, ``demo``)."""

    count: int = Field(4, ge=1, le=4096)
    speed_factors: dict[NodeId, Annotated[float, Field(gt=0, le=1)]] = Field(
        default_factory=dict, description="per node; < 1 emulates a slower GPU (1 is full speed)"
    )
    device: Device = "auto"
    state_dir: Path | None = Field(
        None, description="each node checkpoints its inner optimizer here after every round "
        "(a folder per node name) and resumes from it when restarted; unset: not kept"
    )
    key_dir: Path | None = Field(
        None, description="a local run's node keys: node i's is node-i.key here, created on first use (mode 0600); "
        "unset: node-keys beside coordinator.checkpoint_dir"
    )
    allow: dict[Annotated[str, Field(min_length=1, max_length=256)],
                Address] = Field(
        default_factory=dict, description="node name -> the address of the only key that may join under it; when "
        "set, names not listed are refused (unset: a name is bound to the first key that joins under it)"
    )
    launcher: Launcher = Field(
        "local", description="where the node processes run: local, child processes of this one; ray, each "
        "the child of a Ray actor placed by ray_cpus/ray_gpus (the ray extra). On a cluster the join string "
        "must reach the coordinator from the cluster's machines: set coordinator.host/advertise",
    )
    ray_address: str | None = Field(
        None, pattern=r"^(auto|(ray://)?[\w.-]+:\d{1,5})$",
        description="the Ray cluster to join: 'auto' (the one this machine belongs to), 'ray://host:port' "
        "(Ray Client) or 'host:port' (its GCS); unset: start a Ray instance on this machine for the run",
    )
    ray_cpus: float = Field(1.0, ge=0, le=1024, description="CPUs each node's Ray actor asks for")
    ray_gpus: float = Field(
        0.0, ge=0, le=64, description="GPUs each node's Ray actor asks for (1: one node per GPU; Ray sets the "
        "node process's CUDA_VISIBLE_DEVICES)"
    )

    def speed_factor(self, node: int) -> float:
        return self.speed_factors.get(node, 1.0)
