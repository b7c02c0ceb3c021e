"""The Ray actor that runs one node process (``nodes.launcher = "ray"``).

:class:`hypergpu.launch.ray_nodes.RayNodes` makes this class a Ray actor;
each actor starts the node's ``hypergpu node ...`` command line as a child
of its worker process and reports on it. It lives outside ``launch`` and
imports only the standard library because a Ray worker imports the module
that defines an actor's class: ``hypergpu.launch`` would pull torch and the
coordinator into every worker, and this needs neither (the node process
it starts imports what it needs).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path


class NodeProcess:
    """One node process, a child of this actor's worker process.

    ``command`` is the node's command line; its interpreter is replaced by this
    worker's own (on a cluster the driver's path may not exist here). The
    process inherits the worker's environment (with the GPU Ray assigned the
    actor in ``CUDA_VISIBLE_DEVICES``) plus ``HYPERGPU_TOKEN`` and, where they
    exist on this machine (always, with a Ray instance on the driver's
    machine), ``package_root`` on ``PYTHONPATH`` and ``cwd`` as its working
    directory, so it runs as a local node would.
    """

    def __init__(self, command: list[str], token: str, log_path: str | None, package_root: str,
                 cwd: str) -> None:
        env = dict(os.environ, HYPERGPU_TOKEN=token)
        if Path(package_root).is_dir():
            env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        argv = [sys.executable, *command[1:]]
        where = cwd if Path(cwd).is_dir() else None
        if log_path is None:
            self._proc = subprocess.Popen(argv, env=env, cwd=where, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.STDOUT)
        else:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "ab") as out:  # the child keeps its own descriptor
                self._proc = subprocess.Popen(argv, env=env, cwd=where, stdout=out, stderr=subprocess.STDOUT)

    def describe(self) -> dict[str, object]:
        """The node process's pid, this worker's pid (its parent) and this machine's name."""
        return {"pid": self._proc.pid, "worker_pid": os.getpid(), "host": socket.gethostname()}

    def wait(self, timeout_s: float) -> int:
        """The node's exit code once it exits (it leaves when the coordinator says bye);
        killed after ``timeout_s`` if it has not."""
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return self.kill()

    def kill(self) -> int:
        """Kill the node process abruptly (a crash); its exit code."""
        self._proc.kill()
        return self._proc.wait()
