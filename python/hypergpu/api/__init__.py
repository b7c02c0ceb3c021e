"""The control plane: REST + WebSocket API and the dashboard (FastAPI).

``create_app(service)`` builds the app around a :class:`TrainingService`,
which owns the configuration and the training runs; ``serve`` runs it with
uvicorn in the caller's asyncio loop, beside the coordinator.
"""

from hypergpu.extras import require

require("api")

from hypergpu.api.app import create_app
from hypergpu.api.server import ApiServer
from hypergpu.api.service import TrainingService
from hypergpu.api.sessions import Session

__all__ = ["ApiServer", "Session", "TrainingService", "create_app"]
