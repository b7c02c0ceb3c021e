"""What a :class:`~hypergpu.chain.recorder.ChainRecorder` shows the API and
the CLI: plain JSON-able data (wei amounts as decimal strings, since they
exceed JavaScript's integers). Chain reads wait for the settlement sender
only briefly, so a slow chain never stalls a request."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from hypergpu.chain.client import ChainClient
from hypergpu.config.chain import ChainConfig
from hypergpu.chain.queue import SettlementQueue
from hypergpu.config.schema import RewardsConfig
from hypergpu.errors import ChainError
from hypergpu.rewards import ScoreBook

log = logging.getLogger("hypergpu.chain.recorder")

T = TypeVar("T")

#: The latest settlement operations :meth:`RecorderViews.transactions` lists (the queue file holds them all).
TX_ROWS = 200


class RecorderViews:
    """The read side of the recorder (mixed into :class:`ChainRecorder`)."""

    chain: ChainConfig
    settings: RewardsConfig
    client: ChainClient | None
    queue: SettlementQueue | None
    book: ScoreBook | None
    session_id: int | None
    epoch_rounds: int
    _lock: threading.Lock
    _accounts: dict[str, str]  # node name -> payout account
    _names: dict[int, str]  # coordinator node id -> name
    _deploy_txs: list[dict[str, Any]]
    _chain_id: int | None
    _block: int | None
    _connected: bool

    def _read_chain(self, what: Callable[[ChainClient], T], timeout_s: float = 2.0) -> T | None:
        """Runs a chain read if the sender is not mid-send for longer than ``timeout_s``; None otherwise."""
        if self.client is None or not self._lock.acquire(timeout=timeout_s):
            return None
        try:
            return what(self.client)
        except (ChainError, OSError) as exc:
            log.info("chain read failed: %s", exc)
            self._connected = False
            return None
        finally:
            self._lock.release()

    def pending_writes(self) -> int:
        """Chain writes still queued (kept on disk; a resumed run sends them)."""
        return self.queue.pending_count() if self.queue is not None else 0

    def status(self) -> dict[str, Any]:
        block = self._read_chain(lambda c: int(c.w3.eth.block_number), timeout_s=0.5)
        if block is not None:
            self._block, self._connected = block, True
        q = self.queue
        return {
            "enabled": True,
            "kind": self.chain.kind,
            "chain_id": self._chain_id,
            "block_number": self._block,
            "connected": self._connected and (q is None or q.last_error is None),
            "queue_depth": self.pending_writes(),
            "queue_waiting": q.waiting_count() if q is not None else 0,
            "last_error": q.last_error if q is not None else None,
            "last_alert": q.last_alert if q is not None else None,
            "session_id": self.session_id,
            "account": self.client.address if self.client else None,
            "deployment": self.client.deployment.to_dict() if self.client and self.client.deployment else None,
            "settlement": self.settings.settlement,
            "epoch_rounds": self.epoch_rounds,
            "epochs_scored": self.book.epochs_scored if self.book else 0,
        }

    def contributions(self) -> list[dict[str, Any]]:
        """Per node: the on-chain record (None if unreadable or unregistered) and the local score."""
        assert self.book is not None
        totals = self.book.totals()
        rewards = self.book.reward_totals()
        scores = self.book.score_totals()
        ids = {name: node_id for node_id, name in self._names.items()}
        out = []
        for name, account in sorted(self._accounts.items()):
            chain_id, record = self._read_chain(functools.partial(self._record_of, account=account)) or (None, None)
            out.append({
                "name": name,
                "node_id": ids.get(name),
                "account": account,
                "chain_node_id": chain_id,
                "chain": record,
                "local": {**totals.get(name, {"compute_credit": 0, "updates_accepted": 0, "successful_rounds": 0}),
                          "score": round(scores.get(name, 0.0), 6), "reward_wei": str(rewards.get(name, 0))},
            })
        return out

    def _record_of(self, client: ChainClient, account: str) -> tuple[int | None, dict[str, int] | None]:
        node_id = client.node_id(account)
        if node_id == 0:
            return None, None
        r = client.get_contribution(self.session_id or 0, node_id)
        return node_id, {
            "compute_credit": r.compute_credit, "updates_accepted": r.updates_accepted,
            "successful_rounds": r.successful_rounds, "quality_bps": r.quality_bps, "last_epoch": r.last_epoch,
        }

    def rewards(self) -> dict[str, Any]:
        """The pool, the latest ``rewards.history_epochs`` epochs' splits, and every node's total."""
        assert self.book is not None
        pool = self._read_chain(lambda c: c.pool(self.session_id or 0))
        return {
            "session_id": self.session_id,
            "pool_wei": str(self.settings.pool_wei),
            "policy": self.settings.policy,
            "settlement": self.settings.settlement,
            "funded_wei": str(pool[0]) if pool else None,
            "allocated_wei": str(pool[1]) if pool else None,
            "epochs": [
                {"epoch": e, "total_wei": str(sum(a.values())), "amounts": {n: str(v) for n, v in sorted(a.items())}}
                for e, a in sorted(self.book.rewards.items())
            ],
            "totals": {n: str(v) for n, v in sorted(self.book.reward_totals().items())},
        }

    def transactions(self) -> list[dict[str, Any]]:
        """The deployment's transactions and the latest :data:`TX_ROWS` settlement operations."""
        rows = list(self._deploy_txs)
        if self.queue is not None:
            rows += [tx_row(o.key, o.status, o.tx_hash, o.gas_used, o.kind, o.attempts, o.error)
                     for o in self.queue.ops(last=TX_ROWS)]
        return rows

    def table(self) -> list[dict[str, Any]]:
        """(node, score, reward) rows for the end-of-run summary, from the local score book:
        no chain reads, so an exit never waits for the settlement sender."""
        assert self.book is not None
        scores, rewards = self.book.score_totals(), self.book.reward_totals()
        return [{"name": name, "account": account, "score": round(scores.get(name, 0.0), 6),
                 "reward_wei": rewards.get(name, 0)} for name, account in sorted(self._accounts.items())]


def tx_row(key: str, status: str, tx_hash: str | None, gas: int | None, kind: str = "deploy",
           attempts: int = 1, error: str | None = None) -> dict[str, Any]:
    """One row of :meth:`RecorderViews.transactions`."""
    return {"key": key, "kind": kind, "status": status, "tx_hash": tx_hash, "gas_used": gas,
            "attempts": attempts, "error": error}
