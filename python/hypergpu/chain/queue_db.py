"""The settlement queue's SQLite file: its schema, opening (and upgrading) it,
putting failed operations back in line, and joining an epoch's postings to
those still waiting when the chain falls behind.

Joining (``coalesce_after``): the contracts add contributions up per node and
credit rewards per account, so the postings of many epochs can go out as one
call under the latest epoch's number with the same totals. When more than
``coalesce_after`` operations wait, a new contribution record or reward posting
of a session is folded into the newest one of its kind for that session if that
one was never tried (pending, no attempt, nothing journaled, not in the sender's
hands); the epoch still gets its own row, status ``merged``, so its key stays
taken and a resumed coordinator that enqueues it again adds nothing. Merkle
roots (one tree per epoch, claimed by epoch) are never joined.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hypergpu.chain.journal import SCHEMA as JOURNAL_SCHEMA

SCHEMA = """
CREATE TABLE IF NOT EXISTS ops (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    payload TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    tx_hash TEXT,
    gas_used INTEGER,
    error TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    not_before REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS ops_pending ON ops(status, id);
"""

#: Statuses of operations not yet on chain.
UNSENT = "('pending', 'waiting')"
#: Kinds whose postings add up on chain: (payload field, how its rows join).
JOINABLE = {"record": "entries", "record_accounts": "rows", "rewards": "amounts"}

# The newest operation of a kind and session that is not itself folded into another.
_NEWEST = """
SELECT id, key, payload, status, attempts, EXISTS (SELECT 1 FROM txs t WHERE t.op_id = o.id) FROM ops o
WHERE kind = ? AND status != 'merged' AND json_extract(payload, '$.session_id') = ?
ORDER BY id DESC LIMIT 1
"""


#: SQLite's page cache per database file, in KiB (the settlement queue's and the embedded
#: chain's ledger): the default 2 MB fills over a long run and reads as a slow leak.
CACHE_KIB = 256


def open_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")  # a committed enqueue survives a power cut
    db.execute(f"PRAGMA cache_size=-{CACHE_KIB}")  # see CACHE_KIB
    db.executescript(SCHEMA + JOURNAL_SCHEMA)
    if "not_before" not in {row[1] for row in db.execute("PRAGMA table_info(ops)")}:
        # a queue file written before operations could wait (and whose refused ones failed)
        db.execute("ALTER TABLE ops ADD COLUMN not_before REAL NOT NULL DEFAULT 0")
    return db


def insert(db: sqlite3.Connection, kind: str, key: str, payload: dict[str, Any], *,
           coalesce_after: int | None = None, busy: int | None = None) -> bool:
    """Stores an operation (or, see the module doc, folds it into a waiting one); False if
    its key is taken already. ``busy``: the operation the sender holds now."""
    text = json.dumps(payload, sort_keys=True)
    now = time.time()
    if coalesce_after is None or kind not in JOINABLE:
        return db.execute("INSERT OR IGNORE INTO ops(key, kind, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                          (key, kind, text, now, now)).rowcount == 1
    db.execute("BEGIN IMMEDIATE")  # the check, the fold and the epoch's own row in one transaction
    try:
        if db.execute("SELECT 1 FROM ops WHERE key = ?", (key,)).fetchone() is not None:
            added = False
        else:
            into = _target(db, kind, payload, coalesce_after, busy)
            if into is not None:
                db.execute("UPDATE ops SET payload = ?, updated_at = ? WHERE id = ?",
                           (json.dumps(join(kind, json.loads(into[2]), payload), sort_keys=True), now, into[0]))
            db.execute("INSERT INTO ops(key, kind, payload, status, error, created_at, updated_at) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (key, kind, text, "pending" if into is None else "merged",
                        None if into is None else f"sent with {into[1]}", now, now))
            added = True
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return added


def _target(db: sqlite3.Connection, kind: str, payload: dict[str, Any], coalesce_after: int,
            busy: int | None) -> tuple[int, str, str] | None:
    """The operation to fold ``payload`` into: only the newest of its kind and session (so the
    epochs stay in order on chain), only if it was never tried, only while the queue is behind."""
    if db.execute(f"SELECT COUNT(*) FROM ops WHERE status IN {UNSENT}").fetchone()[0] <= coalesce_after:
        return None
    row = db.execute(_NEWEST, (kind, payload["session_id"])).fetchone()
    if row is None or row[3] != "pending" or row[4] != 0 or row[5] or row[0] == busy:
        return None
    return int(row[0]), str(row[1]), str(row[2])


def join(kind: str, into: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``into`` and ``new`` as one posting under ``new``'s (later) epoch: per node the credit,
    accepted updates and rounds add up and the quality is the latest (as the contract keeps it);
    per account the rewards add up."""
    field = JOINABLE[kind]
    out = {**into, "epoch": new["epoch"], "first_epoch": into.get("first_epoch", into["epoch"])}
    if field == "amounts":
        amounts = dict(into["amounts"])
        for account, amount in new["amounts"].items():
            amounts[account] = int(amounts.get(account, 0)) + int(amount)
        out["amounts"] = amounts
        return out
    rows = {row[0]: list(row) for row in into[field]}
    for node, credit, updates, rounds, quality in new[field]:
        old = rows.get(node)
        rows[node] = [node, credit, updates, rounds, quality] if old is None else \
            [node, old[1] + credit, old[2] + updates, old[3] + rounds, quality]
    out[field] = list(rows.values())
    return out


def requeue(db: sqlite3.Connection, keys: Sequence[str] | None) -> list[str]:
    where = "status IN ('failed', 'waiting')"
    args: tuple[str, ...] = ()
    if keys is not None:
        where += f" AND key IN ({','.join('?' * len(keys))})"
        args = tuple(keys)
    db.execute("BEGIN IMMEDIATE")  # the keys reported are the ones changed, even beside a running sender
    try:
        found = [r[0] for r in db.execute(f"SELECT key FROM ops WHERE {where} ORDER BY id", args)]
        db.execute(f"UPDATE ops SET status = 'pending', not_before = 0, updated_at = ? WHERE {where}",
                   (time.time(), *args))
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
    return found


def requeue_file(path: Path, keys: Sequence[str] | None = None) -> list[str]:
    """:meth:`~hypergpu.chain.queue.SettlementQueue.requeue` on a queue file, without starting a
    sender (a queue that was sending from it picks them up; otherwise the next one does)."""
    db = open_db(path)
    try:
        return requeue(db, keys)
    finally:
        db.close()
