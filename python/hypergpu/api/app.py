"""The FastAPI application: ``create_app(service)``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from hypergpu.api.limits import AccessPolicy, HostGuard, RequestGuard, body_too_large
from hypergpu.api.presets import PresetStore
from hypergpu.api.prometheus import build_registry
from hypergpu.api.routes import chain, config, events, health, nodes, training
from hypergpu.api.security import RateLimiter, new_token
from hypergpu.api.service import TrainingService
from hypergpu.errors import (
    ConfigError,
    ConflictError,
    HyperGPUError,
    InvalidArgumentError,
    UnknownNodeError,
    UnknownPresetError,
    UnknownSessionError,
)

log = logging.getLogger("hypergpu.api")
STATIC = Path(__file__).parent / "static"


def create_app(
    service: TrainingService,
    *,
    token: str | None = None,
    presets_dir: Path | None = None,
    rate_limiter: RateLimiter | None = None,
) -> FastAPI:
    """The control plane for ``service``.

    Writes and ``/ws`` need ``token`` (default: config ``api.token``, else a
    fresh random one; read it from ``app.state.token`` to show it once).
    Browsers from ``api.cors_origins`` may call it cross-origin; no others.
    The ``api`` settings (hosts, origins, body and client caps) and
    everything but training hyper-parameters stay as ``service.config`` has
    them now: see :mod:`hypergpu.api.limits` and :mod:`hypergpu.api.runtime_config`.
    """
    from hypergpu import __version__

    app = FastAPI(
        title="HyperGPU control plane",
        version=__version__,
        description="Configure, start, watch and stop HyperGPU training. Writes and /ws need a bearer token.",
    )
    api = service.config.api
    app.state.service = service
    app.state.startup_config = service.config
    app.state.token = token or api.token or new_token()
    app.state.rate_limiter = rate_limiter or RateLimiter()
    app.state.access = access = AccessPolicy.from_config(api, app.state.token, app.state.rate_limiter)
    app.state.presets = PresetStore(presets_dir or Path(".hypergpu/presets"))
    app.state.metrics_registry = build_registry(service)

    _install_guards(app, access, list(api.cors_origins))

    for module in (health, training, nodes, config, chain, events):
        app.include_router(module.router)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
    def prometheus_metrics() -> Response:
        """Counters and gauges for Prometheus (names prefixed ``hypergpu_``)."""
        return Response(generate_latest(app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)

    _install_error_handlers(app)

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _install_guards(app: FastAPI, access: AccessPolicy, cors_origins: list[str]) -> None:
    # Each add_middleware wraps the ones before it. A request meets, in order: the Host
    # check, CORS (so a refusal below still carries its headers to an allowed page), the
    # token / size / WebSocket checks on headers, and last the count of a chunked body.
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=access.max_body_bytes)
    app.add_middleware(RequestGuard, policy=access)
    if cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(HostGuard, policy=access)


def _error(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"detail": message, **extra}, status_code=status)


def _reply_with(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def reply(request: Request, exc: Exception) -> JSONResponse:
        # A LookupError's message is its first argument (str() would quote a KeyError's).
        return _error(status, str(exc.args[0]) if isinstance(exc, LookupError) and exc.args else str(exc))

    return reply


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(413)
    async def body_over_the_cap(request: Request, exc: Exception) -> JSONResponse:
        # Starlette's count of a chunked body passed the cap: say which cap it passed.
        refusal = body_too_large(request.app.state.access.max_body_bytes)
        return JSONResponse({"detail": refusal.message}, status_code=413)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's list of problems, plus one line naming each offending field.
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return JSONResponse(
            {"detail": jsonable_errors(exc.errors()), "message": "; ".join(problems)}, status_code=422
        )

    # Errors that name what the request got wrong, and the status each gets.
    # Starlette picks the most specific class registered, so these win over
    # the HyperGPUError fallback below.
    for error, status in (
        (ConflictError, 409),
        (UnknownNodeError, 404),
        (UnknownSessionError, 404),
        (UnknownPresetError, 404),
        (ConfigError, 422),
        (InvalidArgumentError, 422),
    ):
        app.add_exception_handler(error, _reply_with(status))

    @app.exception_handler(HyperGPUError)
    async def engine_error(request: Request, exc: HyperGPUError) -> JSONResponse:
        log.warning("request %s %s failed: %s", request.method, request.url.path, exc)
        return _error(400, f"{type(exc).__name__}: {exc}")


def jsonable_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic's error dicts without the parts JSON cannot carry (exceptions in ctx)."""
    out = []
    for e in errors:
        item = {k: v for k, v in e.items() if k in ("loc", "msg", "type")}
        item["loc"] = list(item.get("loc", ()))
        out.append(item)
    return out
