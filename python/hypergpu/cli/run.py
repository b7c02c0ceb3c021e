"""``hypergpu coordinator``, ``node``, ``train`` and ``demo``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click

from hypergpu.config import load_config
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import ConfigError, HyperGPUError

#: The demo: ten node processes on mixed links train the CNN on digits.
DEMO_OVERRIDES = (
    "nodes.count=10",
    "training.model='cnn'",
    "training.rounds=40",
    "training.local_steps=10",
    "training.batch_size=32",
    "training.lr=0.002",
    "training.target_accuracy=0.97",
    "network.default_profile='average'",
    "network.node_profiles={0='good', 1='good', 2='good', 7='poor', 8='poor', 9='unstable'}",
    "nodes.speed_factors={3=0.5, 8=0.5}",
    "coordinator.round_timeout_s=20.0",
    "coordinator.quorum=0.7",
    "coordinator.checkpoint_dir='runs/demo/checkpoints'",
    "adapt.enabled=true",
)


def _config(file: str | None, overrides: tuple[str, ...] | list[str]) -> HyperGPUConfig:
    try:
        return load_config(file, list(overrides))
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


def _on_signals(handler: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, handler)


@click.command("coordinator")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
@click.option("--token", envvar="HYPERGPU_TOKEN", help="join token nodes must present (default: generated)")
@click.option("--resume", is_flag=True, help="continue from the newest valid checkpoint")
def coordinator_cmd(file: str | None, overrides: tuple[str, ...], token: str | None, resume: bool) -> None:
    """Run a coordinator; nodes join with the printed join string and token."""
    from hypergpu.cli.chain import attach_recorder, finish_recorder
    from hypergpu.coordinator import Coordinator

    cfg = _config(file, overrides)

    async def main() -> None:
        coord = Coordinator(cfg, token=token)
        recorder = await attach_recorder(cfg, coord, resume=resume)
        join = await coord.start()
        click.echo(f"join: {join}")
        if token is None:
            click.echo(f"token: {coord.token}")
        _on_signals(coord.request_stop)
        try:
            summary = await coord.run(resume=resume)
        finally:
            await coord.close()
        _print_summary(summary)
        await finish_recorder(recorder, coord, summary)

    asyncio.run(main())


@click.command("node")
@click.option("--join", "join", required=True, help="the coordinator's join string, quic://host:port#fingerprint")
@click.option("--token", envvar="HYPERGPU_TOKEN", required=True, help="join token (or $HYPERGPU_TOKEN)")
@click.option("--name", default=None, help="node name (default: host-pid)")
@click.option("--index", type=int, default=None, help="ask for this node id (local runs)")
@click.option("--profile", default="perfect", help="link profile to emulate on this node's link")
@click.option("--latency-ms", type=float, default=None, help="custom profile: mean one-way latency")
@click.option("--jitter-ms", type=float, default=0.0, help="custom profile: jitter")
@click.option("--loss", type=float, default=0.0, help="custom profile: packet loss probability")
@click.option("--bandwidth-mbps", type=float, default=None, help="custom profile: bandwidth cap")
@click.option("--speed", type=float, default=1.0, help="speed factor in (0, 1]; < 1 emulates a slower GPU")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seed", type=int, default=None)
@click.option("--threads", type=int, default=1, help="torch intra-op threads for this process")
@click.option("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
def node_cmd(
    join: str,
    token: str,
    name: str | None,
    index: int | None,
    profile: str,
    latency_ms: float | None,
    jitter_ms: float,
    loss: float,
    bandwidth_mbps: float | None,
    speed: float,
    device: str,
    seed: int | None,
    threads: int,
    heartbeat: float,
) -> None:
    """Join a coordinator and train until it says bye."""
    from hypergpu.node.runtime import Node
    from hypergpu.transport import LinkShape

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    seed_value = seed if seed is not None else 0
    try:
        if profile == "custom":
            shape = LinkShape(
                latency_ms=latency_ms or 0.0,
                jitter_ms=jitter_ms,
                loss=loss,
                bandwidth_bps=int(bandwidth_mbps * 1e6) if bandwidth_mbps else None,
                seed=seed_value,
            )
        else:
            shape = LinkShape.profile(profile, seed=seed_value)
    except HyperGPUError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    node = Node(
        join,
        token=token,
        name=name or f"{os.uname().nodename}-{os.getpid()}",
        index=index,
        device=device,
        speed_factor=speed,
        shape=shape,
        seed=seed,
        threads=threads,
        heartbeat_s=heartbeat,
    )
    try:
        report = asyncio.run(node.run())
    except HyperGPUError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    click.echo(f"node {report.node_id}: {report.rounds} rounds, {report.samples} samples, acks {dict(report.acks)}")


@click.command("train")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None, help="write each node's log here")
@click.option("--api/--no-api", default=True, show_default=True, help="serve the dashboard and API while training")
def train_cmd(file: str | None, overrides: tuple[str, ...], log_dir: str | None, api: bool) -> None:
    """Train FILE's configuration: a coordinator here plus N local node processes."""
    sys.exit(_train(_config(file, overrides), Path(log_dir) if log_dir else None, api))


@click.command("demo")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a demo setting (repeatable)")
@click.option("--api/--no-api", default=True, show_default=True, help="serve the dashboard and API while training")
def demo_cmd(overrides: tuple[str, ...], api: bool) -> None:
    """Ten node processes on mixed links train a CNN on digits to >= 97%."""
    cfg = _config(None, [*DEMO_OVERRIDES, *overrides])
    click.echo(
        f"demo: {cfg.nodes.count} node processes, profiles "
        + ", ".join(f"{i}:{cfg.network.profile_of(i)}" for i in range(cfg.nodes.count))
    )
    sys.exit(_train(cfg, Path("runs/demo/logs"), api))


def _train(cfg: HyperGPUConfig, log_dir: Path | None, api: bool = False) -> int:
    if api:
        from hypergpu.cli.serve import train_with_api

        return train_with_api(cfg, log_dir)
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from hypergpu.cli.chain import attach_recorder, finish_recorder
    from hypergpu.cluster import LocalNodes
    from hypergpu.coordinator import Coordinator

    async def main() -> int:
        run_cfg = cfg.model_copy(update={"coordinator": cfg.coordinator.model_copy(update={"port": 0})})
        coord = Coordinator(run_cfg)
        recorder = await attach_recorder(cfg, coord)
        join = await coord.start()
        nodes = LocalNodes(cfg, join, coord.token, log_dir)
        nodes.start_all()
        _on_signals(coord.request_stop)
        started = time.perf_counter()
        columns = (TextColumn("round {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.description}"),
                   TimeElapsedColumn())
        try:
            with Progress(*columns, transient=False) as progress:
                task = progress.add_task("waiting for nodes", total=cfg.training.rounds)

                async def follow() -> None:
                    async for event in coord.events.subscribe():
                        d = event.data
                        if event.kind == "training" and d.get("type") == "round":
                            acc = d.get("test_accuracy")
                            progress.update(task, completed=d["round"], description=(
                                f"acc {acc:.3f}  " if acc is not None else "") + f"{len(d['reported'])} nodes")

                follower = asyncio.ensure_future(follow())
                try:
                    summary = await coord.run()
                finally:
                    follower.cancel()
        finally:
            await coord.close()
            await asyncio.to_thread(nodes.stop)
        _print_summary(summary, time.perf_counter() - started)
        await finish_recorder(recorder, coord, summary)
        return 0

    return asyncio.run(main())


def _print_summary(summary: Any, wall_s: float | None = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    acc = f"{summary.accuracy:.4f}" if summary.accuracy is not None else "n/a"
    console.print(
        f"[bold]accuracy {acc}[/]  rounds {summary.rounds}  wall {wall_s or summary.wall_s:.1f} s  "
        f"samples {summary.samples}  samples/s {summary.samples_per_s:.0f}"
        + ("  (target reached)" if summary.reached_target else "")
        + ("  (stopped early)" if summary.stopped_early else ""),
        soft_wrap=True,
    )
    table = Table("node", "name", "status", "rounds ok", "missed", "updates", "samples", "compute s",
                  "MB sent", "MB recv", "refused")
    for n in summary.nodes:
        table.add_row(
            str(n["node_id"]), n["name"], n["status"], str(n["rounds_ok"]), str(n["rounds_missed"]),
            str(n["updates_accepted"]), str(n["samples"]), f"{n['compute_s']:.1f}",
            f"{n['bytes_sent'] / 1e6:.2f}", f"{n['bytes_received'] / 1e6:.2f}",
            ", ".join(f"{k}={v}" for k, v in n["refusals"].items()) or "-",
        )
    console.print(table)
    if summary.refusals:
        console.print("refused updates: " + ", ".join(f"{k}={v}" for k, v in summary.refusals.items()))
