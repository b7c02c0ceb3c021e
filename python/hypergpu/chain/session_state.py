"""The files of a settlement session beside the queue path: the session
state (id, deployment, payout salt; mode 0600) and the per-session queue
and score book."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from hypergpu.config.chain import ChainConfig

log = logging.getLogger("hypergpu.chain.recorder")


def state_path(chain: ChainConfig) -> Path:
    """Where the last session's state is kept."""
    return chain.queue_path.with_suffix(".session.json")


def session_file(chain: ChainConfig, session_id: int | None, suffix: str) -> Path:
    """A file of session ``session_id``: ``.sqlite3`` (the queue), ``.scores.jsonl`` (the score book)."""
    q = chain.queue_path
    return q.with_name(f"{q.stem}-{session_id}{suffix}")


def load_state(chain: ChainConfig) -> dict[str, Any] | None:
    """The saved session to resume on ``chain``; None when there is none, or it is another chain's."""
    path = state_path(chain)
    # The embedded chain lives in this process: after a restart there is nothing to resume on it.
    if chain.kind == "embedded" or not path.exists():
        return None
    state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if state.get("kind") != chain.kind or state.get("rpc_url") != chain.effective_rpc_url:
        log.warning("session state %s is for another chain; starting a new session", path)
        return None
    return state


def save_state(chain: ChainConfig, state: dict[str, Any]) -> None:
    """Writes the state atomically, readable by this user only (it holds the payout salt)."""
    path = state_path(chain)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=1)
    os.replace(tmp, path)
