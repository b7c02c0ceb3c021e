"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter, Request

from hypergpu.api.models import Health

router = APIRouter(tags=["health"])


def _health(request: Request) -> Health:
    from hypergpu import __version__

    return Health(status="ok", version=__version__)


@router.get("/health", response_model=Health)
def health(request: Request) -> Health:
    """The server answers."""
    return _health(request)


@router.get("/livez", response_model=Health)
def livez(request: Request) -> Health:
    """The process is alive (restart it if this fails)."""
    return _health(request)


@router.get("/readyz", response_model=Health)
def readyz(request: Request) -> Health:
    """The server is ready to take requests (the service is attached)."""
    if getattr(request.app.state, "service", None) is None:
        return Health(status="starting", version=_health(request).version)
    return _health(request)
