"""``hypergpu chain up`` / ``chain status``."""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
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
        try:
            stop.wait()
        except KeyboardInterrupt:
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
    state_path = session_state.state_path(chain)
    if state_path.exists():
        state = json.loads(state_path.read_text(encoding="utf-8"))
        out["session_id"] = state["session_id"]
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
