"""Training status, metrics, sessions, and start / stop / pause / resume."""

from __future__ import annotations

import csv
import io
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Query
from fastapi.responses import Response

from hypergpu.api.models import Action, MetricPoint, Metrics, Session, StartRequest, Status
from hypergpu.api.routes.deps import Startup, get_service
from hypergpu.api.runtime_config import check_runtime_change
from hypergpu.api.security import require_writer
from hypergpu.api.service import TrainingService

router = APIRouter(prefix="/api", tags=["training"])
Service = Annotated[TrainingService, Depends(get_service)]
SessionId = Annotated[int | None, Query(ge=1, le=2**31, description="a session id; default: the latest")]

Responses = dict[int | str, dict[str, Any]]
CONFLICT: Responses = {409: {"description": "not possible in the current state (e.g. start while running)"}}
WRITE: Responses = {
    400: {"description": "malformed request body (not JSON) or the engine refused the request"},
    401: {"description": "missing or invalid bearer token"},
    413: {"description": "request body larger than api.max_body_bytes"},
    429: {"description": "too many writes or failed token checks"},
}


@router.get("/status", response_model=Status)
def status(service: Service) -> Status:
    """Epoch, round, loss, accuracy, progress and ETA of the current (or last) run."""
    return Status(**service.status())


After = Annotated[int | None, Query(ge=0, le=2**62, description="only rounds after this one (the last round seen)")]
Limit = Annotated[int | None, Query(ge=1, le=1_000_000, description="at most this many points, oldest first")]


@router.get("/metrics", response_model=Metrics, responses={404: {"description": "unknown session"}})
def metrics(service: Service, session: SessionId = None, after: After = None, limit: Limit = None) -> Metrics:
    """Per-round loss, accuracy, samples and duration of a run; ``after`` and ``limit`` page
    through a long run (the points are kept in a file, not in memory)."""
    s = service.session(session) if session is not None else service.current
    return Metrics(
        session=s.id if s else None,
        label=s.label if s else None,
        task=(s.config if s else service.config).task,
        points=[MetricPoint(**p) for p in service.metrics(s, after=after, limit=limit)],
    )


@router.get("/metrics.csv", response_class=Response, responses={
    200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "one row per round"},
    404: {"description": "unknown session"},
})
def metrics_csv(service: Service, session: SessionId = None) -> Response:
    """The same per-round metrics as CSV (one row per round)."""
    s = service.session(session) if session is not None else service.current
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(MetricPoint.model_fields), lineterminator="\n")
    writer.writeheader()
    for point in service.metrics(s):
        writer.writerow(point)
    name = f"hypergpu-session-{s.id}-metrics.csv" if s else "hypergpu-metrics.csv"
    return Response(out.getvalue(), media_type="text/csv",
                             headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get("/sessions", response_model=list[Session])
def sessions(service: Service) -> list[Session]:
    """Every run this server started, oldest first, with its summary once it ended."""
    return [Session(**s.as_dict()) for s in service.sessions]


@router.get("/sessions/{session_id}", response_model=Session, responses={404: {"description": "unknown session"}})
def session_detail(service: Service, session_id: int) -> Session:
    return Session(**service.session(session_id).as_dict())


def _action(service: TrainingService, message: str) -> Action:
    s = service.current
    return Action.model_validate({"state": s.state if s else "idle", "session": s.id if s else None, "message": message})


@router.post("/training/start", response_model=Action, status_code=202,
             dependencies=[Depends(require_writer)], responses={**CONFLICT, **WRITE})
async def start(service: Service, startup: Startup, body: Annotated[StartRequest | None, Body()] = None) -> Action:
    """Start a run of the given (or held) configuration with local node processes.

    A given configuration may differ from the startup one only in the fields
    ``GET /api/config/settable`` lists.
    """
    config = check_runtime_change(startup, body.config) if body and body.config else None
    session = await service.start(config, resume=bool(body and body.resume))
    return _action(service, f"session {session.id} started ({session.label})")


@router.post("/training/stop", response_model=Action, dependencies=[Depends(require_writer)],
             responses={**CONFLICT, **WRITE})
def stop(service: Service) -> Action:
    """Finish the current round, checkpoint, and stop."""
    service.stop()
    return _action(service, "stopping after the current round")


@router.post("/training/pause", response_model=Action, dependencies=[Depends(require_writer)],
             responses={**CONFLICT, **WRITE})
def pause(service: Service) -> Action:
    """Hold before the next round."""
    service.pause()
    return _action(service, "paused before the next round")


@router.post("/training/resume", response_model=Action, dependencies=[Depends(require_writer)],
             responses={**CONFLICT, **WRITE})
def resume(service: Service) -> Action:
    service.resume()
    return _action(service, "resumed")
