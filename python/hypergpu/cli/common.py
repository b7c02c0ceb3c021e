"""What the ``hypergpu`` commands share: reading the config, signals, the
end-of-run tables, the dashboard announcement. Command modules import from
here, never from each other."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, NoReturn

import click

from hypergpu.config import load_config
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import ConfigError

if TYPE_CHECKING:
    from hypergpu.api import ApiServer, TrainingService
    from hypergpu.chain.recorder import ChainRecorder
    from hypergpu.coordinator import Summary

#: ``--set KEY=VALUE``, shared by every command that reads a config.
set_option = click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
                          help="override a config field (repeatable)")


def fail(message: str, code: int = 1) -> NoReturn:
    """Print ``error: message`` to stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def exit_without_teardown(code: int = 0) -> NoReturn:
    """Ends a process whose work is done, its output flushed, without the interpreter's teardown.

    A node's teardown is all cost: its full collection over torch's objects made ten nodes on
    two cores take 13-23 s to exit after a stop (issue 17), and objects it leaves alive make
    native extensions report them as leaks (triton's bindings, which torch's optimizer loads,
    print hundreds of lines). The OS takes the memory back at exit; nothing is left to save.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def config_or_exit(file: str | None, overrides: Sequence[str]) -> HyperGPUConfig:
    """The config of FILE with overrides; a bad one ends the command with status 2."""
    try:
        return load_config(file, list(overrides))
    except ConfigError as exc:
        fail(str(exc), 2)


def on_signals(handler: Callable[[], object]) -> None:
    """Call ``handler`` on SIGINT and SIGTERM (from the running loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # platforms without loop signal handlers
            loop.add_signal_handler(sig, handler)


def headline(summary: Summary, wall_s: float | None = None) -> str:
    """The end-of-run line, in the task's own figures: a classifier's accuracy; a
    language model's held-out loss, perplexity and bits per byte (its accuracy is
    only next-token accuracy, which says little)."""
    def num(v: float | None, digits: int) -> str:
        return f"{v:.{digits}f}" if v is not None else "n/a"

    if summary.task == "lm":
        figures = (f"held-out loss {num(summary.loss, 4)}  perplexity {num(summary.perplexity, 2)}  "
                   f"bits/byte {num(summary.bits_per_byte, 3)}")
    else:
        figures = f"accuracy {num(summary.accuracy, 4)}"
    return (
        f"[bold]{figures}[/]  rounds {summary.rounds}  wall {wall_s or summary.wall_s:.1f} s  "
        f"samples {summary.samples}  samples/s {summary.samples_per_s:.0f}"
        + ("  (target reached)" if summary.reached_target else "")
        + ("  (stopped early)" if summary.stopped_early else "")
    )


def print_summary(summary: Summary, wall_s: float | None = None, *, wide: bool = False) -> None:
    """The run's headline (:func:`headline`), a row per node, and refused updates.

    The table fits 80 columns (rounds ok/missed and MB down/up share a column);
    ``wide`` shows every column on its own.
    """
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(headline(summary, wall_s), soft_wrap=True)
    if wide:
        table = Table("node", "name", "status", "rounds ok", "missed", "updates", "samples", "compute s",
                      "util", "MB sent", "MB recv", "refused")
    else:
        table = Table("id", "name", "status", "ok/miss", "samples", "util", "MB dn/up", "refused")
    for n in summary.nodes:
        refused = ", ".join(f"{k}={v}" for k, v in n["refusals"].items()) or "-"
        sent, received = f"{n['bytes_sent'] / 1e6:.2f}", f"{n['bytes_received'] / 1e6:.2f}"
        util = "-" if n.get("utilisation") is None else f"{100 * n['utilisation']:.0f}%"
        if wide:
            table.add_row(
                str(n["node_id"]), n["name"], n["status"], str(n["rounds_ok"]), str(n["rounds_missed"]),
                str(n["updates_accepted"]), str(n["samples"]), f"{n['compute_s']:.1f}", util, sent, received, refused,
            )
        else:
            table.add_row(str(n["node_id"]), n["name"], n["status"], f"{n['rounds_ok']}/{n['rounds_missed']}",
                          str(n["samples"]), util, f"{sent}/{received}", refused)
    console.print(table)
    if summary.refusals:
        console.print("refused updates: " + ", ".join(f"{k}={v}" for k, v in summary.refusals.items()))


def announce_recorder(recorder: ChainRecorder | None) -> None:
    """One line on the chain a run settles on (nothing when settlement is off)."""
    if recorder is None:
        return
    s = recorder.status()
    click.echo(f"chain: {s['kind']} (chain id {s['chain_id']}), session {s['session_id']}, "
               f"distributor {s['deployment']['distributor']}")


def print_rewards(recorder: ChainRecorder, drained: bool | None = True, pending: int = 0) -> None:
    """The rewards table: each node's account, score and reward."""
    from rich.console import Console
    from rich.table import Table

    table = Table("node", "account", "score", "reward (ETH)")
    for row in recorder.table():
        table.add_row(row["name"], row["account"], f"{row['score']:.1f}", f"{row['reward_wei'] / 1e18:.6f}")
    console = Console()
    console.print(table)
    if drained is False:
        console.print(f"[yellow]chain: {pending} writes still queued (kept on disk; `--resume` sends them)[/]")


async def open_api(service: TrainingService, cfg: HyperGPUConfig, host: str | None, port: int | None) -> ApiServer:
    """Serves the dashboard and the API for ``service`` and prints where (the token once)."""
    from hypergpu.api import ApiServer, create_app

    app = create_app(service)
    server = ApiServer(app, host or cfg.api.host, cfg.api.port if port is None else port,
                       any_port_if_taken=port is None)
    await server.start()
    token: str = app.state.token
    # The token rides in the URL fragment: browsers never send it to the server,
    # so it stays out of access logs. Printed once.
    if cfg.api.token is not None:
        click.echo(f"dashboard: {server.url}/  (API token from config api.token)")
    else:
        click.echo(f"dashboard: {server.url}/#token={token}")
        click.echo(f"API token (writes need 'Authorization: Bearer <token>'): {token}")
    return server
