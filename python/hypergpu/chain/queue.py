"""A durable settlement queue: the coordinator enqueues chain writes (a few
milliseconds into SQLite) and a background thread sends them in order.

Nothing is lost across an RPC outage or a coordinator crash: an operation
leaves the queue only once the chain shows its effect. Each operation has an
idempotency key (e.g. ``record:<session>:<epoch>``) so enqueuing it twice
stores it once, and the chain client checks on chain before every send, so an
operation that went out just before a crash is not recorded twice.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypergpu.chain.client import ChainClient
from hypergpu.chain.rpc import checksum
from hypergpu.chain.types import ContributionEntry, TxResult
from hypergpu.errors import ChainError, ChainUnavailableError, ContractRevertError, HyperGPUError

log = logging.getLogger(__name__)

# Reverts that mean "this already happened": the operation is done, not failed.
_ALREADY_DONE = {"EpochAlreadyRecorded", "EpochAlreadySettled", "SessionExists", "NodeAlreadyRegistered"}

_SCHEMA = """
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
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS ops_pending ON ops(status, id);
"""


@dataclass(frozen=True)
class QueuedOp:
    id: int
    key: str
    kind: str
    payload: dict[str, Any]
    status: str
    attempts: int
    tx_hash: str | None
    gas_used: int | None
    error: str | None


def _apply_create_session(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    return c.create_session(p["session_id"], bytes.fromhex(p["model_hash"]))


def _apply_register(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    before = len(c.transactions)
    c.register_nodes(p["accounts"])
    return c.transactions[-1] if len(c.transactions) > before else None


def _apply_record(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    entries = [ContributionEntry(*e) for e in p["entries"]]
    return c.record_contributions(p["session_id"], p["epoch"], entries)


def _apply_record_accounts(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    # Node ids are assigned on chain at registration, so they are looked up
    # (registering any account still missing) only when the batch is sent.
    ids = c.register_nodes([row[0] for row in p["rows"]])
    entries = [ContributionEntry(ids[checksum(row[0])], *row[1:]) for row in p["rows"]]
    return c.record_contributions(p["session_id"], p["epoch"], entries)


def _apply_fund(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    # Tops the pool up to a total rather than adding an amount, so a resend
    # after a crash cannot fund twice.
    funded, _ = c.pool(p["session_id"])
    if funded >= p["total"]:
        return None
    return c.fund_pool(p["session_id"], p["total"] - funded)


def _apply_rewards(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    return c.post_rewards(p["session_id"], p["epoch"], p["amounts"])


def _apply_root(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    return c.post_reward_root(p["session_id"], p["epoch"], bytes.fromhex(p["root"]), p["total"], p["nodes"])


def _apply_complete(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    return c.complete_session(p["session_id"])


_APPLY: dict[str, Callable[[ChainClient, dict[str, Any]], TxResult | None]] = {
    "create_session": _apply_create_session,
    "register_nodes": _apply_register,
    "record": _apply_record,
    "record_accounts": _apply_record_accounts,
    "fund": _apply_fund,
    "rewards": _apply_rewards,
    "reward_root": _apply_root,
    "complete_session": _apply_complete,
}


class SettlementQueue:
    """Durable FIFO of chain writes with a background sender.

    ``enqueue_*`` return at once; ``start()`` runs the sender thread,
    ``drain()`` waits for it to catch up, ``stop()`` ends it (pending work
    stays on disk for the next start).
    """

    def __init__(self, path: Path | str, client: ChainClient, *, retry_s: float | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.client = client
        self._retry_s = retry_s if retry_s is not None else client.config.backoff_s
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a committed enqueue survives a power cut
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"SettlementQueue(path={str(self.path)!r}, pending={self.pending_count()})"

    # --- producer side -----------------------------------------------------------

    def _enqueue(self, kind: str, key: str, payload: dict[str, Any]) -> bool:
        now = time.time()
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO ops(key, kind, payload, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
                (key, kind, json.dumps(payload, sort_keys=True), now, now),
            )
        self._idle.clear()
        self._wake.set()
        return cur.rowcount == 1

    def enqueue_session(self, session_id: int, model_hash: bytes) -> bool:
        return self._enqueue("create_session", f"session:{session_id}", {"session_id": session_id, "model_hash": model_hash.hex()})

    def enqueue_nodes(self, accounts: Sequence[str]) -> bool:
        accounts = sorted(dict.fromkeys(accounts))
        return self._enqueue("register_nodes", "nodes:" + ",".join(accounts), {"accounts": accounts})

    def enqueue_contributions(self, session_id: int, epoch: int, entries: Sequence[ContributionEntry]) -> bool:
        """Queues one epoch's batch; returns False if that epoch was already queued."""
        payload = {"session_id": session_id, "epoch": epoch, "entries": [list(e.as_tuple()) for e in entries]}
        return self._enqueue("record", f"record:{session_id}:{epoch}", payload)

    def enqueue_account_contributions(
        self, session_id: int, epoch: int, rows: Sequence[tuple[str, int, int, int, int]]
    ) -> bool:
        """Like :meth:`enqueue_contributions`, naming nodes by account:
        (account, compute_credit, updates_accepted, successful_rounds, quality_bps).
        Shares the idempotency key of :meth:`enqueue_contributions`."""
        payload = {"session_id": session_id, "epoch": epoch, "rows": [list(r) for r in rows]}
        return self._enqueue("record_accounts", f"record:{session_id}:{epoch}", payload)

    def enqueue_funding(self, session_id: int, total: int) -> bool:
        """Tops the session's pool up to ``total`` wei (funded so far counts)."""
        return self._enqueue("fund", f"fund:{session_id}:{total}", {"session_id": session_id, "total": total})

    def enqueue_rewards(self, session_id: int, epoch: int, amounts: Mapping[str, int]) -> bool:
        payload = {"session_id": session_id, "epoch": epoch, "amounts": dict(amounts)}
        return self._enqueue("rewards", f"rewards:{session_id}:{epoch}", payload)

    def enqueue_reward_root(self, session_id: int, epoch: int, root: bytes, total: int, nodes: int) -> bool:
        payload = {"session_id": session_id, "epoch": epoch, "root": root.hex(), "total": total, "nodes": nodes}
        return self._enqueue("reward_root", f"rewards:{session_id}:{epoch}", payload)

    def enqueue_complete(self, session_id: int) -> bool:
        return self._enqueue("complete_session", f"complete:{session_id}", {"session_id": session_id})

    # --- inspection --------------------------------------------------------------

    def _rows(self, where: str = "", args: tuple[Any, ...] = ()) -> list[QueuedOp]:
        with self._lock:
            rows = self._db.execute(
                "SELECT id, key, kind, payload, status, attempts, tx_hash, gas_used, error FROM ops "
                f"{where} ORDER BY id",
                args,
            ).fetchall()
        return [QueuedOp(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows]

    def ops(self, status: str | None = None) -> list[QueuedOp]:
        """Every operation in order (the durable transaction history), or those with ``status``."""
        return self._rows("WHERE status = ?", (status,)) if status else self._rows()

    def pending_count(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM ops WHERE status = 'pending'").fetchone()[0])

    # --- sender --------------------------------------------------------------------

    def _mark(self, op_id: int, status: str, *, tx: TxResult | None = None, error: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE ops SET status = ?, tx_hash = ?, gas_used = ?, error = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE id = ?",
                (status, tx.tx_hash if tx else None, tx.gas_used if tx else None, error, time.time(), op_id),
            )

    def _note_attempt(self, op_id: int, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE ops SET attempts = attempts + 1, error = ?, updated_at = ? WHERE id = ?",
                (error, time.time(), op_id),
            )

    def process_one(self) -> bool:
        """Sends the oldest pending operation. Returns False when none is pending.

        Raises ChainUnavailableError (the operation stays pending) when the
        chain cannot be reached.
        """
        pending = self._rows("WHERE status = 'pending'")
        if not pending:
            return False
        op = pending[0]
        try:
            tx = _APPLY[op.kind](self.client, op.payload)
        except ContractRevertError as exc:
            if exc.error_name in _ALREADY_DONE:
                self._mark(op.id, "done", error=f"already on chain: {exc.error_name}")
            else:
                log.error("settlement %s refused by the chain: %s", op.key, exc)
                self._mark(op.id, "failed", error=str(exc))
            return True
        except ChainUnavailableError as exc:
            self._note_attempt(op.id, str(exc))
            raise
        except (HyperGPUError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, OSError):
                raise
            self._mark(op.id, "failed", error=f"{type(exc).__name__}: {exc}")
            return True
        self._mark(op.id, "done", tx=tx)
        return True

    def _run(self) -> None:
        delay = self._retry_s
        while not self._stop.is_set():
            try:
                worked = self.process_one()
                delay = self._retry_s
                self.last_error = None
            except (ChainUnavailableError, OSError) as exc:
                self.last_error = str(exc)
                log.warning("settlement queue waiting for the chain: %s", exc)
                self._stop.wait(delay)
                delay = min(delay * 2, self.client.config.backoff_max_s)
                continue
            if not worked:
                self._idle.set()
                self._wake.wait(0.5)
                self._wake.clear()

    def start(self) -> SettlementQueue:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._idle.clear()
            self._thread = threading.Thread(target=self._run, name="hypergpu-settlement", daemon=True)
            self._thread.start()
        return self

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Waits until nothing is pending; True if it got there within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.pending_count() == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return self.pending_count() == 0

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                raise ChainError("settlement thread did not stop in time")
            self._thread = None

    def close(self) -> None:
        self.stop()
        with self._lock:
            self._db.close()

    def __enter__(self) -> SettlementQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
