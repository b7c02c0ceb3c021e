"""``hypergpu chain up`` / ``status`` / ``requeue`` / ``withdraw``."""

from __future__ import annotations

import json
import os
import secrets
import signal
import sqlite3
import sys
import threading
from typing import Any

import click

from hypergpu.cli.common import config_or_exit, fail, set_option
from hypergpu.errors import HyperGPUError


@click.group("chain")
def chain_group() -> None:
    """Run a local chain and inspect the contracts."""


@chain_group.command("up")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@set_option
def chain_up_cmd(file: str | None, overrides: tuple[str, ...]) -> None:
    """Start anvil, deploy the contracts, print where they are; Ctrl-C stops."""
    from hypergpu.chain import chain_up

    cfg = config_or_exit(file, ("chain.kind='anvil'", *overrides))
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
        fail(str(exc))
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
        # anvil runs in its own process group: a SIGTERM to this command stops it too
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        click.echo("stopping anvil")


@chain_group.command("status")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@set_option
def chain_status_cmd(file: str | None, overrides: tuple[str, ...]) -> None:
    """Show the configured chain, its block, and the last session's settlement queue."""
    from hypergpu.chain import session_state
    from hypergpu.chain.rpc import make_web3, retry

    cfg = config_or_exit(file, overrides)
    chain = cfg.chain
    out: dict[str, Any] = {"kind": chain.kind, "rpc_url": chain.effective_rpc_url}
    states = session_state.list_states(chain)
    if states:
        state = states[-1]
        out["session_id"] = state["session_id"]
        out["sessions"] = [s["session_id"] for s in states]
        out["deployment"] = state.get("deployment")
        queue_file = session_state.session_file(chain, state["session_id"], ".sqlite3")
        if queue_file.exists():
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


session_option = click.option("--session", "session_id", type=int, default=None,
                              help="the session id (default: the newest saved for this chain)")


@chain_group.command("requeue")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@set_option
@session_option
@click.option("--key", "keys", multiple=True, metavar="KEY",
              help="only this operation, e.g. rewards:<session>:<epoch> (repeatable)")
@click.option("--send", is_flag=True, help="connect and send the session's unsent operations now")
@click.option("--timeout", "timeout_s", type=float, default=120.0, show_default=True,
              help="with --send: seconds to wait for the queue to empty")
def chain_requeue_cmd(file: str | None, overrides: tuple[str, ...], session_id: int | None, keys: tuple[str, ...],
                      send: bool, timeout_s: float) -> None:
    """Put a session's failed (and waiting) chain writes back in its queue.

    A `--resume` run sends them, or `--send` now. Exits 1 if --send left some unsent."""
    from hypergpu.chain import admin

    cfg = config_or_exit(file, overrides)
    try:
        out = admin.requeue(cfg.chain, session_id, list(keys) or None, send=send, timeout_s=timeout_s)
    except HyperGPUError as exc:
        fail(str(exc))
    click.echo(json.dumps(out, indent=2))
    if send and not out["drained"]:
        sys.exit(1)


@chain_group.command("withdraw")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@set_option
@session_option
@click.option("--to", "to", default=None, help="recipient address (default: the signing account)")
def chain_withdraw_cmd(file: str | None, overrides: tuple[str, ...], session_id: int | None, to: str | None) -> None:
    """Take back what a completed or cancelled session's pool never allocated (admin key only)."""
    from hypergpu.chain import admin

    cfg = config_or_exit(file, overrides)
    try:
        out = admin.withdraw(cfg.chain, session_id, to)
    except HyperGPUError as exc:
        fail(str(exc))
    click.echo(json.dumps(out, indent=2))
