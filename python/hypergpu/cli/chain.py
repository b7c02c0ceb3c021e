"""``hypergpu chain up`` / ``chain status``, and the rewards hooks of the run commands."""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import threading
from typing import TYPE_CHECKING, Any

import click

from hypergpu.errors import HyperGPUError

if TYPE_CHECKING:
    from hypergpu.chain.recorder import ChainRecorder
    from hypergpu.config.schema import HyperGPUConfig


# --- used by coordinator / train / demo -------------------------------------------------


async def attach_recorder(cfg: HyperGPUConfig, coord: Any, *, resume: bool = False) -> ChainRecorder | None:
    """Starts a chain recorder (off the event loop) and attaches it, if ``rewards.enabled``."""
    if not cfg.rewards.enabled:
        return None
    from hypergpu.chain.recorder import ChainRecorder

    try:
        recorder = await asyncio.to_thread(ChainRecorder(cfg, resume=resume).start, coord)
    except HyperGPUError as exc:
        click.echo(f"error: chain recorder could not start: {exc}", err=True)
        sys.exit(1)
    coord.observers.append(recorder)
    s = recorder.status()
    click.echo(f"chain: {s['kind']} (chain id {s['chain_id']}), session {s['session_id']}, "
               f"distributor {s['deployment']['distributor']}")
    return recorder


async def finish_recorder(recorder: ChainRecorder | None, coord: Any, summary: Any) -> None:
    """Settles the last epoch, waits (bounded) for the chain, prints the rewards table."""
    if recorder is None:
        return
    try:
        drained = await asyncio.to_thread(recorder.finish, coord, complete=not summary.stopped_early)
        print_rewards(recorder, drained)
    finally:
        await asyncio.to_thread(recorder.close)


def print_rewards(recorder: ChainRecorder, drained: bool = True) -> None:
    """The rewards table: each node's account, score and reward."""
    from rich.console import Console
    from rich.table import Table

    table = Table("node", "account", "score", "reward (ETH)")
    for row in recorder.table():
        table.add_row(row["name"], row["account"], f"{row['score']:.1f}", f"{row['reward_wei'] / 1e18:.6f}")
    console = Console()
    console.print(table)
    if not drained:
        console.print(f"[yellow]chain: {recorder.status()['queue_depth']} writes still queued "
                      f"(kept on disk; `--resume` sends them)[/]")


# --- hypergpu chain ------------------------------------------------------------------


@click.group("chain")
def chain_group() -> None:
    """Run a local chain and inspect the contracts."""


@chain_group.command("up")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
def chain_up_cmd(file: str | None, overrides: tuple[str, ...]) -> None:
    """Start anvil, deploy the contracts, print where they are; Ctrl-C stops."""
    from hypergpu.chain import chain_up
    from hypergpu.cli.run import _config

    cfg = _config(file, ("chain.kind='anvil'", *overrides))
    chain = cfg.chain
    generated = False
    if not os.environ.get(chain.key_env) and chain.keystore_path is None:
        # A dev key for this local chain, so a coordinator started later holds the
        # coordinator role of the contracts deployed here.
        os.environ[chain.key_env] = "0x" + secrets.token_hex(32)
        generated = True
    try:
        anvil, client, deployment = chain_up(chain)
    except HyperGPUError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    with anvil:
        click.echo(f"rpc: {anvil.url} (chain id {client.w3.eth.chain_id})")
        click.echo(f"coordinator account: {client.address}")
        for name, address in deployment.to_dict().items():
            if address:
                click.echo(f"{name}: {address}")
        click.echo("use with:\n  " + " ".join([
            "--set chain.kind='anvil'", f"--set chain.anvil_port={chain.anvil_port}",
            f"--set chain.registry_address='{deployment.registry}'",
            f"--set chain.tracker_address='{deployment.tracker}'",
            f"--set chain.distributor_address='{deployment.distributor}'",
        ]))
        if generated:
            click.echo(f"  and export {chain.key_env}={os.environ[chain.key_env]}  (dev key of this local chain)")
        click.echo("Ctrl-C stops the chain.")
        stop = threading.Event()
        try:
            stop.wait()
        except KeyboardInterrupt:
            click.echo("stopping anvil")


@chain_group.command("status")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
def chain_status_cmd(file: str | None, overrides: tuple[str, ...]) -> None:
    """Show the configured chain, its block, and the last session's settlement queue."""
    import json

    from hypergpu.chain.client import make_web3, retry
    from hypergpu.cli.run import _config

    cfg = _config(file, overrides)
    chain = cfg.chain
    out: dict[str, Any] = {"kind": chain.kind, "rpc_url": chain.effective_rpc_url}
    state_path = chain.queue_path.with_suffix(".session.json")
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        out["session_id"] = state["session_id"]
        out["deployment"] = state.get("deployment")
        queue_file = chain.queue_path.with_name(f"{chain.queue_path.stem}-{state['session_id']}.sqlite3")
        if queue_file.exists():
            import sqlite3

            with sqlite3.connect(queue_file) as db:
                out["queue"] = dict(db.execute("SELECT status, COUNT(*) FROM ops GROUP BY status").fetchall())
    if chain.kind != "embedded":
        try:
            w3 = make_web3(chain)
            quick = chain.model_copy(update={"retries": 0})
            out.update(connected=True, chain_id=retry(quick, "eth_chainId", lambda: w3.eth.chain_id),
                       block_number=retry(quick, "eth_blockNumber", lambda: w3.eth.block_number))
        except HyperGPUError as exc:
            out.update(connected=False, error=str(exc))
    click.echo(json.dumps(out, indent=2))
