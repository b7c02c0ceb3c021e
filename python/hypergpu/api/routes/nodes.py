"""Node health, detail, and operator exclusions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Path

from hypergpu.api.models import Action, ExcludeRequest, Node, NodeDetail
from hypergpu.api.routes.deps import get_service
from hypergpu.api.routes.training import CONFLICT, WRITE, Responses, _action
from hypergpu.api.security import require_writer
from hypergpu.api.service import TrainingService

router = APIRouter(prefix="/api/nodes", tags=["nodes"])
Service = Annotated[TrainingService, Depends(get_service)]
NodeId = Annotated[int, Path(ge=0, le=2**31, description="the node's id")]
NOT_FOUND: Responses = {404: {"description": "unknown node"}}


@router.get("", response_model=list[Node])
def nodes(service: Service) -> list[Node]:
    """Every node of the current (or last) run with its health and link figures."""
    return [Node(**n) for n in service.nodes()]


@router.get("/{node_id}", response_model=NodeDetail, responses=NOT_FOUND)
def node(service: Service, node_id: NodeId) -> NodeDetail:
    """One node with its latency history, recent rounds and the decisions taken about it."""
    return NodeDetail(**service.node(node_id))


@router.post("/{node_id}/exclude", response_model=Action, dependencies=[Depends(require_writer)],
             responses={**NOT_FOUND, **CONFLICT, **WRITE})
def exclude(service: Service, node_id: NodeId, body: Annotated[ExcludeRequest | None, Body()] = None) -> Action:
    """Leave the node out of rounds from the next one on (it stays connected)."""
    service.exclude(node_id, body.reason if body else "excluded by operator")
    return _action(service, f"node {node_id} excluded from the next round on")


@router.post("/{node_id}/include", response_model=Action, dependencies=[Depends(require_writer)],
             responses={**NOT_FOUND, **WRITE})
def include(service: Service, node_id: NodeId) -> Action:
    """Let an excluded node take part again."""
    service.include(node_id)
    return _action(service, f"node {node_id} takes part again from the next round")
