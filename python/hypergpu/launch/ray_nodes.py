"""A run's node processes on a Ray cluster (``nodes.launcher = "ray"``, the ``ray`` extra).

:class:`RayNodes` has :class:`~hypergpu.launch.local.LocalNodes`'s interface,
so :func:`~hypergpu.launch.local.local_run` takes either. Each node is a Ray
actor (:class:`hypergpu.ray_actor.NodeProcess`) asking for
``nodes.ray_cpus`` CPUs and ``nodes.ray_gpus`` GPUs, so Ray places the
nodes (one per GPU with ``ray_gpus = 1``); the actor runs the very command
line a local node runs (:func:`~hypergpu.launch.local.node_command`) as a
child of its worker process.

With ``nodes.ray_address`` unset, a Ray instance is started on this machine
for the run (CPUs enough for every node's actor, no dashboard) and shut down
at the end; a cluster joined by address is left running. The nodes dial the
join string they are handed, so on a cluster it must name an address the
cluster's machines reach (``coordinator.host`` bound to one, or to
``0.0.0.0`` with ``coordinator.advertise``); the loopback address of the
default join string reaches only this machine.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import hypergpu
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import LaunchError
from hypergpu.extras import require
from hypergpu.launch.local import node_command
from hypergpu.ray_actor import NodeProcess

#: How long the nodes' actors may take to be placed and start their processes
#: (a cluster may have to start a machine, or wait for another job's GPUs).
PLACE_TIMEOUT_S = 300.0
#: How much longer than ``stop``'s timeout an actor may take to answer.
ANSWER_GRACE_S = 30.0


@dataclass
class RayNodes:
    """The node processes of a run, each the child of a Ray actor."""

    config: HyperGPUConfig
    join: str
    token: str
    log_dir: Path | None = None
    actors: dict[int, Any] = field(default_factory=dict)
    #: Per node, as its actor reports it: the process's ``pid``, the actor's
    #: ``worker_pid`` (the process's parent) and the ``host`` it runs on.
    placed: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Whether this started the Ray instance (then :meth:`stop` shuts it down).
    owns_ray: bool = False

    def __post_init__(self) -> None:
        require("ray")

    def connect(self) -> None:
        """Joins ``nodes.ray_address``, or starts a Ray instance here; nothing if Ray is already up."""
        import ray

        if ray.is_initialized():  # the caller's own Ray session: used, and left as it is
            return
        nodes = self.config.nodes
        if nodes.ray_address is not None:
            ray.init(address=nodes.ray_address, log_to_driver=False)
            return
        # "local": a new instance even where $RAY_ADDRESS names a cluster (ray_address says which to join).
        # Ray's own logger at ERROR: its warnings about a private instance (signal handlers left to this
        # process, token auth) are not the user's to act on.
        ray.init(address="local", num_cpus=max(1, math.ceil(nodes.count * nodes.ray_cpus)), include_dashboard=False,
                 log_to_driver=False, logging_level=logging.ERROR)
        self.owns_ray = True

    def start(self, index: int) -> int:
        """Starts node ``index`` (replacing its actor, if it had one); its process id."""
        self.connect()
        self._spawn(index)
        self._await_placed([index])
        return int(self.placed[index]["pid"])

    def start_all(self) -> None:
        self.connect()
        indices = list(range(self.config.nodes.count))
        for index in indices:  # all asked for before any is awaited: Ray places and starts them at once
            self._spawn(index)
        self._await_placed(indices)

    def kill(self, index: int) -> None:
        """Kill node ``index``'s process abruptly (a crash, for fault tests); its actor stays."""
        import ray

        ray.get(self.actors[index].kill.remote(), timeout=ANSWER_GRACE_S)

    def stop(self, timeout_s: float = 10.0) -> dict[int, int | None]:
        """Waits for the nodes to exit (they leave when the coordinator says bye), kills
        stragglers, then the actors, and shuts down a Ray instance this started.
        Exit codes by node; None where the actor did not answer."""
        import ray
        from ray.exceptions import RayError

        codes: dict[int, int | None] = {}
        try:
            waits = {index: actor.wait.remote(timeout_s) for index, actor in self.actors.items()}
            for index, ref in waits.items():
                try:
                    codes[index] = ray.get(ref, timeout=timeout_s + ANSWER_GRACE_S)
                except RayError:  # its actor died or hangs: killed below
                    codes[index] = None
        finally:
            for actor in self.actors.values():
                ray.kill(actor, no_restart=True)
            self.actors.clear()
            if self.owns_ray:
                ray.shutdown()
                self.owns_ray = False
        return codes

    def _spawn(self, index: int) -> None:
        import ray

        old = self.actors.pop(index, None)
        if old is not None:
            ray.kill(old, no_restart=True)
        nodes = self.config.nodes
        actor = _actor_class().options(num_cpus=nodes.ray_cpus, num_gpus=nodes.ray_gpus)
        log = None if self.log_dir is None else str(self.log_dir.resolve() / f"node-{index}.log")
        # Where this package and the run's relative paths (nodes.state_dir) are, for nodes on this machine.
        package_root = str(Path(hypergpu.__file__).resolve().parent.parent)
        self.actors[index] = actor.remote(node_command(self.config, self.join, index), self.token, log,
                                          package_root, os.getcwd())

    def _await_placed(self, indices: list[int]) -> None:
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        nodes = self.config.nodes
        try:
            found = ray.get([self.actors[i].describe.remote() for i in indices], timeout=PLACE_TIMEOUT_S)
        except GetTimeoutError:
            raise LaunchError(
                f"Ray did not place the nodes' actors within {PLACE_TIMEOUT_S:.0f} s: each asks for "
                f"{nodes.ray_cpus:g} CPUs and {nodes.ray_gpus:g} GPUs (nodes.ray_cpus, nodes.ray_gpus), "
                f"the cluster has {ray.cluster_resources()}"
            ) from None
        except RayError as exc:
            raise LaunchError(f"a node's Ray actor failed to start its process: {exc}") from exc
        self.placed.update(zip(indices, found, strict=True))


@cache
def _actor_class() -> Any:
    """:class:`NodeProcess` as a Ray actor class (made once: Ray exports each class it is handed)."""
    import ray

    return ray.remote(NodeProcess)
