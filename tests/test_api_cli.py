"""``hypergpu serve``: prints the URL and token once, serves, exits cleanly on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

import hypergpu


def test_serve_prints_url_and_token_and_stops_on_sigint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(hypergpu.__file__).resolve().parent.parent))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypergpu.cli", "serve", "--port", "0", "--set", "data.cache_dir=null"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        url, token = re.match(r"dashboard: (http://127\.0\.0\.1:\d+)/#token=(\S+)", first).groups()
        assert second.strip().endswith(token)
        assert httpx.get(f"{url}/health", timeout=30).json()["status"] == "ok"
        r = httpx.post(f"{url}/api/training/stop", headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert r.status_code == 409
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert token not in out  # printed once, at start, and never again (e.g. in access logs)


def test_train_serves_the_api_and_stops_gracefully_on_sigint(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(Path(hypergpu.__file__).resolve().parent.parent))
    overrides = ["nodes.count=2", "training.rounds=500", "training.model='mlp'", "training.local_steps=2",
                 "data.cache_dir=null", "coordinator.checkpoint_every=0", "api.port=0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypergpu.cli", "train", *[a for o in overrides for a in ("--set", o)]],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = re.match(r"dashboard: (http://127\.0\.0\.1:\d+)/#token=", proc.stdout.readline()).group(1)
        proc.stdout.readline()
        deadline = time.monotonic() + 120
        while httpx.get(f"{url}/api/status", timeout=30).json()["round"] < 2:
            assert time.monotonic() < deadline, "no round within 120 s"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # the nodes keep running: only the coordinator's process is told
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out
    assert "(stopped early)" in " ".join(out.split()) and "accuracy" in out
