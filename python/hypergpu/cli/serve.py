"""``hypergpu serve``: the dashboard and the control API, runs started from there."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import click

from hypergpu.cli.common import config_or_exit, on_signals, open_api, set_option


@click.command("serve")
@click.argument("file", required=False, type=click.Path(dir_okay=False))
@set_option
@click.option("--host", default=None, help="bind address (default: config api.host, 127.0.0.1)")
@click.option("--port", type=int, default=None, help="port (default: config api.port; 0 picks a free one)")
@click.option("--log-dir", type=click.Path(file_okay=False), default=None, help="write each node's log here")
@click.option("--start", "start_now", is_flag=True, help="start training right away")
def serve_cmd(file: str | None, overrides: tuple[str, ...], host: str | None, port: int | None,
              log_dir: str | None, start_now: bool) -> None:
    """Serve the dashboard and the control API; start and stop training from there."""
    from hypergpu.api import TrainingService

    cfg = config_or_exit(file, overrides)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    async def main() -> None:
        service = TrainingService(cfg, log_dir=Path(log_dir) if log_dir else None)
        server = await open_api(service, cfg, host, port)
        on_signals(server.request_exit)
        if start_now:
            await service.start()
        try:
            await server.wait()  # until Ctrl-C / SIGTERM
        finally:
            await service.shutdown()
            await server.stop()

    asyncio.run(main())
