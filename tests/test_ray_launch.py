"""Node processes under Ray actors (``nodes.launcher = "ray"``, the ``ray`` extra):
a real Ray instance started on this machine for the run, real node processes
(children of the actors' Ray workers, not of this process), the real QUIC
transport, digits. Without Ray installed, such a run stops at once with the
command that installs it."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from test_extras import hypergpu_cli, sets

from hypergpu.cli.run import launcher_overrides, train_cmd
from hypergpu.config import load_config
from hypergpu.errors import ConfigError
from hypergpu.launch import RayNodes, local_run

RAY_RUN = (
    "nodes.count=2",
    "nodes.launcher='ray'",
    "training.rounds=3",
    "training.model='mlp'",
    "training.hidden_sizes=[32]",
    "training.local_steps=10",
    "training.lr=0.01",
    "coordinator.quorum=1.0",  # every round waits for both nodes
    "coordinator.checkpoint_every=0",
    "coordinator.heartbeat_interval_s=0.5",
    "rewards.enabled=false",
)


def parent_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    raise AssertionError(f"/proc/{pid}/status names no parent")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_run_whose_nodes_are_ray_actors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")  # no network here; Ray's processes inherit it
    cfg = load_config(None, [*RAY_RUN, f"data.cache_dir='{tmp_path / 'cache'}'",
                             f"coordinator.checkpoint_dir='{tmp_path / 'checkpoints'}'"])  # node keys beside it

    async def train() -> tuple[Any, ...]:
        async with local_run(cfg, log_dir=tmp_path / "logs") as run:
            nodes = run.nodes
            assert isinstance(nodes, RayNodes) and nodes.owns_ray
            # While the nodes run: each process's parent is the worker of the actor that started it.
            parents = {i: parent_of(p["pid"]) for i, p in nodes.placed.items()}
            return nodes, parents, run.coordinator, await run.train(join_timeout_s=120)

    nodes, parents, coord, summary = asyncio.run(train())
    assert summary.rounds == 3
    assert [r.reported for r in coord.history] == [[0, 1]] * 3, [r.reported for r in coord.history]
    assert sorted(nodes.placed) == [0, 1]
    for index, placed in nodes.placed.items():
        assert parents[index] == placed["worker_pid"] != os.getpid(), (parents, nodes.placed)
        assert not Path(f"/proc/{placed['pid']}").exists()  # exited, and reaped by its worker
        log = (tmp_path / "logs" / f"node-{index}.log").read_text()
        assert f"node {index}: 3 rounds" in log, log
    assert not ray.is_initialized() and not nodes.owns_ray  # the instance it started is shut down


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_kill_crashes_one_node_and_stop_kills_the_stragglers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import ray

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    cfg = load_config(None, [*RAY_RUN, f"coordinator.checkpoint_dir='{tmp_path / 'checkpoints'}'"])
    # No coordinator listens here: the nodes keep retrying until they are killed.
    nodes = RayNodes(cfg, f"quic://127.0.0.1:9#{'ab' * 32}", "t0ken-for-test", tmp_path / "logs")
    try:
        nodes.start_all()
        pids = {i: int(p["pid"]) for i, p in nodes.placed.items()}
        nodes.kill(0)
        assert not Path(f"/proc/{pids[0]}").exists() and Path(f"/proc/{pids[1]}").exists()
    finally:
        codes = nodes.stop(timeout_s=1.0)
    assert codes == {0: -9, 1: -9}  # node 0 killed by kill(), node 1 by stop() after its timeout
    assert not Path(f"/proc/{pids[1]}").exists() and not ray.is_initialized()


def test_without_ray_a_ray_run_stops_at_once_with_the_install_command(tmp_path: Path) -> None:
    # digits needs the data extra, hidden too: the missing ray is found before the data is loaded.
    done = hypergpu_cli(tmp_path, "train", "--no-api", "--launcher", "ray",
                        *sets("nodes.count=2", "training.rounds=2", "rewards.enabled=false"))
    assert done.returncode != 0
    assert "pip install 'hypergpu[ray]'" in done.stderr, done.stdout + done.stderr
    assert "hypergpu[data]" not in done.stderr and "Traceback" not in done.stderr, done.stderr


def test_the_cli_flags_stand_for_the_launcher_keys() -> None:
    cfg = load_config(None, launcher_overrides(None, "ray://head:10001"))
    assert cfg.nodes.launcher == "ray" and cfg.nodes.ray_address == "ray://head:10001"
    cfg = load_config(None, ["nodes.launcher='ray'", *launcher_overrides("local", None)])
    assert cfg.nodes.launcher == "local" and cfg.nodes.ray_address is None
    refused = CliRunner().invoke(train_cmd, ["--launcher", "local", "--ray-address", "auto"])
    assert refused.exit_code == 2 and "--ray-address is for --launcher ray" in refused.output


@pytest.mark.parametrize(("override", "named"), [
    ("nodes.launcher='kubernetes'", "nodes.launcher"),
    ("nodes.ray_cpus=-1", "nodes.ray_cpus"),
    ("nodes.ray_gpus=1000", "nodes.ray_gpus"),
    ("nodes.ray_address='http://head:8265'", "nodes.ray_address"),
    ("nodes.ray_address=''", "nodes.ray_address"),
    ("nodes.ray_cluster='auto'", "nodes.ray_cluster"),
])
def test_invalid_launcher_settings_are_refused_by_name(override: str, named: str) -> None:
    with pytest.raises(ConfigError, match=named.replace(".", r"\.")):
        load_config(None, [override])
