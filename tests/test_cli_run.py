"""``hypergpu train --no-api`` and ``hypergpu coordinator`` as processes: the
local-run harness end to end, with and without the chain recorder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import hypergpu
from hypergpu.cli.common import headline
from hypergpu.cli.run import held_out_brief
from hypergpu.coordinator import Summary

pytestmark = pytest.mark.timeout(180)

SMALL = ("nodes.count=2", "training.rounds=3", "training.model='mlp'", "training.local_steps=2",
         "data.cache_dir=null", "coordinator.checkpoint_every=0", "coordinator.heartbeat_interval_s=0.5")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "hypergpu.cli", *args]


def env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(Path(hypergpu.__file__).resolve().parent.parent))


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_train_without_api_settles_on_the_embedded_chain(tmp_path: Path) -> None:
    overrides = (*SMALL, f"chain.queue_path='{tmp_path / 'chain' / 'q.sqlite3'}'")
    done = subprocess.run(cli("train", "--no-api", *sets(*overrides)), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=150)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "chain: embedded" in out and "rounds 3" in out
    # The rewards table: both nodes were paid, and nothing was left queued.
    assert "node-0" in out and "node-1" in out and "reward (ETH)" in out
    assert "still queued" not in out


def test_train_resumes_from_its_checkpoint_for_more_rounds(tmp_path: Path) -> None:
    ckpt = tmp_path / "ckpt"
    overrides = (*SMALL, "coordinator.checkpoint_every=1", f"coordinator.checkpoint_dir='{ckpt}'",
                 "rewards.enabled=false")
    first = subprocess.run(cli("train", "--no-api", *sets(*overrides)), cwd=tmp_path, env=env(),
                           capture_output=True, text=True, timeout=150)
    assert first.returncode == 0, first.stdout + first.stderr
    fingerprint = (ckpt / "identity" / "cert.der").read_bytes()
    more = subprocess.run(cli("train", "--no-api", "--resume", *sets(*overrides, "training.rounds=5")), cwd=tmp_path,
                          env=env(), capture_output=True, text=True, timeout=150)
    out = more.stdout + more.stderr
    assert more.returncode == 0, out
    # It ran rounds 4 and 5 only (2 x 2 steps x 32 samples per node): the first three came from the checkpoint.
    assert "rounds 5" in out and "│ 128 " in out
    assert sorted(p.name for p in ckpt.glob("ckpt-*"))[-1] == "ckpt-00000005.safetensors"
    assert (ckpt / "identity" / "cert.der").read_bytes() == fingerprint  # the same join string


def test_version_and_the_node_s_environment_variables(tmp_path: Path) -> None:
    done = subprocess.run(cli("--version"), env=env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == f"hypergpu, version {hypergpu.__version__}"
    # The join string and token come from the environment, as torchrun users expect: the node
    # gets as far as reading this (deliberately fingerprint-less) join string.
    node_env = dict(env(), HYPERGPU_JOIN="quic://127.0.0.1:9", HYPERGPU_TOKEN="t" * 12, HYPERGPU_NODE_NAME="env-node")
    node = subprocess.run(cli("node", "--device", "cpu"), cwd=tmp_path, env=node_env, capture_output=True,
                          text=True, timeout=60)
    out = node.stdout + node.stderr
    assert node.returncode != 0 and 'join string "quic://127.0.0.1:9" has no #fingerprint' in out, out


def test_the_language_model_demo_trains_a_gpt_on_the_stdlib(tmp_path: Path) -> None:
    overrides = ("nodes.count=2", "training.rounds=2", "training.local_steps=3", "training.gpt.n_layer=1",
                 "training.gpt.n_embd=32", "training.gpt.block_size=32", "data.eval_samples=16",
                 "network.node_profiles={}", "rewards.enabled=false", f"data.cache_dir='{tmp_path / 'cache'}'")
    done = subprocess.run(cli("demo", "--task", "lm", "--no-api", *sets(*overrides)), cwd=tmp_path, env=env(),
                          capture_output=True, text=True, timeout=150)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "demo: 2 node processes" in out and "held-out loss" in out and "perplexity" in out
    assert "rounds 2" in out and (tmp_path / "runs" / "demo-lm" / "logs").is_dir()


def test_coordinator_serves_nodes_that_join_from_elsewhere(tmp_path: Path) -> None:
    # each end sends with its own congestion controller: they need not agree
    overrides = (*SMALL, "nodes.count=1", "coordinator.port=0", "rewards.enabled=false", "network.congestion='cubic'")
    coord = subprocess.Popen(cli("coordinator", *sets(*overrides)), cwd=tmp_path, env=env(),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert coord.stdout is not None
        lines: dict[str, str] = {}
        deadline = time.monotonic() + 120
        while "token" not in lines:
            assert time.monotonic() < deadline, lines
            line = coord.stdout.readline()
            assert line, f"the coordinator exited: {lines}"
            key, _, value = line.partition(": ")
            lines[key] = value.strip()
        node = subprocess.run(
            cli("node", "--join", lines["join"], "--token", lines["token"], "--index", "0", "--congestion", "new_reno"),
            cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120,
        )
        assert node.returncode == 0, node.stdout + node.stderr
        assert "sending with new_reno congestion control" in node.stderr
        # Its last words reach the pipe, and no teardown follows them: kept, the objects torch's
        # optimizer loads made triton's bindings report hundreds of lines of "leaks" at exit.
        assert re.search(r"^node \d+: 3 rounds", node.stdout, re.M), node.stdout
        assert "leaked" not in node.stderr, node.stderr[-3000:]
        out, _ = coord.communicate(timeout=60)
    finally:
        if coord.poll() is None:
            coord.kill()
            coord.communicate()
    assert coord.returncode == 0, out
    assert "rounds 3" in out and "chain:" not in out


def _summary(task: str, **figures: float) -> Summary:
    return Summary(rounds=3, accuracy=figures.get("accuracy"), loss=figures.get("loss"), wall_s=2.0, samples=480,
                   reached_target=False, stopped_early=False, task=task, perplexity=figures.get("perplexity"),
                   bits_per_byte=figures.get("bits_per_byte"))


def test_the_summary_line_is_in_the_task_s_units() -> None:
    line = headline(_summary("classification", accuracy=0.9712, loss=0.1))
    assert line.startswith("[bold]accuracy 0.9712[/]  rounds 3  wall 2.0 s  samples 480  samples/s 240")
    lm = headline(_summary("lm", accuracy=0.31, loss=3.8119, perplexity=45.23, bits_per_byte=5.4995))
    assert lm.startswith("[bold]held-out loss 3.8119  perplexity 45.23  bits/byte 5.500[/]  rounds 3")
    assert "accuracy" not in lm
    assert "perplexity n/a  bits/byte n/a" in headline(_summary("lm"))  # stopped before any evaluation


def test_progress_shows_the_task_s_held_out_figures() -> None:
    assert held_out_brief({"test_loss": 0.2, "test_accuracy": 0.95}) == "acc 0.950  "
    lm = {"test_loss": 3.81, "test_accuracy": 0.3, "test_perplexity": 45.2, "test_bits_per_byte": 5.5}
    assert held_out_brief(lm) == "loss 3.810  ppl 45.2  "
    assert held_out_brief({"round": 2}) == ""


def test_the_summary_table_fits_80_columns_and_wide_shows_every_column(capsys: pytest.CaptureFixture[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from hypergpu.cli.common import print_summary

    monkeypatch.setenv("COLUMNS", "80")
    node = {"node_id": 7, "name": "node-7", "status": "active", "rounds_ok": 38, "rounds_missed": 2,
            "updates_accepted": 38, "samples": 24320, "compute_s": 61.5, "utilisation": 0.947, "bytes_sent": 13_680_000,
            "bytes_received": 13_650_000, "refusals": {"late": 2}}
    summary = _summary("classification", accuracy=0.97)
    summary.nodes = [node, {**node, "node_id": 8, "name": "node-8"}]
    print_summary(summary)
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80 and "…" not in out, out
    assert "38/2" in out and "95%" in out and "13.68/13.65" in out and "late=2" in out
    monkeypatch.setenv("COLUMNS", "200")
    print_summary(summary, wide=True)
    wide = capsys.readouterr().out
    assert "compute s" in wide and "61.5" in wide and "…" not in wide
