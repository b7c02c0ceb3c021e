"""Run the app with uvicorn inside the caller's asyncio loop (beside the coordinator)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from hypergpu.api.limits import AccessPolicy, ws_refused

log = logging.getLogger("hypergpu.api")


class _RefusedHandshakeFilter(logging.Filter):
    """Drops the error uvicorn's websockets-sansio protocol logs after every WebSocket handshake
    refused with an HTTP response, though it sent that response (Kludex/uvicorn#3138); only
    for the handshakes the request guard refused, so any other such error still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (ws_refused.get() and record.getMessage().startswith("ASGI callable returned without completing"))


_REFUSED_HANDSHAKE_FILTER = _RefusedHandshakeFilter()


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the program that embeds it owns
    SIGINT/SIGTERM (and stops training gracefully before the server)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class ApiServer:
    """uvicorn serving ``app`` on ``host:port`` (0 picks a free port) in this loop.

    With ``any_port_if_taken`` a busy port is not fatal: the server takes a
    free one instead (``hypergpu train`` should not fail over its dashboard).
    """

    def __init__(self, app: FastAPI, host: str = "127.0.0.1", port: int = 8080, *,
                 log_level: str = "warning", any_port_if_taken: bool = False):
        self.app = app
        self.host, self.requested_port = host, port
        self.any_port_if_taken = any_port_if_taken
        access: AccessPolicy | None = getattr(app.state, "access", None)
        if access is not None:
            access.serve_on(host)  # e.g. `--host 192.168.1.5`: the address it is reached at
        # Clients send /ws nothing it needs: no message may be larger than a request body.
        ws_max_size = access.max_body_bytes if access is not None else 1 << 20
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, lifespan="off",
                                ws_max_size=ws_max_size)
        logging.getLogger("uvicorn.error").addFilter(_REFUSED_HANDSHAKE_FILTER)  # once: the same filter object
        self.server = _Server(config)
        self._socket: socket.socket | None = None
        self._task: asyncio.Task[Any] | None = None

    def _bind(self, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        # IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets that say so, and
        # without it a response's headers and body wait out a delayed ACK (about 40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, port))
        except OSError:
            sock.close()
            raise
        return sock

    async def start(self) -> None:
        try:
            self._socket = self._bind(self.requested_port)
        except OSError as exc:
            if not self.any_port_if_taken or self.requested_port == 0:
                raise
            log.warning("API port %d is taken (%s); using a free port", self.requested_port, exc)
            self._socket = self._bind(0)
        self._task = asyncio.ensure_future(self.server.serve(sockets=[self._socket]))
        while not self.server.started:
            if self._task.done():
                self._task.result()
                raise OSError("the API server exited before it started")
            await asyncio.sleep(0.02)

    @property
    def port(self) -> int:
        assert self._socket is not None, "start() first"
        return int(self._socket.getsockname()[1])

    @property
    def url(self) -> str:
        shown = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{shown}:{self.port}"

    def request_exit(self) -> None:
        """Ask the server to finish its requests and exit (safe from a signal handler)."""
        self.server.should_exit = True

    async def wait(self) -> None:
        """Until the server exits (e.g. on SIGINT, which uvicorn handles)."""
        if self._task is not None:
            await asyncio.shield(self._task)

    async def stop(self) -> None:
        self.server.should_exit = True
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._socket is not None:
            self._socket.close()
