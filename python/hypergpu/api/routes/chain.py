"""The chain panel: session, contributions and transactions from the chain recorder."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends

from hypergpu.api.models import ChainView
from hypergpu.api.routes.deps import get_service
from hypergpu.api.service import TrainingService

router = APIRouter(prefix="/api/blockchain", tags=["blockchain"])
Service = Annotated[TrainingService, Depends(get_service)]
DISABLED = "chain not enabled: no chain recorder is attached to this run"

#: Keys never passed through from a recorder's report, whatever it holds.
SECRET_KEYS = frozenset({"private_key", "key", "keystore", "password", "mnemonic", "token", "join", "secret"})


def _scrub(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _scrub(v) for k, v in value.items() if str(k).lower() not in SECRET_KEYS}
    if isinstance(value, (list, tuple)):
        return [_scrub(v) for v in value]
    return value


@router.get("/session", response_model=ChainView)
def chain_session(service: Service) -> ChainView:
    """Connection, block number and the training session registered on chain."""
    if service.chain is None:
        return ChainView(enabled=False, reason=DISABLED)
    return ChainView.model_validate({**_scrub(dict(service.chain.status())), "enabled": True})


@router.get("/contributions", response_model=ChainView)
def chain_contributions(service: Service) -> ChainView:
    """Recorded contributions and rewards per node, and the transactions that carried them."""
    if service.chain is None:
        return ChainView(enabled=False, reason=DISABLED)
    return ChainView.model_validate({
        "enabled": True,
        "contributions": _scrub(list(service.chain.contributions())),
        "transactions": _scrub(list(service.chain.transactions())),
    })
