"""A durable settlement queue: the coordinator enqueues chain writes (a few
milliseconds into SQLite) and a background thread sends them in order.

Nothing is lost across an RPC outage or a coordinator crash: an operation
leaves the queue only once the chain shows its effect. Each operation has an
idempotency key (e.g. ``record:<session>:<epoch>``) so enqueuing it twice
stores it once, and the chain client checks on chain before every send, so an
operation that went out just before a crash is not recorded twice.

Each write happens once: an operation's signed transactions are journaled in
the same database before they are sent (:mod:`~hypergpu.chain.journal`), and
a retry, after a receipt timeout or a restart, first decides the transaction
already sent (rebroadcast, or replaced at its own nonce) before anything new is
signed. A write the chain refuses *for now* (the pool short of funds, a
contract paused, the session not active) waits and is retried with an alert,
without holding up the operations behind it; other refusals fail, and
``hypergpu chain requeue`` puts failed operations back.

A queue that falls behind (a slow chain, epochs of a few rounds) stays
bounded when ``coalesce_after`` is set: an epoch's contribution record and
reward posting then join the newest untried ones of the session, one
transaction for many epochs with the same totals (:mod:`~hypergpu.chain.queue_db`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypergpu.chain.client import ChainClient
from hypergpu.chain.journal import SentTx, SqliteJournal, journal_entries
from hypergpu.chain.operations import APPLY
from hypergpu.chain.queue_db import UNSENT, insert, open_db, requeue, requeue_file
from hypergpu.chain.types import ContributionEntry, TxResult
from hypergpu.errors import ChainError, ChainUnavailableError, ContractRevertError, HyperGPUError

__all__ = ["QueuedOp", "SettlementQueue", "requeue_file"]

log = logging.getLogger(__name__)

# Reverts that mean "this already happened": the operation is done, not failed.
_ALREADY_DONE = {"EpochAlreadyRecorded", "EpochAlreadySettled", "SessionExists", "NodeAlreadyRegistered"}
# Reverts that can pass once someone acts (funds the pool, unpauses, the session
# is created): the operation waits and is retried, it does not fail.
_NOT_YET = {"InsufficientPool", "EnforcedPause", "SessionNotActive", "UnknownSession"}

# The next operation to send: pending ones in order, then waiting ones that are due.
# A session's completion waits for every operation before it, so a completed
# session has all its postings on chain before its unallocated pool can be withdrawn.
_NEXT = """
SELECT id, key, kind, payload, status, attempts, tx_hash, gas_used, error, not_before FROM ops o
WHERE (status = 'pending' OR (status = 'waiting' AND not_before <= ?))
  AND NOT (kind = 'complete_session' AND EXISTS (
      SELECT 1 FROM ops p WHERE p.id < o.id AND p.status IN ('pending', 'waiting')))
ORDER BY status = 'waiting', id LIMIT 1
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
    not_before: float = 0.0


class SettlementQueue:
    """Durable FIFO of chain writes with a background sender.

    ``enqueue_*`` return at once; ``start()`` runs the sender thread,
    ``drain()`` waits for it to catch up, ``stop()`` ends it (pending work
    stays on disk for the next start).
    """

    def __init__(self, path: Path | str, client: ChainClient, *, retry_s: float | None = None,
                 on_alert: Callable[[QueuedOp, str], None] | None = None,
                 on_change: Callable[[QueuedOp], None] | None = None, coalesce_after: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.client = client
        self._retry_s = retry_s if retry_s is not None else client.config.backoff_s
        self._db = open_db(self.path)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._idle = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        #: The latest alert about an operation the chain refused for now (None once it passes).
        self.last_alert: str | None = None
        self._on_alert = on_alert
        #: Called (on the sender thread) with an operation each time the sender moves it to
        #: done, failed or waiting: watchers learn of it without reading the whole table.
        self._on_change = on_change
        #: With more than this many operations waiting, an epoch's postings join the newest
        #: untried ones of the session (:mod:`~hypergpu.chain.queue_db`); None: never.
        self.coalesce_after = coalesce_after
        self._sending: int | None = None  # the operation the sender holds: never joined into

    def __repr__(self) -> str:
        return f"SettlementQueue(path={str(self.path)!r}, pending={self.pending_count()})"

    # --- producer side -----------------------------------------------------------

    def _enqueue(self, kind: str, key: str, payload: dict[str, Any]) -> bool:
        with self._lock:
            added = insert(self._db, kind, key, payload, coalesce_after=self.coalesce_after, busy=self._sending)
        self._idle.clear()
        self._wake.set()
        return added

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
                "SELECT id, key, kind, payload, status, attempts, tx_hash, gas_used, error, not_before FROM ops "
                f"{where} ORDER BY id",
                args,
            ).fetchall()
        return [QueuedOp(r[0], r[1], r[2], json.loads(r[3]), *r[4:]) for r in rows]

    def _next_op(self) -> QueuedOp | None:
        with self._lock:  # taken into the sender's hands under the lock an enqueue joins under
            r = self._db.execute(_NEXT, (time.time(),)).fetchone()
            self._sending = None if r is None else int(r[0])
        return None if r is None else QueuedOp(r[0], r[1], r[2], json.loads(r[3]), *r[4:])

    def ops(self, status: str | None = None, *, last: int | None = None) -> list[QueuedOp]:
        """Every operation in order (the durable transaction history), or those with ``status``;
        with ``last``, only the latest ``last`` of them (still oldest first)."""
        if last is not None:
            where = "WHERE id IN (SELECT id FROM ops {} ORDER BY id DESC LIMIT ?)"
            return (self._rows(where.format("WHERE status = ?"), (status, last)) if status
                    else self._rows(where.format(""), (last,)))
        return self._rows("WHERE status = ?", (status,)) if status else self._rows()

    def pending_count(self) -> int:
        """Operations not yet on chain: pending, or waiting to be retried."""
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM ops WHERE status IN {UNSENT}").fetchone()[0])

    def waiting_count(self) -> int:
        """Operations the chain refused for now, waiting to be retried."""
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM ops WHERE status = 'waiting'").fetchone()[0])

    def sent(self) -> list[SentTx]:
        """Every signed transaction the operations sent, with its fate, rebroadcasts and replacements."""
        return journal_entries(self._db, self._lock)

    def counts(self) -> dict[str, int]:
        """How many operations are in each status."""
        with self._lock:
            return dict(self._db.execute("SELECT status, COUNT(*) FROM ops GROUP BY status").fetchall())

    def requeue(self, keys: Sequence[str] | None = None) -> list[str]:
        """Puts failed operations (and waiting ones, at once) back in line; with ``keys``,
        only those. Returns the keys requeued."""
        with self._lock:
            found = requeue(self._db, keys)
        self._idle.clear()
        self._wake.set()
        return found

    # --- sender --------------------------------------------------------------------

    def _mark(self, op_id: int, status: str, *, tx: TxResult | None = None, error: str | None = None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE ops SET status = ?, tx_hash = ?, gas_used = ?, error = ?, attempts = attempts + 1, "
                "updated_at = ? WHERE id = ?",
                (status, tx.tx_hash if tx else None, tx.gas_used if tx else None, error, time.time(), op_id),
            )
        self._changed(op_id)

    def _changed(self, op_id: int) -> None:
        if self._on_change is None:
            return
        for op in self._rows("WHERE id = ?", (op_id,)):
            try:
                self._on_change(op)
            except Exception:  # a watcher's fault must not stop the sender
                log.exception("settlement watcher failed on %s", op.key)

    def _note_attempt(self, op_id: int, error: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE ops SET attempts = attempts + 1, error = ?, updated_at = ? WHERE id = ?",
                (error, time.time(), op_id),
            )

    def _wait(self, op: QueuedOp, exc: ContractRevertError) -> None:
        """Puts ``op`` aside for a while (doubling, up to ``refused_retry_max_s``) and raises the alert."""
        cfg = self.client.config
        delay = min(self._retry_s * 2 ** min(op.attempts, 20), cfg.refused_retry_max_s)
        with self._lock:
            self._db.execute(
                "UPDATE ops SET status = 'waiting', attempts = attempts + 1, error = ?, not_before = ?, "
                "updated_at = ? WHERE id = ?",
                (str(exc), time.time() + delay, time.time(), op.id),
            )
        alert = f"{op.key} refused by the chain for now ({exc.error_name}), retrying in {delay:.1f}s: {exc}"
        log.warning("settlement %s", alert)
        self.last_alert = alert
        if self._on_alert is not None:
            self._on_alert(op, alert)
        self._changed(op.id)

    def process_one(self) -> bool:
        """Sends the next operation due. Returns False when none is.

        Raises ChainUnavailableError (the operation stays pending) when the
        chain cannot be reached or its transaction is not decided yet.
        """
        op = self._next_op()
        if op is None:
            return False
        try:
            self._send(op)
        finally:
            self._sending = None  # only once its attempt is counted: an op tried once is never joined into
        return True

    def _send(self, op: QueuedOp) -> None:
        journal = SqliteJournal(self._db, self._lock, op.id)
        try:
            with self.client.journaled(journal):
                # What an earlier try sent is decided before the operation runs again.
                landed = self.client.resume_open(journal)
                tx = APPLY[op.kind](self.client, op.payload) or landed
        except ContractRevertError as exc:
            if exc.error_name in _ALREADY_DONE:
                self._mark(op.id, "done", error=f"already on chain: {exc.error_name}")
            elif exc.error_name in _NOT_YET:
                self._wait(op, exc)
            else:
                log.error("settlement %s refused by the chain: %s", op.key, exc)
                self._mark(op.id, "failed", error=str(exc))
            return
        except ChainUnavailableError as exc:
            self._note_attempt(op.id, str(exc))
            raise
        except (HyperGPUError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, OSError):
                raise
            self._mark(op.id, "failed", error=f"{type(exc).__name__}: {exc}")
            return
        except Exception as exc:  # not the operation's fault: counted, and it is tried again
            self._note_attempt(op.id, f"{type(exc).__name__}: {exc}")
            raise
        self._mark(op.id, "done", tx=tx)
        if op.status == "waiting":
            self.last_alert = None

    def _run(self) -> None:
        delay = self._retry_s
        while not self._stop.is_set():
            try:
                worked = self.process_one()
                delay = self._retry_s
                self.last_error = None
            except Exception as exc:
                # The chain unreachable, or anything else a send raised (e.g. a SystemError out of
                # the embedded chain's C extensions): the worker outlives it, the operation stays
                # due, and it is tried again after a back-off.
                if isinstance(exc, (ChainUnavailableError, OSError)):
                    self.last_error = str(exc)
                    log.warning("settlement queue waiting for the chain: %s", exc)
                else:
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    log.exception("settlement queue: sending an operation raised; retrying")
                self._stop.wait(delay)
                delay = min(delay * 2, self.client.config.backoff_max_s)
                continue
            if not worked:  # nothing due: idle until an enqueue, a requeue or a waiting operation's turn
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
        """Waits until nothing is pending or waiting; True if it got there within ``timeout_s``."""
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
