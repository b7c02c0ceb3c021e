"""Signed transactions kept until their fate is known.

Before a transaction is broadcast, its nonce and signed bytes are stored in a
journal. Until a receipt shows one of its hashes mined, or another transaction
takes its nonce, every later try re-sends those same bytes (or re-signs the
same call at the same nonce with higher fees) and never signs the call again
at a new nonce: a slow chain can delay a write, not repeat it.

:class:`MemoryJournal` lasts one client call; :class:`SqliteJournal` keeps
one settlement operation's transactions in the queue's database, so a
coordinator restarted after a crash resumes the very transaction it sent.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

#: ``open`` until decided; then ``mined`` (status 1), ``reverted`` (mined, status 0),
#: ``dropped`` (its nonce went to another transaction, so it can never be mined)
#: or ``rejected`` (the node refused the bytes when they were first sent).
FATES = ("open", "mined", "reverted", "dropped", "rejected")

SCHEMA = """
CREATE TABLE IF NOT EXISTS txs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    op_id INTEGER NOT NULL,
    action TEXT NOT NULL,
    nonce INTEGER NOT NULL,
    gas INTEGER NOT NULL,
    fields TEXT NOT NULL,
    raw BLOB NOT NULL,
    hashes TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'open',
    rebroadcasts INTEGER NOT NULL DEFAULT 0,
    replacements INTEGER NOT NULL DEFAULT 0,
    timeouts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS txs_open ON txs(op_id, state, id);
"""


@dataclass
class SentTx:
    """One signed call at one nonce, with every signing of it (replacements raise the fees)."""

    action: str
    nonce: int
    gas: int
    fields: dict[str, Any] = field(repr=False)  # the unsigned transaction as last signed
    raw: bytes = field(repr=False)  # the bytes last broadcast
    hashes: list[str]  # every hash signed at this nonce: any one of them may be the one mined
    rebroadcasts: int = 0
    replacements: int = 0
    timeouts: int = 0
    state: str = "open"
    op_id: int | None = None
    id: int | None = field(default=None, compare=False)


class TxJournal(Protocol):
    """Where a client keeps its signed transactions until they are decided."""

    def open(self) -> list[SentTx]:
        """The undecided transactions, oldest first."""
        ...

    def save(self, sent: SentTx) -> None:
        """Stores ``sent`` (new or updated); returns only once it is stored."""
        ...

    def settle(self, sent: SentTx, state: str) -> None:
        """Records ``sent``'s fate (one of :data:`FATES` but ``open``)."""
        ...


class MemoryJournal:
    """A journal for one client call: its retries resume the transaction it sent."""

    def __init__(self) -> None:
        self.sent: list[SentTx] = []

    def open(self) -> list[SentTx]:
        return [s for s in self.sent if s.state == "open"]

    def save(self, sent: SentTx) -> None:
        if not any(s is sent for s in self.sent):
            self.sent.append(sent)

    def settle(self, sent: SentTx, state: str) -> None:
        sent.state = state


class SqliteJournal:
    """The transactions of settlement operation ``op_id``, in the queue's database."""

    def __init__(self, db: sqlite3.Connection, lock: threading.Lock, op_id: int):
        self._db = db
        self._lock = lock
        self.op_id = op_id

    def open(self) -> list[SentTx]:
        return _load(self._db, self._lock, "WHERE op_id = ? AND state = 'open'", (self.op_id,))

    def save(self, sent: SentTx) -> None:
        now = time.time()
        values = (sent.action, sent.nonce, sent.gas, json.dumps(sent.fields, sort_keys=True), sent.raw,
                  json.dumps(sent.hashes), sent.state, sent.rebroadcasts, sent.replacements, sent.timeouts)
        with self._lock:  # the connection runs in autocommit with synchronous=FULL: stored on return
            if sent.id is None:
                cur = self._db.execute(
                    "INSERT INTO txs(action, nonce, gas, fields, raw, hashes, state, rebroadcasts, replacements, "
                    "timeouts, op_id, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*values, self.op_id, now, now),
                )
                sent.id, sent.op_id = cur.lastrowid, self.op_id
            else:
                self._db.execute(
                    "UPDATE txs SET action = ?, nonce = ?, gas = ?, fields = ?, raw = ?, hashes = ?, state = ?, "
                    "rebroadcasts = ?, replacements = ?, timeouts = ?, updated_at = ? WHERE id = ?",
                    (*values, now, sent.id),
                )

    def settle(self, sent: SentTx, state: str) -> None:
        sent.state = state
        self.save(sent)


def journal_entries(db: sqlite3.Connection, lock: threading.Lock) -> list[SentTx]:
    """Every transaction a queue's journal holds, oldest first (its send history)."""
    return _load(db, lock, "", ())


def _load(db: sqlite3.Connection, lock: threading.Lock, where: str, args: tuple[Any, ...]) -> list[SentTx]:
    with lock:
        rows = db.execute(
            "SELECT id, op_id, action, nonce, gas, fields, raw, hashes, state, rebroadcasts, replacements, timeouts "
            f"FROM txs {where} ORDER BY id",
            args,
        ).fetchall()
    return [
        SentTx(action=r[2], nonce=r[3], gas=r[4], fields=json.loads(r[5]), raw=bytes(r[6]), hashes=json.loads(r[7]),
               state=r[8], rebroadcasts=r[9], replacements=r[10], timeouts=r[11], op_id=r[1], id=r[0])
        for r in rows
    ]
