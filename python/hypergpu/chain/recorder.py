"""Records a training run's contributions on chain and pays its rewards.

A :class:`ChainRecorder` is a round observer of a
:class:`~hypergpu.coordinator.Coordinator`. Per round it only adds the
round's figures to an in-memory tally (microseconds). Every
``rewards.epoch_rounds`` rounds it scores the epoch with
:mod:`hypergpu.rewards`, writes the scores and reward split to a local
:class:`~hypergpu.rewards.ScoreBook`, and enqueues the contribution batch
and the reward posting in the durable :class:`SettlementQueue`, whose
background thread does every chain write. Keys are ``record:<session>:<epoch>``
and ``rewards:<session>:<epoch>``, and the ScoreBook keeps an epoch's first
score, so a coordinator that restarts after a crash re-enqueues nothing new
and the chain refuses a second (session, epoch).

Node accounts: nodes never hold the coordinator's key. A node listed in
``rewards.payout_addresses`` (name -> address) is paid there. Any other node
gets an account derived from a per-session random salt and its name; the
salt lives in the session state file (mode 0600) beside the queue, so whoever
runs the coordinator holds those accounts' keys (:meth:`node_signer`) and
passes them on. That suits local chains and demos; on a public chain give
every node its own payout address.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from eth_utils import keccak

from hypergpu.chain.client import ChainClient, checksum
from hypergpu.chain.keys import Signer, load_signer
from hypergpu.chain.merkle import RewardTree
from hypergpu.chain.queue import SettlementQueue
from hypergpu.chain.types import Deployment
from hypergpu.errors import ChainError
from hypergpu.rewards import EpochScores, NodeEpochStats, RewardPolicy, ScoreBook, allocate, nonzero, score_epoch

if TYPE_CHECKING:
    from hypergpu.config.schema import HyperGPUConfig

log = logging.getLogger("hypergpu.chain.recorder")


class _LockedQueue(SettlementQueue):
    """The settlement queue, sending under a lock the recorder's reads share:
    one web3 provider (the embedded chain above all) serves one caller at a time."""

    def __init__(self, path: Path, client: ChainClient, lock: threading.Lock):
        super().__init__(path, client)
        self.chain_lock = lock

    def process_one(self) -> bool:
        with self.chain_lock:
            return super().process_one()


@dataclass
class _Tally:
    """One node's figures over the rounds of the open epoch."""

    samples: int = 0
    turnaround_s: float = 0.0
    compute_s: float = 0.0
    rounds_ok: int = 0
    participated: int = 0
    cosines: list[float] = field(default_factory=list)
    refusals_at_start: int = 0


def derived_private_key(salt: bytes, name: str) -> str:
    """The payout key of a node without its own address (see the module doc)."""
    return "0x" + keccak(b"hypergpu-node-payout" + salt + name.encode()).hex()


class ChainRecorder:
    """Round observer that settles contributions and rewards on chain.

    Call :meth:`start` (blocking: connects and deploys) before the run,
    append the recorder to ``coordinator.observers``, and call
    :meth:`finish` after it. :meth:`status`, :meth:`contributions`,
    :meth:`rewards` and :meth:`transactions` return plain JSON-able data
    (wei amounts as decimal strings, since they exceed JavaScript's integers).
    """

    def __init__(self, config: HyperGPUConfig, *, resume: bool = False, client: ChainClient | None = None):
        self.config = config
        self.chain = config.chain
        self.settings = config.rewards
        self.resume = resume
        self.policy = RewardPolicy(mode=self.settings.policy)
        self.epoch_rounds = self.settings.epoch_rounds
        self.planned_epochs = max(1, math.ceil(config.training.rounds / self.epoch_rounds))
        self.client = client
        self.session_id: int | None = None
        self.queue: _LockedQueue | None = None
        self.book: ScoreBook | None = None
        self.events: Any = None
        self._lock = threading.Lock()
        self._salt = b""
        self._accounts: dict[str, str] = {}  # node name -> payout account
        self._names: dict[int, str] = {}  # coordinator node id -> name
        self._tally: dict[str, _Tally] = {}
        self._epoch_rounds_seen = 0
        self._open_epoch: int | None = None
        self._trees: dict[int, RewardTree] = {}
        self._deploy_txs: list[dict[str, Any]] = []
        self._published_ops: set[int] = set()
        self._chain_id: int | None = None
        self._block: int | None = None
        self._connected = False
        self.settle_times: list[float] = []

    # --- paths and session state ----------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.chain.queue_path.with_suffix(".session.json")

    def _session_file(self, suffix: str) -> Path:
        q = self.chain.queue_path
        return q.with_name(f"{q.stem}-{self.session_id}{suffix}")

    def _load_state(self) -> dict[str, Any] | None:
        # The embedded chain lives in this process: after a restart there is nothing to resume on it.
        if not self.resume or self.chain.kind == "embedded" or not self.state_path.exists():
            return None
        state = json.loads(self.state_path.read_text(encoding="utf-8"))
        if state.get("kind") != self.chain.kind or state.get("rpc_url") != self.chain.effective_rpc_url:
            log.warning("session state %s is for another chain; starting a new session", self.state_path)
            return None
        return state

    def _save_state(self, state: dict[str, Any]) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1)
        os.replace(tmp, self.state_path)

    # --- lifecycle ------------------------------------------------------------------

    def start(self, coordinator: Any) -> ChainRecorder:
        """Connects, deploys (or attaches), queues the session and its pool; blocking."""
        self.events = coordinator.events
        state = self._load_state()
        local = self.chain.kind in ("embedded", "anvil")
        signer = load_signer(self.chain, required=not local)
        dev_key = None
        if signer is None:
            # A local chain and no key configured: a dev key, kept so a restarted
            # coordinator still holds the coordinator role on the contracts it deployed.
            dev_key = (state or {}).get("dev_key") or "0x" + secrets.token_hex(32)
            signer = Signer.from_hex(dev_key)
        deployment = Deployment(**state["deployment"]) if state and state.get("deployment") else None
        if self.client is None:
            self.client = ChainClient.connect(self.chain, signer=signer, deployment=deployment)
        if self.client.deployment is None:
            self.client.deploy(token=self.chain.reward_token)
        self._deploy_txs = [self._tx_row(t.action, "done", t.tx_hash, t.gas_used) for t in self.client.transactions]
        assert self.client.deployment is not None
        self.session_id = int(state["session_id"]) if state else secrets.randbits(63) + 1
        self._salt = bytes.fromhex(state["salt"]) if state else secrets.token_bytes(32)
        self._save_state({
            "kind": self.chain.kind,
            "rpc_url": self.chain.effective_rpc_url,
            "session_id": self.session_id,
            "deployment": self.client.deployment.to_dict(),
            "salt": self._salt.hex(),
            **({"dev_key": dev_key} if dev_key else {}),
        })
        self._chain_id = int(self.client.w3.eth.chain_id)
        self._block = int(self.client.w3.eth.block_number)
        self._connected = True
        self.book = ScoreBook(self._session_file(".scores.jsonl"), self.session_id)
        for epoch, amounts in self.book.rewards.items():
            self._rebuild_tree(epoch, amounts)
        self.queue = _LockedQueue(self._session_file(".sqlite3"), self.client, self._lock)
        self.queue.enqueue_session(self.session_id, bytes.fromhex(coordinator.model.hash))
        self.queue.enqueue_funding(self.session_id, self.settings.pool_wei)
        self.queue.start()
        self._publish(
            "session", resumed=state is not None,
            deployment=self.client.deployment.to_dict(), account=self.client.address,
        )
        return self

    def __call__(self, coordinator: Any, record: dict[str, Any]) -> Any:
        """Adds one round to the epoch's tally; at an epoch's end returns the
        (awaitable) scoring and enqueueing, run off the event loop."""
        if self.queue is None:
            raise ChainError("ChainRecorder.start() must run before the first round")
        self._register_new(coordinator)
        epoch = (int(record["round"]) - 1) // self.epoch_rounds
        if self._open_epoch is None:
            self._open_epoch = epoch
        self._add_round(coordinator, record)
        self._publish_done_ops()
        if int(record["round"]) % self.epoch_rounds == 0:
            return asyncio.to_thread(self._close_epoch, *self._take_epoch(coordinator), False)
        return None

    def finish(self, coordinator: Any | None = None, *, complete: bool = True, timeout_s: float | None = None) -> bool:
        """Settles the partial last epoch, optionally completes the session,
        and waits (bounded) for the queue; True if everything was sent."""
        if self.queue is None:
            return False
        if self._epoch_rounds_seen and coordinator is not None:
            self._close_epoch(*self._take_epoch(coordinator), True)
        if complete:
            self.queue.enqueue_complete(self.session_id or 0)
        started = time.perf_counter()
        drained = self.queue.drain(self.settings.flush_timeout_s if timeout_s is None else timeout_s)
        self.settle_times.append(time.perf_counter() - started)
        self._publish_done_ops()
        self._publish("flushed", drained=drained, pending=self.queue.pending_count())
        return drained

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()

    # --- per round --------------------------------------------------------------------

    def _account_of(self, name: str) -> str:
        address = self.settings.payout_addresses.get(name)
        if address is not None:
            return checksum(address, f"payout address of {name}")
        return Signer.from_hex(derived_private_key(self._salt, name)).address

    def node_signer(self, name: str) -> Signer:
        """The derived payout account of a node without its own address."""
        if name in self.settings.payout_addresses:
            raise ChainError(f"node {name!r} is paid to its own address; its key is not the coordinator's")
        return Signer.from_hex(derived_private_key(self._salt, name))

    def _register_new(self, coordinator: Any) -> None:
        assert self.queue is not None
        joined = []
        for node in coordinator.registry.all():
            if node.node_id not in self._names:
                self._names[node.node_id] = node.name
            if node.name not in self._accounts:
                self._accounts[node.name] = account = self._account_of(node.name)
                joined.append(account)
                self._publish("node-queued", node=node.node_id, name=node.name, account=account)
        if joined:
            self.queue.enqueue_nodes(joined)  # one registration transaction for all newcomers

    def _add_round(self, coordinator: Any, record: dict[str, Any]) -> None:
        self._epoch_rounds_seen += 1
        applied = bool(record.get("applied"))
        reported = set(record.get("reported", ()))
        for node_id in record.get("participants", ()):
            name = self._names.get(node_id)
            if name is None:
                continue
            tally = self._tally_of(coordinator, node_id, name)
            tally.participated += 1
            figures = record.get("nodes", {}).get(str(node_id))
            if not applied or node_id not in reported or figures is None:
                continue
            tally.rounds_ok += 1
            tally.samples += int(figures.get("samples") or 0)
            tally.compute_s += float(figures.get("compute_s") or 0.0)
            tally.turnaround_s += float(figures.get("turnaround_s") or figures.get("compute_s") or 0.0)
            if figures.get("cosine") is not None:
                tally.cosines.append(float(figures["cosine"]))

    def _tally_of(self, coordinator: Any, node_id: int, name: str) -> _Tally:
        tally = self._tally.get(name)
        if tally is None:
            node = coordinator.registry.get(node_id)
            tally = self._tally[name] = _Tally(refusals_at_start=sum(node.refusals.values()))
        return tally

    def _take_epoch(self, coordinator: Any) -> tuple[int, list[NodeEpochStats]]:
        """The open epoch's stats; resets the tally for the next epoch."""
        epoch = self._open_epoch if self._open_epoch is not None else 0
        stats = []
        by_name = {n.name: n for n in coordinator.registry.all()}
        for name, t in sorted(self._tally.items()):
            node = by_name.get(name)
            refused = sum(node.refusals.values()) - t.refusals_at_start if node is not None else 0
            stats.append(NodeEpochStats(
                node=name,
                samples_accepted=t.samples,
                compute_seconds=t.turnaround_s,  # measured by the coordinator: params out -> update in
                reported_seconds=t.compute_s,  # the node's own figure; the lower one counts
                rounds_succeeded=t.rounds_ok,
                cosine=sum(t.cosines) / len(t.cosines) if t.cosines else None,
                uptime=t.participated / max(1, self._epoch_rounds_seen),
                exchanges_ok=t.rounds_ok,
                exchanges_total=t.participated + max(0, refused),
            ))
        self._tally = {}
        self._epoch_rounds_seen = 0
        self._open_epoch = None
        return epoch, stats

    # --- per epoch (off the event loop) ------------------------------------------------

    def _close_epoch(self, epoch: int, stats: list[NodeEpochStats], final: bool) -> None:
        assert self.book is not None and self.queue is not None and self.session_id is not None
        if not stats:
            return
        scores = self.book.epochs.get(epoch)  # a resumed run keeps the epoch's first score
        if scores is None:
            scores = score_epoch(epoch, stats)
            self.book.add_epoch(scores)
        amounts = self.book.rewards.get(epoch)
        if amounts is None:
            amounts = allocate(self._budget(epoch, final), scores.nodes, self.policy)
            self.book.add_rewards(epoch, amounts)
        rows = [(self._accounts[n], *s.to_entry(node_id=1).as_tuple()[1:]) for n, s in sorted(scores.nodes.items())]
        self.queue.enqueue_account_contributions(self.session_id, epoch, rows)
        paid = {self._accounts[n]: a for n, a in nonzero(amounts).items()}
        if paid and self.settings.settlement == "merkle":
            tree = self._rebuild_tree(epoch, amounts)
            assert tree is not None
            self.queue.enqueue_reward_root(self.session_id, epoch, tree.root, tree.total, len(tree))
        elif paid:
            self.queue.enqueue_rewards(self.session_id, epoch, paid)
        self._publish(
            "epoch-queued", epoch=epoch, nodes=len(rows), reward_total=str(sum(amounts.values())),
            scores={n: round(s.score, 3) for n, s in scores.nodes.items()},
            outliers=scores.outliers,
        )

    def _budget(self, epoch: int, final: bool) -> int:
        """This epoch's share of the pool: an even split over the planned epochs,
        carrying forward what earlier epochs left; the last epoch takes the rest."""
        assert self.book is not None
        pool = self.settings.pool_wei
        allocated = sum(sum(a.values()) for e, a in self.book.rewards.items() if e != epoch)
        if final or epoch + 1 >= self.planned_epochs:
            return max(0, pool - allocated)
        return max(0, pool * (epoch + 1) // self.planned_epochs - allocated)

    def _rebuild_tree(self, epoch: int, amounts: dict[str, int]) -> RewardTree | None:
        paid = {self._accounts.get(n) or self._account_of(n): a for n, a in nonzero(amounts).items()}
        if not paid:
            return None
        self._trees[epoch] = tree = RewardTree.build(paid)
        return tree

    def merkle_claim(self, name: str, epoch: int) -> tuple[str, int, list[bytes]]:
        """(account, amount, proof) for a node's Merkle claim of an epoch."""
        tree = self._trees.get(epoch)
        if tree is None:
            raise ChainError(f"no reward root for epoch {epoch}")
        account = checksum(self._accounts.get(name) or self._account_of(name))
        return account, tree.amounts[account], tree.proof(account)

    # --- events -----------------------------------------------------------------------

    def _publish(self, type_: str, **data: Any) -> None:
        if self.events is not None:
            self.events.publish("chain", type=type_, session=self.session_id, **data)

    def _publish_done_ops(self) -> None:
        assert self.queue is not None
        for op in self.queue.ops():
            if op.status != "pending" and op.id not in self._published_ops:
                self._published_ops.add(op.id)
                self._publish("tx", key=op.key, op=op.kind, status=op.status, tx_hash=op.tx_hash,
                              gas_used=op.gas_used, error=op.error)

    # --- views for the API and the CLI -------------------------------------------------

    def _read_chain(self, what: Any, timeout_s: float = 2.0) -> Any:
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
            "queue_depth": q.pending_count() if q is not None else 0,
            "last_error": q.last_error if q is not None else None,
            "session_id": self.session_id,
            "account": self.client.address if self.client else None,
            "deployment": self.client.deployment.to_dict() if self.client and self.client.deployment else None,
            "settlement": self.settings.settlement,
            "epoch_rounds": self.epoch_rounds,
            "epochs_scored": len(self.book.epochs) if self.book else 0,
        }

    def contributions(self) -> list[dict[str, Any]]:
        """Per node: the on-chain record (None if unreadable or unregistered) and the local score."""
        assert self.book is not None
        totals = self.book.totals()
        rewards = self.book.reward_totals()
        scores: dict[str, float] = {}
        for e in self.book.epochs.values():
            for n, s in e.nodes.items():
                scores[n] = scores.get(n, 0.0) + s.score
        ids = {name: node_id for node_id, name in self._names.items()}
        out = []
        for name, account in sorted(self._accounts.items()):
            chain_id, record = self._read_chain(lambda c, a=account: self._record_of(c, a)) or (None, None)
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
        rows = list(self._deploy_txs)
        if self.queue is not None:
            rows += [self._tx_row(o.key, o.status, o.tx_hash, o.gas_used, o.kind, o.attempts, o.error)
                     for o in self.queue.ops()]
        return rows

    @staticmethod
    def _tx_row(key: str, status: str, tx_hash: str | None, gas: int | None, kind: str = "deploy",
                attempts: int = 1, error: str | None = None) -> dict[str, Any]:
        return {"key": key, "kind": kind, "status": status, "tx_hash": tx_hash, "gas_used": gas,
                "attempts": attempts, "error": error}

    def table(self) -> list[dict[str, Any]]:
        """(node, score, reward) rows for the end-of-run summary."""
        return [{"name": c["name"], "account": c["account"], "score": c["local"]["score"],
                 "reward_wei": int(c["local"]["reward_wei"])} for c in self.contributions()]
