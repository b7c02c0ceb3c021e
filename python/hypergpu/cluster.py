"""A local run: a coordinator in this process and N node processes.

``hypergpu train`` and ``hypergpu demo`` use this to reproduce a whole
WAN on one machine: node *i* is a separate ``hypergpu node`` process that
shapes its own link with the profile the config gives it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hypergpu.config.schema import HyperGPUConfig


@dataclass
class LocalNodes:
    """The node processes of a local run."""

    config: HyperGPUConfig
    join: str
    token: str
    log_dir: Path | None = None
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def command(self, index: int) -> list[str]:
        cfg = self.config
        cmd = [
            sys.executable,
            "-m",
            "hypergpu.cli",
            "node",
            "--join",
            self.join,
            "--name",
            f"node-{index}",
            "--index",
            str(index),
            "--profile",
            cfg.network.profile_of(index),
            "--speed",
            str(cfg.nodes.speed_factor(index)),
            "--device",
            cfg.nodes.device,
            "--seed",
            str(cfg.training.seed + 1000 * (index + 1)),
            "--heartbeat",
            str(cfg.coordinator.heartbeat_interval_s),
        ]
        custom = cfg.network.custom
        if cfg.network.profile_of(index) == "custom":
            cmd += [
                "--latency-ms",
                str(custom.latency_ms),
                "--jitter-ms",
                str(custom.jitter_ms),
                "--loss",
                str(custom.loss),
                "--bandwidth-mbps",
                str(custom.bandwidth_mbps),
            ]
        return cmd

    def start(self, index: int) -> subprocess.Popen[bytes]:
        env = dict(os.environ, HYPERGPU_TOKEN=self.token)
        # Node processes import this very package, wherever it was imported from.
        package_root = str(Path(__file__).resolve().parent.parent)
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
