"""``hypergpu`` processes for end-to-end tests: started with this very package and their
output in a log file, waited on, and read back from their logs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import hypergpu

#: Child processes import the package these tests import, wherever it lies.
PYTHONPATH = str(Path(hypergpu.__file__).resolve().parent.parent)


def free_port() -> int:
    """A UDP port free on loopback now (the coordinator's QUIC port)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def hypergpu_cli(*args: str) -> list[str]:
    """The command line of ``hypergpu ARGS`` run by this interpreter."""
    return [sys.executable, "-m", "hypergpu.cli", *args]


def spawn(cmd: list[str], log: Path, *, token: str | None = None, key: Path | None = None,
          crash: str | None = None) -> subprocess.Popen[bytes]:
    """Starts ``cmd`` with its output appended to ``log``; ``token`` as ``HYPERGPU_TOKEN``,
    ``key`` as the node's key file (a coordinator caps the nodes one key may run) and
    ``crash`` as the coordinator's crash point (``HYPERGPU_CRASH_AT``; never inherited)."""
    env = dict(os.environ, PYTHONPATH=PYTHONPATH)
    env.pop("HYPERGPU_CRASH_AT", None)
    for name, value in (("HYPERGPU_TOKEN", token), ("HYPERGPU_KEY_FILE", key), ("HYPERGPU_CRASH_AT", crash)):
        if value is not None:
            env[name] = str(value)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(what: str, check: Callable[[], object], timeout_s: float = 300.0, poll_s: float = 0.05,
             logs: Path | None = None) -> None:
    """Polls ``check`` until it is true; an ``AssertionError`` naming ``what`` after ``timeout_s``
    (with the last lines of each log in the folder ``logs``: what the processes were doing)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}" + ("" if logs is None else log_tails(logs)))
        time.sleep(poll_s)


def log_tails(folder: Path, lines: int = 12) -> str:
    """The last ``lines`` lines of each ``*.log`` in ``folder``, each under its name."""
    parts = []
    for log in sorted(folder.glob("*.log")):
        tail = log.read_text(errors="replace").splitlines()[-lines:]
        parts.append(f"\n--- {log.name} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "".join(parts)


def stop(*procs: subprocess.Popen[bytes]) -> None:
    """Kills those of ``procs`` still running and reaps each, so none outlives its test
    (an unreaped child is a ``ResourceWarning`` in whichever test runs next)."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
    for proc in procs:
        proc.wait(timeout=60)


def log_field(log: Path, prefix: str) -> str | None:
    """The rest of the first line of ``log`` that starts with ``prefix`` (e.g. ``join:``)."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith(prefix):
            return line[len(prefix):].strip()
    return None
