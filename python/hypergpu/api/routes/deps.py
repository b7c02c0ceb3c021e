"""What route handlers share."""

from __future__ import annotations

from fastapi import Request

from hypergpu.api.service import TrainingService


def get_service(request: Request) -> TrainingService:
    return request.app.state.service  # type: ignore[no-any-return]
