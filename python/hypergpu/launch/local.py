"""A local run: a coordinator in this process and N node processes.

``hypergpu train`` and ``hypergpu demo`` reproduce a whole WAN on one
machine: node *i* is a separate ``hypergpu node`` process that shapes its
own link with the profile the config gives it. :func:`local_run` is the one
place such a run is set up and torn down (the CLI, the API service and the
benchmark harness all use it). With ``nodes.launcher = "ray"`` the same
node processes run under Ray actors instead (:mod:`hypergpu.launch.ray_nodes`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from torch import nn

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator import Coordinator, RoundObserver, Summary
from hypergpu.events import EventBus
from hypergpu.extras import require
from hypergpu.launch.assemble import assemble
from hypergpu.launch.recorder import attach_recorder, settle_recorder
from hypergpu.round import Planner
from hypergpu.tracking.observer import open_trackers

if TYPE_CHECKING:
    from hypergpu.chain.recorder import ChainRecorder
    from hypergpu.tracking import RoundTracking


def local_key_dir(config: HyperGPUConfig) -> Path:
    """Where a local run's node keys live: ``nodes.key_dir``, else ``node-keys`` beside the checkpoints."""
    return config.nodes.key_dir or config.coordinator.checkpoint_dir.parent / "node-keys"


def node_key_file(config: HyperGPUConfig, index: int) -> Path:
    """Node ``index``'s key (its own: created by the node on first run, mode 0600)."""
    return local_key_dir(config) / f"node-{index}.key"


def node_command(config: HyperGPUConfig, join: str, index: int) -> list[str]:
    """Node ``index``'s ``hypergpu node`` command line (its token goes in the environment)."""
    cmd = [
        sys.executable, "-m", "hypergpu.cli", "node",
        "--join", join,
        "--name", f"node-{index}",
        "--index", str(index),
        "--profile", config.network.profile_of(index),
        "--speed", str(config.nodes.speed_factor(index)),
        "--device", config.nodes.device,
        "--seed", str(config.training.seed + 1000 * (index + 1)),
        "--heartbeat", str(config.coordinator.heartbeat_interval_s),
        "--key-file", str(node_key_file(config, index)),
        "--congestion", config.network.congestion,
    ]
    if config.nodes.state_dir is not None:
        cmd += ["--state-dir", str(config.nodes.state_dir)]
    custom = config.network.custom
    if config.network.profile_of(index) == "custom":
        cmd += [
            "--latency-ms", str(custom.latency_ms),
            "--jitter-ms", str(custom.jitter_ms),
            "--loss", str(custom.loss),
            "--bandwidth-mbps", str(custom.bandwidth_mbps),
        ]
    return cmd


class NodeLauncher(Protocol):
    """What starts a run's node processes: :class:`LocalNodes` or
    :class:`~hypergpu.launch.ray_nodes.RayNodes` (``nodes.launcher``)."""

    def start(self, index: int) -> object: ...

    def start_all(self) -> None: ...

    def kill(self, index: int) -> None: ...

    def stop(self, timeout_s: float = 10.0) -> dict[int, int | None]: ...


def node_launcher(config: HyperGPUConfig, join: str, token: str, log_dir: Path | None) -> NodeLauncher:
    """The launcher ``nodes.launcher`` names, for nodes that join ``join`` with ``token``."""
    if config.nodes.launcher == "ray":
        from hypergpu.launch.ray_nodes import RayNodes

        return RayNodes(config, join, token, log_dir)
    return LocalNodes(config, join, token, log_dir)


@dataclass
class LocalNodes:
    """The node processes of a local run."""

    config: HyperGPUConfig
    join: str
    token: str
    log_dir: Path | None = None
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def command(self, index: int) -> list[str]:
        return node_command(self.config, self.join, index)

    def key_file(self, index: int) -> Path:
        """Node ``index``'s key file."""
        return node_key_file(self.config, index)

    def start(self, index: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ, HYPERGPU_TOKEN=self.token)
        # Node processes import this very package, wherever it was imported from.
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        if self.log_dir is None:
            proc = subprocess.Popen(self.command(index), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        else:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            with open(self.log_dir / f"node-{index}.log", "ab") as out:  # the child keeps its own descriptor
                proc = subprocess.Popen(self.command(index), env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs[index] = proc
        return proc

    def start_all(self) -> None:
        for index in range(self.config.nodes.count):
            self.start(index)

    def kill(self, index: int) -> None:
        """Kill node ``index`` abruptly (a crash, for fault tests)."""
        self.procs[index].kill()
        self.procs[index].wait()

    def stop(self, timeout_s: float = 10.0) -> dict[int, int | None]:
        """Wait for the nodes to exit (they leave when the coordinator says bye); kill stragglers."""
        codes: dict[int, int | None] = {}
        for index, proc in self.procs.items():
            try:
                codes[index] = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[index] = proc.wait()
        return codes


@dataclass
class LocalRun:
    """A run in progress: a coordinator here, its node processes, its chain recorder."""

    coordinator: Coordinator
    join: str
    nodes: NodeLauncher | None = None  # None: nodes join from elsewhere
    recorder: ChainRecorder | None = None
    tracking: RoundTracking | None = None  # the experiment trackers (tracking.backends), finished at the end
    resume: bool = False
    summary: Summary | None = None
    #: After the run: whether every chain write was sent (None: no recorder, or no result to settle).
    drained: bool | None = None
    #: After the run: chain writes still queued on disk (``--resume`` sends them).
    pending_writes: int = 0

    async def train(self, *, join_timeout_s: float = 120.0) -> Summary:
        """Runs the rounds to the end; the result is also kept in :attr:`summary`."""
        self.summary = await self.coordinator.run(resume=self.resume, join_timeout_s=join_timeout_s)
        return self.summary


@asynccontextmanager
async def local_run(
    config: HyperGPUConfig,
    *,
    log_dir: Path | None = None,
    events: EventBus | None = None,
    planner: Planner | None = None,
    model: nn.Module | None = None,
    token: str | None = None,
    observers: Sequence[RoundObserver] = (),
    chain: bool = True,
    resume: bool = False,
    keep_recorder: bool = False,
    spawn_nodes: bool = True,
) -> AsyncIterator[LocalRun]:
    """``async with local_run(config) as run: summary = await run.train()``.

    Assembles a coordinator (with ``planner``, default
    :func:`~hypergpu.launch.assemble.planner_for`), adds ``observers``,
    attaches the chain recorder when ``chain`` and ``rewards.enabled``,
    listens on a free port and starts ``nodes.count`` node processes (logs in
    ``log_dir``) with the ``nodes.launcher`` (:func:`node_launcher`); with
    ``spawn_nodes=False`` it listens on the configured port instead and nodes
    join from elsewhere (``hypergpu coordinator``).
    On exit: closes the coordinator, waits for the nodes (killing
    stragglers), settles the recorder if the run produced a result, and
    closes it unless ``keep_recorder`` (then the caller closes it).
    """
    if spawn_nodes and config.nodes.launcher == "ray":
        require("ray")  # before the data loads and the model is built: a missing extra fails at once
    if spawn_nodes:  # the nodes we start are told the join string, whatever port it names
        config = config.model_copy(update={"coordinator": config.coordinator.model_copy(update={"port": 0})})
    # Blocking: loads the data and builds the model (the first call also imports torch).
    coord = await asyncio.to_thread(assemble, config, events=events, planner=planner, model=model, token=token)
    coord.observers.extend(observers)
    run: LocalRun | None = None
    try:
        recorder = await attach_recorder(config, coord, resume=resume) if chain else None
        run = LocalRun(coord, "", recorder=recorder, resume=resume)
        run.tracking = await asyncio.to_thread(open_trackers, config)
        if run.tracking is not None:
            coord.observers.append(run.tracking)
        run.join = await coord.start(resume=resume)
        if spawn_nodes:
            run.nodes = node_launcher(config, run.join, coord.token, log_dir)
            await asyncio.to_thread(run.nodes.start_all)
        yield run
    finally:
        try:
            await coord.close()
        finally:
            if run is not None:
                await _wind_down(run, keep_recorder)


async def _wind_down(run: LocalRun, keep_recorder: bool) -> None:
    """After the coordinator closed: the nodes leave, the trackers are finished, the chain is settled."""
    try:
        try:
            if run.nodes is not None:
                await asyncio.to_thread(run.nodes.stop)
        finally:
            if run.tracking is not None:
                await asyncio.to_thread(run.tracking.finish)
    finally:
        recorder = run.recorder
        if recorder is not None:
            try:
                if run.summary is not None:
                    run.drained = await settle_recorder(recorder, run.coordinator, run.summary)
                    run.pending_writes = await asyncio.to_thread(recorder.pending_writes)
            finally:
                if not keep_recorder:
                    await asyncio.to_thread(recorder.close)
