"""Starting a local anvil node (npm package @foundry-rs/anvil) for tests and
``hypergpu chain up``."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import requests

from hypergpu.errors import ChainError

ANVIL_ENV = "HYPERGPU_ANVIL"


def contracts_dir() -> Path:
    """``contracts/`` of the source checkout this package was imported from."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "contracts" / "package.json"
        if candidate.is_file():
            return candidate.parent
    raise ChainError("contracts/ not found beside this package: anvil runs from a source checkout")


def ensure_node_modules(directory: Path | None = None) -> Path:
    """Runs ``npm ci`` in contracts/ if its node_modules is missing; returns contracts/."""
    directory = directory or contracts_dir()
    if (directory / "node_modules" / ".bin" / "anvil").exists():
        return directory
    npm = shutil.which("npm")
    if npm is None:
        raise ChainError("npm not found: install Node.js, then run `npm ci` in contracts/")
    # `npm ci` can refuse a lock file that lacks other platforms' optional anvil
    # binaries; `npm install` then resolves the same exact versions package.json pins.
    for command in ("ci", "install"):
        done = subprocess.run(
            [npm, command, "--no-audit", "--no-fund"], cwd=directory, capture_output=True, text=True, timeout=600
        )
        if done.returncode == 0:
            return directory
    raise ChainError(f"npm install in {directory} failed: {done.stderr.strip()[-2000:]}")


def anvil_binary() -> Path:
    """Where anvil is, in this order: ``$HYPERGPU_ANVIL``; ``anvil`` on ``PATH``
    (Foundry's installer); ``node_modules/.bin/anvil`` in the current directory
    (``npm install @foundry-rs/anvil``); the source checkout's
    ``contracts/node_modules`` (installed there with npm on demand). An
    installed package outside a checkout with none of them gets a
    :class:`~hypergpu.errors.ChainError` saying how to get one."""
    override = os.environ.get(ANVIL_ENV)
    if override:
        return Path(override)
    on_path = shutil.which("anvil")
    if on_path is not None:
        return Path(on_path)
    local = Path.cwd() / "node_modules" / ".bin" / "anvil"
    if local.exists():
        return local
    try:
        checkout = contracts_dir()
    except ChainError:
        raise ChainError(
            "anvil not found: install Foundry (https://getfoundry.sh) so `anvil` is on PATH, or run "
            f"`npm install @foundry-rs/anvil` in this directory, or set {ANVIL_ENV} to an anvil binary"
        ) from None
    return ensure_node_modules(checkout) / "node_modules" / ".bin" / "anvil"


class AnvilProcess:
    """One anvil on 127.0.0.1. ``state_path`` keeps the chain across restarts
    (anvil --state loads it at start and dumps it on a graceful stop)."""

    def __init__(self, port: int = 8545, state_path: Path | None = None, chain_id: int = 31337):
        self.port = port
        self.state_path = state_path
        self.chain_id = chain_id
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout_s: float = 30.0) -> AnvilProcess:
        if self.running:
            return self
        cmd = [str(anvil_binary()), "--host", "127.0.0.1", "--port", str(self.port), "--chain-id", str(self.chain_id)]
        if self.state_path is not None:
            cmd += ["--state", str(self.state_path)]
        # its own process group: the npm package's `anvil` is a wrapper that starts the real
        # binary as its child, and stop() must end both
        self._proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                      start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode(errors="replace") if self._proc.stderr else ""
                self._proc = None
                raise ChainError(f"anvil exited at start: {err.strip()[-1000:]}")
            try:
                body = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}
                if requests.post(self.url, json=body, timeout=1).ok:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        self.stop()
        raise ChainError(f"anvil did not answer on {self.url} within {timeout_s}s")

    def stop(self, timeout_s: float = 15.0) -> None:
        """Stops gracefully (SIGTERM, so --state is dumped), killing if it hangs."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        group = proc.pid  # its own session: the group holds the wrapper and the real anvil
        _signal_group(group, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        while _group_alive(group) and time.monotonic() < deadline:
            proc.poll()  # reaps the wrapper once it exits
            time.sleep(0.05)
        if _group_alive(group):
            _signal_group(group, signal.SIGKILL)
        proc.wait()
        if proc.stderr:
            proc.stderr.close()

    def __enter__(self) -> AnvilProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, sig)


def _group_alive(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True
