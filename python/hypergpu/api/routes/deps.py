"""What route handlers share."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from hypergpu.api.service import TrainingService
from hypergpu.config.schema import HyperGPUConfig


def get_service(request: Request) -> TrainingService:
    return request.app.state.service  # type: ignore[no-any-return]


def get_startup_config(request: Request) -> HyperGPUConfig:
    """The configuration the server started with: what a request may not change but for
    training hyper-parameters (:mod:`hypergpu.api.runtime_config`)."""
    return request.app.state.startup_config  # type: ignore[no-any-return]


Startup = Annotated[HyperGPUConfig, Depends(get_startup_config)]
