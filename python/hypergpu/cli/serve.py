"""``hypergpu serve``, and the API beside ``hypergpu train`` / ``demo``."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import click

from hypergpu.config.schema import HyperGPUConfig


def _announce(server: Any, token: str, from_config: bool) -> None:
    # The token rides in the URL fragment: browsers never send it to the server,
    # so it stays out of access logs. Printed once.
    if from_config:
        click.echo(f"dashboard: {server.url}/  (API token from config api.token)")
    else:
        click.echo(f"dashboard: {server.url}/#token={token}")
        click.echo(f"API token (writes need 'Authorization: Bearer <token>'): {token}")


async def _open_api(service: Any, cfg: HyperGPUConfig, host: str | None, port: int | None) -> Any:
    from hypergpu.api import ApiServer, create_app

    app = create_app(service)
    server = ApiServer(app, host or cfg.api.host, cfg.api.port if port is None else port,
                       any_port_if_taken=port is None)
    await server.start()
    _announce(server, app.state.token, cfg.api.token is not None)
    return server


@click.command("serve")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override a config field (repeatable)")
@click.option("--host", default=None, help="bind address (default: config api.host, 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port (default: config api.port; 0 picks a free one)")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None, help="write each node's log here")
@click.option("--start", "start_now", is_flag=True, help="start training right away")
def serve_cmd(file: str | None, overrides: tuple[str, ...], host: str | None, port: int | None,
              log_dir: str | None, start_now: bool) -> None:
    """Serve the dashboard and the control API; start and stop training from there."""
    from hypergpu.api import TrainingService
    from hypergpu.cli.run import _config, _on_signals

    cfg = _config(file, overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        service = TrainingService(cfg, log_dir=Path(log_dir) if log_dir else None)
        server = await _open_api(service, cfg, host, port)
        _on_signals(lambda: setattr(server.server, "should_exit", True))
        if start_now:
            await service.start()
        try:
            await server.wait()  # until Ctrl-C / SIGTERM
        finally:
            await service.shutdown()
            await server.stop()

    asyncio.run(main())


def train_with_api(cfg: HyperGPUConfig, log_dir: Path | None) -> int:
    """``train``/``demo`` with the dashboard: one run, served while it lasts."""
    from hypergpu.api import TrainingService
    from hypergpu.cli.run import _on_signals, _print_summary

    async def main() -> int:
        service = TrainingService(cfg, log_dir=log_dir)
        server = await _open_api(service, cfg, None, None)
        try:
            session = await service.start()
            _on_signals(service.shutdown_soon)  # Ctrl-C: finish the round, checkpoint, stop
            await service.wait()
            if service.chain is not None:
                from hypergpu.cli.chain import print_rewards

                print_rewards(service.chain)
        finally:
            await service.shutdown()
            await server.stop()
        if session.state == "failed":
            click.echo(f"error: training failed: {session.error}", err=True)
            return 1
        _print_summary(session.result)
        return 0

    return asyncio.run(main())
