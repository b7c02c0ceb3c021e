"""The files of a settlement session beside the queue path: the session
state (id, deployment, dev key; mode 0600), the per-session queue, the
score book and the accounts nodes are paid to (:mod:`hypergpu.chain.accounts`).

Each session has its own state file, written once when the session starts and
never overwritten: a later session never takes over an earlier one's
contracts or dev key. A resumed run reads the newest state for its chain.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from hypergpu.config.chain import ChainConfig
from hypergpu.chain.keys import Signer, load_signer
from hypergpu.errors import ChainError

log = logging.getLogger("hypergpu.chain.recorder")

_STATE_SUFFIX = ".session.json"


def session_file(chain: ChainConfig, session_id: int | None, suffix: str) -> Path:
    """A file of session ``session_id``: ``.session.json`` (its state), ``.sqlite3`` (the queue),
    ``.scores.jsonl`` (the score book), ``.accounts.jsonl`` (where its nodes are paid)."""
    q = chain.queue_path
    return q.with_name(f"{q.stem}-{session_id}{suffix}")


def state_file(chain: ChainConfig, session_id: int) -> Path:
    return session_file(chain, session_id, _STATE_SUFFIX)


def legacy_state_path(chain: ChainConfig) -> Path:
    """The one state file earlier versions kept (and overwrote) for every session; still read."""
    return chain.queue_path.with_suffix(_STATE_SUFFIX)


def list_states(chain: ChainConfig) -> list[dict[str, Any]]:
    """Every saved session on ``chain``'s endpoint, oldest first."""
    q = chain.queue_path
    paths = list(q.parent.glob(f"{q.stem}-*{_STATE_SUFFIX}")) if q.parent.is_dir() else []
    legacy = legacy_state_path(chain)
    if legacy.is_file():
        paths.append(legacy)
    states = []
    for path in paths:
        try:
            state: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            log.warning("session state %s unreadable, skipped: %s", path, exc)
            continue
        if state.get("kind") != chain.kind or state.get("rpc_url") != chain.effective_rpc_url:
            continue
        state.setdefault("created_at", path.stat().st_mtime)  # legacy files carry no time of their own
        states.append(state)
    return sorted(states, key=lambda s: float(s["created_at"]))


def load_state(chain: ChainConfig, session_id: int | None = None) -> dict[str, Any] | None:
    """The saved session to resume on ``chain`` (the newest, or ``session_id``); None when there is none."""
    # The embedded chain lives in this process: after a restart there is nothing to resume on it.
    if chain.kind == "embedded":
        return None
    states = [s for s in list_states(chain) if session_id is None or int(s["session_id"]) == session_id]
    return states[-1] if states else None


def save_state(chain: ChainConfig, state: dict[str, Any]) -> Path:
    """Writes a new session's state, readable by this user only (it may hold the dev key).

    Never replaces a file: the state appears whole (written aside, then linked
    into place) and a session id whose state exists already is refused.
    """
    path = state_file(chain, int(state["session_id"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump({"created_at": time.time(), **state}, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        os.link(tmp, path)  # unlike a rename, fails rather than replace an existing file
    except FileExistsError:
        raise ChainError(f"session state {path} exists already; it is never overwritten") from None
    finally:
        tmp.unlink()
    return path


def session_signer(chain: ChainConfig, state: dict[str, Any] | None) -> Signer | None:
    """The configured key; on a local chain without one, the dev key the session's state keeps."""
    local = chain.kind in ("embedded", "anvil")
    signer = load_signer(chain, required=not local)
    if signer is None and state and state.get("dev_key"):
        signer = Signer.from_hex(state["dev_key"])
    return signer
