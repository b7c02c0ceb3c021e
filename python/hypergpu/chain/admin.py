"""What an operator does to a session after its run (``hypergpu chain
requeue`` / ``chain withdraw``): put refused settlement operations back and
send them, or take back a closed session's unallocated pool."""

from __future__ import annotations

from typing import Any

from hypergpu.chain import session_state
from hypergpu.chain.client import ChainClient
from hypergpu.chain.queue import SettlementQueue, requeue_file
from hypergpu.chain.types import Deployment
from hypergpu.config.chain import ChainConfig
from hypergpu.errors import ChainError, UnknownSessionError


def find_session(chain: ChainConfig, session_id: int | None = None) -> dict[str, Any]:
    """The saved state of session ``session_id`` (the newest if None) on ``chain``."""
    states = [s for s in session_state.list_states(chain) if session_id is None or int(s["session_id"]) == session_id]
    if not states:
        which = f"session {session_id}" if session_id is not None else "no session"
        raise UnknownSessionError(f"{which} saved for {chain.kind} beside {chain.queue_path}")
    return states[-1]


def connect(chain: ChainConfig, state: dict[str, Any]) -> ChainClient:
    """A client on the session's contracts, as the configured key (or the session's dev key)."""
    if chain.kind == "embedded":
        raise ChainError("the embedded chain ended with the process that ran it: nothing to send to")
    deployment = (Deployment(token=chain.reward_token, **chain.deployment) if chain.deployment
                  else Deployment(**state["deployment"]))
    return ChainClient.connect(chain, signer=session_state.session_signer(chain, state), deployment=deployment)


def requeue(chain: ChainConfig, session_id: int | None = None, keys: list[str] | None = None, *,
            send: bool = False, timeout_s: float = 120.0) -> dict[str, Any]:
    """Puts the session's failed (and waiting) operations back in its queue; with ``send``,
    connects and sends everything unsent, waiting up to ``timeout_s``."""
    state = find_session(chain, session_id)
    sid = int(state["session_id"])
    path = session_state.session_file(chain, sid, ".sqlite3")
    if not path.exists():
        raise UnknownSessionError(f"session {sid} has no settlement queue at {path}")
    out: dict[str, Any] = {"session_id": sid, "requeued": requeue_file(path, keys)}
    if send:
        queue = SettlementQueue(path, connect(chain, state)).start()
        try:
            out["drained"] = queue.drain(timeout_s)
            out["queue"] = queue.counts()
        finally:
            queue.close()
    return out


def withdraw(chain: ChainConfig, session_id: int | None, to: str | None = None) -> dict[str, Any]:
    """Sends a completed or cancelled session's unallocated pool to ``to`` (admin only)."""
    state = find_session(chain, session_id)
    sid = int(state["session_id"])
    client = connect(chain, state)
    tx = client.withdraw_unallocated(sid, to)
    # wei as a decimal string: it exceeds JavaScript's integers
    return {"session_id": sid, "tx_hash": tx.tx_hash, "block": tx.block, "gas_used": tx.gas_used,
            "withdrawn_wei": str(client.withdrawn(sid))}
