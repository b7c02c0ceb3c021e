"""The control plane on a background thread with its own event loop.

For programs (and tests) whose main thread is busy elsewhere: the service,
its runs and uvicorn all live in that thread's loop, as in ``hypergpu serve``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from hypergpu.api.app import create_app
from hypergpu.api.security import RateLimiter
from hypergpu.api.server import ApiServer
from hypergpu.api.service import TrainingService
from hypergpu.config.schema import HyperGPUConfig

T = TypeVar("T")


class BackgroundApi:
    """``with BackgroundApi(config) as api: httpx.get(api.url + "/api/status")``."""

    def __init__(
        self,
        config: HyperGPUConfig,
        *,
        token: str | None = None,
        presets_dir: Path | None = None,
        log_dir: Path | None = None,
        rate_limiter: RateLimiter | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ):
        self.config, self.host, self.port_requested = config, host, port
        self._kwargs = {"token": token, "presets_dir": presets_dir, "rate_limiter": rate_limiter}
        self.log_dir = log_dir
        self.loop = asyncio.new_event_loop()
        self.service: TrainingService | None = None
        self.server: ApiServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="hypergpu-api", daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._serve())
        finally:
            self.loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        try:
            self.service = TrainingService(self.config, log_dir=self.log_dir)
            app = create_app(self.service, **self._kwargs)  # type: ignore[arg-type]
            self.token: str = app.state.token
            self.server = ApiServer(app, self.host, self.port_requested)
            await self.server.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            raise
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self.service.shutdown()
            await self.server.stop()

    @property
    def url(self) -> str:
        assert self.server is not None
        return self.server.url

    def start(self, timeout_s: float = 30.0) -> BackgroundApi:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError(f"the API server did not start within {timeout_s} s")
        if self._error is not None:
            raise self._error
        return self

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float | None = None) -> T:
        """Run a coroutine in the server's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` in the server's loop (e.g. publish an event) without waiting."""
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout_s: float = 60.0) -> None:
        if self._stop is not None and self._thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout_s)

    def __enter__(self) -> BackgroundApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


__all__ = ["BackgroundApi"]
