"""``hypergpu coordinator``, ``node``, ``train`` and ``demo``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import click

from hypergpu.cli.common import (
    announce_recorder,
    config_or_exit,
    exit_without_teardown,
    fail,
    on_signals,
    open_api,
    print_rewards,
    print_summary,
    set_option,
)
from hypergpu.config.network import Congestion
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import HyperGPUError

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from hypergpu.events import EventBus

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

#: ``demo --task lm``: four node processes on mixed links train a small GPT on the stdlib's source.
DEMO_LM_OVERRIDES = (
    "nodes.count=4",
    "training.model='gpt'",
    "training.gpt.n_layer=2",
    "training.gpt.n_head=4",
    "training.gpt.n_embd=128",
    "training.gpt.block_size=128",
    "training.optimizer='adamw'",
    "training.lr=0.002",
    "training.rounds=30",
    "training.local_steps=10",
    "training.batch_size=16",
    "training.target_loss=2.2",
    "data.dataset='stdlib'",
    "network.default_profile='good'",
    "network.node_profiles={3='average'}",
    "coordinator.round_timeout_s=60.0",
    "coordinator.quorum=0.75",
    "coordinator.checkpoint_dir='runs/demo-lm/checkpoints'",
    "adapt.enabled=true",
)


resume_option = click.option(
    "--resume", is_flag=True, help="continue from the newest valid checkpoint (and send queued chain writes)")


@click.command("coordinator")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@set_option
@click.option("--token", envvar="HYPERGPU_TOKEN", help="join token nodes must present (default: generated)")
@resume_option
@click.option("--wide", is_flag=True, help="every column of the per-node summary (default: fits 80 columns)")
def coordinator_cmd(file: str | None, overrides: tuple[str, ...], token: str | None, resume: bool,
                    wide: bool) -> None:
    """Run a coordinator; nodes join with the printed join string and token."""
    cfg = config_or_exit(file, overrides)

    async def main() -> None:
        from hypergpu.launch import local_run

        async with local_run(cfg, token=token, resume=resume, spawn_nodes=False) as run:
            announce_recorder(run.recorder)
            for join in run.coordinator.join_strings:
                click.echo(f"join: {join}")
            if run.coordinator.resumed_from is not None:  # the parameters it goes on from, by hash
                click.echo(f"resumed: round {run.coordinator.resumed_from} parameters {run.coordinator.model.hash}")
            if token is None:
                click.echo(f"token: {run.coordinator.token}")
            on_signals(run.coordinator.request_stop)
            summary = await run.train()
        print_summary(summary, wide=wide)
        if run.recorder is not None:
            print_rewards(run.recorder, run.drained, run.pending_writes)

    try:
        asyncio.run(main())
    except HyperGPUError as exc:
        fail(str(exc))


@click.command("node")
@click.option("--join", "join", envvar="HYPERGPU_JOIN", required=True,
              help="the coordinator's join string, quic://host:port#fingerprint (or $HYPERGPU_JOIN)")
@click.option("--token", envvar="HYPERGPU_TOKEN", required=True, help="join token (or $HYPERGPU_TOKEN)")
@click.option("--name", envvar="HYPERGPU_NODE_NAME", default=None, help="node name (or $HYPERGPU_NODE_NAME; default: host-pid)")
@click.option("--index", type=int, default=None, help="ask for this node id (local runs)")
@click.option("--profile", default="perfect", help="link profile to emulate on this node's link")
@click.option("--latency-ms", type=float, default=None, help="custom profile: mean one-way latency")
@click.option("--jitter-ms", type=float, default=0.0, help="custom profile: jitter")
@click.option("--loss", type=float, default=0.0, help="custom profile: packet loss probability")
@click.option("--bandwidth-mbps", type=float, default=None, help="custom profile: bandwidth cap")
@click.option("--congestion", type=click.Choice(get_args(Congestion)), default="bbr", show_default=True,
              help="the congestion controller this node sends with (network.congestion of a local run)")
@click.option("--speed", type=float, default=1.0, help="speed factor in (0, 1]; < 1 emulates a slower GPU")
@click.option("--device", default="auto", type=click.Choice(["auto", "cpu", "cuda"]))
@click.option("--seed", type=int, default=None)
@click.option("--threads", type=int, default=1, help="torch intra-op threads for this process")
@click.option("--heartbeat", type=float, default=1.0, help="seconds between heartbeats")
@click.option("--give-up-s", type=float, default=None,
              help="stop retrying an unreachable coordinator after this many seconds (default: never)")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None,
              help="checkpoint the inner optimizer here after every round, and resume from it")
@click.option("--key-file", type=click.Path(dir_okay=False), envvar="HYPERGPU_KEY_FILE", default=None,
              help="this node's secp256k1 key, created on first run (mode 0600); the coordinator binds the node's "
              "name to it (or $HYPERGPU_KEY_FILE; default: <state-dir>/<name>/node.key with --state-dir, else "
              "~/.config/hypergpu/node.key)")
@click.option("--payout", envvar="HYPERGPU_PAYOUT", default=None, metavar="ADDRESS",
              help="pay this node's rewards to ADDRESS (signed in its hello; default: its key's address)")
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
    congestion: Congestion,
    speed: float,
    device: str,
    seed: int | None,
    threads: int,
    heartbeat: float,
    give_up_s: float | None,
    state_dir: str | None,
    key_file: str | None,
    payout: str | None,
) -> None:
    """Join a coordinator and train until it says bye."""
    from hypergpu.node.runtime import Backoff, Node, NodeReport
    from hypergpu.transport import LinkShape, TransportConfig

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
        fail(str(exc), 2)
    node = Node(
        join, token=token, name=name or f"{os.uname().nodename}-{os.getpid()}", index=index, device=device,
        speed_factor=speed, shape=shape, seed=seed, threads=threads, heartbeat_s=heartbeat,
        backoff=Backoff(give_up_s=give_up_s), state_dir=state_dir, key=key_file, payout=payout,
        transport=TransportConfig(congestion=congestion),
    )
    async def main() -> NodeReport:
        on_signals(node.leave)  # SIGTERM/SIGINT: say bye once the round in hand is sent, and exit
        return await node.run()

    try:
        report = asyncio.run(main())
    except HyperGPUError as exc:
        fail(str(exc))
    click.echo(f"node {report.node_id}: {report.rounds} rounds, {report.samples} samples, acks {dict(report.acks)}")
    exit_without_teardown()  # the run is over and the link closed


@click.command("node-key")
@click.option("--key-file", type=click.Path(dir_okay=False), envvar="HYPERGPU_KEY_FILE", default=None,
              help="the key file (or $HYPERGPU_KEY_FILE; default as for `hypergpu node`)")
@click.option("--name", envvar="HYPERGPU_NODE_NAME", default=None, help="the node's name (with --state-dir)")
@click.option("--state-dir", type=click.Path(file_okay=False), default=None, help="the node's state directory")
def node_key_cmd(key_file: str | None, name: str | None, state_dir: str | None) -> None:
    """Print a node's key file and address (creating the key if there is none): the address
    to give a coordinator's nodes.allow, and where the node is paid unless it names --payout."""
    from hypergpu.identity import NodeKey, default_key_file

    try:
        key = NodeKey.load_or_create(key_file or default_key_file(name, state_dir))
    except HyperGPUError as exc:
        fail(str(exc))
    click.echo(f"key file: {key.path}")
    click.echo(f"address: {key.address}")


@click.command("train")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@set_option
@click.option("--log-dir", type=click.Path(file_okay=False), default=None, help="write each node's log here")
@click.option("--api/--no-api", default=True, show_default=True, help="serve the dashboard and API while training")
@click.option("--wide", is_flag=True, help="every column of the per-node summary (default: fits 80 columns)")
@resume_option
@click.option("--launcher", type=click.Choice(["local", "ray"]), default=None,
              help="where the node processes run (nodes.launcher): here, or under Ray actors (the ray extra)")
@click.option("--ray-address", default=None, metavar="ADDRESS",
              help="the Ray cluster to join (nodes.ray_address; implies --launcher ray): auto, ray://host:port "
              "or host:port; without it --launcher ray starts a Ray instance here")
def train_cmd(file: str | None, overrides: tuple[str, ...], log_dir: str | None, api: bool, wide: bool,
              resume: bool, launcher: str | None, ray_address: str | None) -> None:
    """Train FILE's configuration: a coordinator here plus N node processes (local, or on Ray)."""
    overrides += launcher_overrides(launcher, ray_address)
    sys.exit(train_here(config_or_exit(file, overrides), Path(log_dir) if log_dir else None, api, wide, resume))


def launcher_overrides(launcher: str | None, ray_address: str | None) -> tuple[str, ...]:
    """``--launcher``/``--ray-address`` as the config overrides they stand for (after any ``--set``)."""
    if ray_address is not None and launcher == "local":
        raise click.UsageError("--ray-address is for --launcher ray")
    sets = (f"nodes.ray_address={json.dumps(ray_address)}", "nodes.launcher='ray'") if ray_address is not None else ()
    return sets + ((f"nodes.launcher='{launcher}'",) if launcher is not None else ())


@click.command("demo")
@click.option("--task", type=click.Choice(["classification", "lm"]), default="classification", show_default=True,
              help="classification: a CNN on digits (fast); lm: a small GPT on the Python stdlib's source")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a demo setting (repeatable)")
@click.option("--api/--no-api", default=True, show_default=True, help="serve the dashboard and API while training")
@click.option("--wide", is_flag=True, help="every column of the per-node summary (default: fits 80 columns)")
@resume_option
def demo_cmd(task: str, overrides: tuple[str, ...], api: bool, wide: bool, resume: bool) -> None:
    """Ten node processes on mixed links train a CNN on digits to >= 97% (or, with
    --task lm, four train a small GPT on the standard library's source to a held-out loss of 2.2)."""
    demo = DEMO_LM_OVERRIDES if task == "lm" else DEMO_OVERRIDES
    cfg = config_or_exit(None, [*demo, *overrides])
    click.echo(
        f"demo: {cfg.nodes.count} node processes, profiles "
        + ", ".join(f"{i}:{cfg.network.profile_of(i)}" for i in range(cfg.nodes.count))
    )
    sys.exit(train_here(cfg, Path("runs/demo-lm/logs" if task == "lm" else "runs/demo/logs"), api, wide, resume))


def train_here(cfg: HyperGPUConfig, log_dir: Path | None, api: bool = False, wide: bool = False,
               resume: bool = False) -> int:
    """Trains ``cfg`` with local node processes, with the dashboard or a progress bar; the exit status."""
    try:
        return asyncio.run(_train_with_api(cfg, log_dir, wide, resume) if api
                           else _train_with_progress(cfg, log_dir, wide, resume))
    except HyperGPUError as exc:
        click.echo(f"error: {exc}", err=True)
        return 1


async def _train_with_progress(cfg: HyperGPUConfig, log_dir: Path | None, wide: bool, resume: bool) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from hypergpu.launch import local_run

    columns = (TextColumn("round {task.completed}/{task.total}"), BarColumn(), TextColumn("{task.description}"),
               TimeElapsedColumn())
    async with local_run(cfg, log_dir=log_dir, resume=resume) as run:
        announce_recorder(run.recorder)
        on_signals(run.coordinator.request_stop)
        started = time.perf_counter()
        with Progress(*columns, transient=False) as progress:
            task = progress.add_task("waiting for nodes", total=cfg.training.rounds)
            follower = asyncio.ensure_future(_follow_rounds(run.coordinator.events, progress, task))
            try:
                summary = await run.train()
            finally:
                follower.cancel()
    print_summary(summary, time.perf_counter() - started, wide=wide)
    if run.recorder is not None:
        print_rewards(run.recorder, run.drained, run.pending_writes)
    return 0


async def _follow_rounds(events: EventBus, progress: Progress, task: TaskID) -> None:
    async for event in events.subscribe():
        d = event.data
        if event.kind == "training" and d.get("type") == "round":
            progress.update(task, completed=d["round"], description=held_out_brief(d) + f"{len(d['reported'])} nodes")


def held_out_brief(round_data: dict[str, Any]) -> str:
    """A round event's evaluation for the progress bar: a language model's loss and
    perplexity (its accuracy is next-token accuracy), a classifier's accuracy; '' when not evaluated."""
    ppl = round_data.get("test_perplexity")
    if ppl is not None:
        return f"loss {round_data['test_loss']:.3f}  ppl {ppl:.1f}  "
    acc = round_data.get("test_accuracy")
    return f"acc {acc:.3f}  " if acc is not None else ""


async def _train_with_api(cfg: HyperGPUConfig, log_dir: Path | None, wide: bool, resume: bool) -> int:
    """``train``/``demo`` with the dashboard: one run, served while it lasts."""
    from hypergpu.api import TrainingService

    service = TrainingService(cfg, log_dir=log_dir)
    server = await open_api(service, cfg, None, None)
    try:
        session = await service.start(resume=resume)
        on_signals(service.shutdown_soon)  # Ctrl-C: finish the round, checkpoint, stop
        await service.wait()
        if service.chain is not None:
            print_rewards(service.chain)
    finally:
        await service.shutdown()
        await server.stop()
    if session.state == "failed":
        click.echo(f"error: training failed: {session.error}", err=True)
        return 1
    assert session.result is not None
    coord = service.coordinator
    print_summary(session.result, wide=wide)
    return 0
