"""The package as users install it.

* anvil is found the ways a user has it (``$HYPERGPU_ANVIL``, ``PATH``, the
  npm package in the current directory, the checkout), or the error says how
  to get it;
* the wheel ``maturin build --release`` makes is one abi3 manylinux wheel
  carrying the extension, its type stubs, the contract artifacts and the
  dashboard; installed into a fresh venv (base first, then ``[all]``, from
  PyPI) it trains from a directory outside the checkout, refuses a part whose
  extra is missing with the command that installs it, and ``hypergpu chain
  up`` deploys the packaged contracts on an anvil found through npm.
  It downloads torch into the venv: 11 minutes under load here, so it is
  deselected by default; ``make test-wheel`` (``-m wheel``) runs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from hypergpu.chain import anvil
from hypergpu.errors import ChainError

REPO = Path(__file__).resolve().parent.parent
SMALL = ["--set", "nodes.count=2", "--set", "training.rounds=2", "--set", "training.model='mlp'",
         "--set", "training.local_steps=2", "--set", "data.cache_dir=null", "--set", "coordinator.checkpoint_every=0"]


def fake_anvil(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "anvil"
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return path


def test_anvil_is_found_on_path_then_in_the_directory_s_node_modules(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(anvil.ANVIL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    on_path = fake_anvil(tmp_path / "bin")
    npm_one = fake_anvil(tmp_path / "node_modules" / ".bin")
    monkeypatch.setenv("PATH", f"{on_path.parent}{os.pathsep}/usr/bin:/bin")
    assert anvil.anvil_binary() == on_path
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("anvil") is not None:
        pytest.skip(f"an anvil is installed system-wide ({shutil.which('anvil')}); cannot test the fallbacks")
    assert anvil.anvil_binary() == npm_one
    monkeypatch.setenv(anvil.ANVIL_ENV, "/opt/anvil")
    assert anvil.anvil_binary() == Path("/opt/anvil")


def test_without_anvil_outside_a_checkout_the_error_says_how_to_get_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(anvil.ANVIL_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    if shutil.which("anvil") is not None:
        pytest.skip(f"an anvil is installed system-wide ({shutil.which('anvil')})")

    def no_checkout() -> Path:
        raise ChainError("contracts/ not found")

    monkeypatch.setattr(anvil, "contracts_dir", no_checkout)
    with pytest.raises(ChainError) as caught:
        anvil.anvil_binary()
    message = str(caught.value)
    assert "npm install @foundry-rs/anvil" in message and "PATH" in message and anvil.ANVIL_ENV in message


# --- the wheel ------------------------------------------------------------------


def run(cmd: list[str], cwd: Path, timeout: float, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    if check:
        assert done.returncode == 0, f"{cmd}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done


def build_wheel(out: Path) -> Path:
    maturin = Path(sys.executable).parent / "maturin"
    if not maturin.exists():
        pytest.skip(f"maturin is not installed beside {sys.executable} (pip install 'hypergpu[dev]')")
    run([str(maturin), "build", "--release", "--out", str(out)], REPO, 900)
    (wheel,) = out.glob("hypergpu-*.whl")
    return wheel


def check_contents(wheel: Path) -> None:
    assert "-cp311-abi3-manylinux" in wheel.name, wheel.name
    names = set(zipfile.ZipFile(wheel).namelist())
    artifacts = {n for n in names if n.startswith("hypergpu/chain/artifacts/") and n.endswith(".json")}
    assert {"hypergpu/chain/artifacts/TrainingRegistry.json", "hypergpu/chain/artifacts/ContributionTracker.json",
            "hypergpu/chain/artifacts/RewardDistributor.json"} <= artifacts
    assert {"hypergpu/_core.abi3.so", "hypergpu/_core.pyi", "hypergpu/py.typed", "hypergpu/api/static/index.html",
            "hypergpu/api/static/app.js", "hypergpu/api/static/vendor/chart.umd.js"} <= names
    assert not any(n.startswith(("tests/", "contracts/", "rust/")) for n in names)


@pytest.mark.slow
@pytest.mark.wheel
@pytest.mark.timeout(1500)
def test_the_wheel_installs_into_a_fresh_venv_and_trains_outside_the_checkout(tmp_path: Path) -> None:
    timings: dict[str, float] = {}
    started = time.perf_counter()
    wheel = build_wheel(tmp_path / "wheels")
    timings["build"] = time.perf_counter() - started
    check_contents(wheel)
    venv, outside = tmp_path / "venv", tmp_path / "outside"
    outside.mkdir()
    try:
        run([sys.executable, "-m", "venv", str(venv)], tmp_path, 120)
        pip, hypergpu = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"], str(venv / "bin" / "hypergpu")
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env["PATH"] = f"{venv / 'bin'}{os.pathsep}/usr/bin:/bin"  # neither the checkout's venv nor any anvil

        mark = time.perf_counter()
        run([*pip, str(wheel)], outside, 900, env)
        timings["install base"] = time.perf_counter() - mark
        assert run([hypergpu, "--version"], outside, 60, env).stdout.strip() == "hypergpu, version 0.1.0"
        base = run([hypergpu, "train", "--no-api", *SMALL, "--set", "data.dataset='synthetic'",
                    "--set", "rewards.enabled=false"], outside, 300, env)
        assert "rounds 2" in base.stdout, base.stdout + base.stderr
        refused = run([hypergpu, "train", "--no-api", *SMALL, "--set", "data.dataset='synthetic'"], outside, 120, env,
                      check=False)
        assert refused.returncode != 0 and "pip install 'hypergpu[chain]'" in refused.stderr, refused.stderr

        mark = time.perf_counter()
        run([*pip, f"{wheel}[all]"], outside, 900, env)
        timings["install [all]"] = time.perf_counter() - mark
        full = run([hypergpu, "train", "--no-api", *SMALL], outside, 300, env)  # digits, settled on the embedded chain
        assert "rounds 2" in full.stdout and "chain: embedded" in full.stdout + full.stderr, full.stdout + full.stderr
        assert not (outside / "contracts").exists()
        no_anvil = run([hypergpu, "chain", "up"], outside, 120, env, check=False)
        assert no_anvil.returncode != 0 and "npm install @foundry-rs/anvil" in no_anvil.stderr, no_anvil.stderr
        chain_up_through_npm(hypergpu, outside, env)
    finally:
        shutil.rmtree(venv, ignore_errors=True)  # gigabytes (torch)
    print("wheel", wheel.name, f"{wheel.stat().st_size / 1e6:.1f} MB;",
          ", ".join(f"{k} {v:.0f} s" for k, v in timings.items()))


def chain_up_through_npm(hypergpu: str, outside: Path, env: dict[str, str]) -> None:
    """``hypergpu chain up`` with the npm package's anvil in the current directory
    (the checkout's own npm install, linked there) deploys the packaged contracts."""
    npm_anvil = REPO / "contracts" / "node_modules" / ".bin" / "anvil"
    if not npm_anvil.exists():
        print(f"chain up through npm not checked: {npm_anvil} is not installed (make node-deps)")
        return
    (outside / "node_modules" / ".bin").mkdir(parents=True)
    (outside / "node_modules" / ".bin" / "anvil").symlink_to(npm_anvil.resolve())
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen([hypergpu, "chain", "up", "--set", f"chain.anvil_port={port}"], cwd=outside, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if "Ctrl-C stops the chain" in line:
                break
        assert any(line.startswith("registry:") for line in lines), "".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
