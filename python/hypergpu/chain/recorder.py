"""Records a training run's contributions on chain and pays its rewards.

A :class:`ChainRecorder` is a round observer of a
:class:`~hypergpu.coordinator.Coordinator`. Per round it only adds the
round's figures to an in-memory :class:`~hypergpu.rewards.EpochTally`
(microseconds). Every ``rewards.epoch_rounds`` rounds it waits (off the
event loop) for the effects of the epoch's updates still being measured
(:mod:`hypergpu.coordinator.effects`), scores the epoch
with :mod:`hypergpu.rewards` (quality from those effects), writes the scores and reward split to a local
:class:`~hypergpu.rewards.ScoreBook`, and enqueues the contribution batch
and the reward posting in the durable :class:`SettlementQueue`, whose
background thread does every chain write. Keys are ``record:<session>:<epoch>``
and ``rewards:<session>:<epoch>``, and the ScoreBook keeps an epoch's first
score, so a coordinator that restarts after a crash re-enqueues nothing new
and the chain refuses a second (session, epoch).

Node accounts: every node holds its own key (:mod:`hypergpu.identity`) and
is paid at the payout address its signed hello names: its key's address
unless it signed another. The coordinator holds no node's key; nodes claim
with their own. Which account each node was paid to, epoch by epoch, is
kept beside the session's queue (:class:`~hypergpu.chain.accounts.AccountBook`).
"""

from __future__ import annotations

import asyncio
import math
import secrets
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any


from hypergpu.chain import session_state
from hypergpu.chain.accounts import AccountBook
from hypergpu.chain.client import ChainClient
from hypergpu.chain.rpc import checksum
from hypergpu.chain.keys import Signer
from hypergpu.chain.merkle import RewardTree
from hypergpu.chain.queue import QueuedOp, SettlementQueue
from hypergpu.chain.recorder_views import RecorderViews, tx_row
from hypergpu.chain.types import ContributionEntry, Deployment
from hypergpu.errors import ChainError
from hypergpu.rewards import EpochTally, NodeEpochStats, RewardPolicy, ScoreBook, allocate, nonzero, score_epoch
from hypergpu.round.records import RoundRecord

if TYPE_CHECKING:
    from hypergpu.config.schema import HyperGPUConfig


#: Mined transactions the recorder's client keeps in memory (``ChainClient.transactions``):
#: an operation looks only at those it just sent, and every one is in the queue's journal.
SENT_KEPT = 64


class _LockedQueue(SettlementQueue):
    """The settlement queue, sending under a lock the recorder's reads share:
    one web3 provider (the embedded chain above all) serves one caller at a time."""

    def __init__(self, path: Path, client: ChainClient, lock: threading.Lock,
                 on_alert: Callable[[QueuedOp, str], None] | None = None,
                 on_change: Callable[[QueuedOp], None] | None = None):
        # a backlog joins epochs' postings rather than grow one operation per epoch
        super().__init__(path, client, on_alert=on_alert, on_change=on_change,
                         coalesce_after=client.config.coalesce_after)
        self.chain_lock = lock

    def process_one(self) -> bool:
        with self.chain_lock:
            worked = super().process_one()
            sent = self.client.transactions
            if len(sent) > 2 * SENT_KEPT:  # a session-long sender would keep every transaction it mined
                del sent[:-SENT_KEPT]
            return worked


class ChainRecorder(RecorderViews):
    """Round observer that settles contributions and rewards on chain.

    Call :meth:`start` (blocking: connects and deploys) before the run,
    append the recorder to ``coordinator.observers``, and call
    :meth:`finish` after it. The views (:meth:`status`,
    :meth:`contributions`, :meth:`rewards`, :meth:`transactions`) are in
    :class:`~hypergpu.chain.recorder_views.RecorderViews`.
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
        self.tally = EpochTally()
        self._lock = threading.Lock()
        self._dev_key: str | None = None
        self._accounts: dict[str, str] = {}  # node name -> where it is paid now
        self.accounts: AccountBook | None = None  # ... and was paid, epoch by epoch
        self._names: dict[int, str] = {}
        self._trees: dict[int, RewardTree] = {}  # the latest rewards.history_epochs epochs' (merkle)
        self._deploy_txs: list[dict[str, Any]] = []
        self._waiting: set[int] = set()  # operations published as waiting and not yet done or failed
        self._chain_id: int | None = None
        self._block: int | None = None
        self._connected = False
        self.settle_times: list[float] = []

    @property
    def state_path(self) -> Path | None:
        """This session's state file (None before :meth:`start`)."""
        return None if self.session_id is None else session_state.state_file(self.chain, self.session_id)

    # --- lifecycle ------------------------------------------------------------------

    def start(self, coordinator: Any) -> ChainRecorder:
        """Connects, deploys (or attaches), queues the session and its pool; blocking."""
        self.events = coordinator.events
        state = session_state.load_state(self.chain) if self.resume else None
        self.client = self.client or self._connect(state)
        if self.client.deployment is None:
            self.client.deploy(token=self.chain.reward_token)
        self._deploy_txs = [tx_row(t.action, "done", t.tx_hash, t.gas_used) for t in self.client.transactions]
        assert self.client.deployment is not None
        if state is not None:
            self.session_id = int(state["session_id"])
        else:  # a new session gets its own state file; no earlier session's is touched
            self.session_id = secrets.randbits(63) + 1
            session_state.save_state(self.chain, {
                "kind": self.chain.kind,
                "rpc_url": self.chain.effective_rpc_url,
                "session_id": self.session_id,
                "deployment": self.client.deployment.to_dict(),
                **({"dev_key": self._dev_key} if self._dev_key else {}),
            })
        self.accounts = AccountBook(session_state.session_file(self.chain, self.session_id, ".accounts.jsonl"))
        self._accounts = self.accounts.latest()
        self._chain_id = int(self.client.w3.eth.chain_id)
        self._block = int(self.client.w3.eth.block_number)
        self._connected = True
        self.book = ScoreBook(session_state.session_file(self.chain, self.session_id, ".scores.jsonl"),
                              self.session_id, window=self.settings.history_epochs)
        for epoch, amounts in self.book.rewards.items():
            self._rebuild_tree(epoch, amounts)
        self.queue = _LockedQueue(session_state.session_file(self.chain, self.session_id, ".sqlite3"),
                                  self.client, self._lock, on_alert=self._alert, on_change=self._op_changed)
        self.queue.enqueue_session(self.session_id, bytes.fromhex(coordinator.model.hash))
        self.queue.enqueue_funding(self.session_id, self.settings.pool_wei)
        self.queue.start()
        self._publish(
            "session", resumed=state is not None,
            deployment=self.client.deployment.to_dict(), account=self.client.address,
        )
        return self

    def _connect(self, state: dict[str, Any] | None) -> ChainClient:
        signer = session_state.session_signer(self.chain, state)
        if signer is None:
            # A local chain and no key configured: a dev key, kept so a restarted
            # coordinator still holds the coordinator role on the contracts it deployed.
            self._dev_key = "0x" + secrets.token_hex(32)
            signer = Signer.from_hex(self._dev_key)
        deployment = Deployment(**state["deployment"]) if state and state.get("deployment") else None
        return ChainClient.connect(self.chain, signer=signer, deployment=deployment)

    def __call__(self, coordinator: Any, record: RoundRecord) -> Any:
        """Adds one round to the epoch's tally; at an epoch's end returns the
        (awaitable) scoring and enqueueing, run off the event loop."""
        if self.queue is None:
            raise ChainError("ChainRecorder.start() must run before the first round")
        epoch = (record.round - 1) // self.epoch_rounds
        self._register_new(coordinator, epoch)
        self.tally.add_round(epoch, record, self._names, _refusals(coordinator))
        if record.round % self.epoch_rounds == 0:
            # off the event loop: the tally waits for the epoch's last effects still being measured
            return asyncio.to_thread(self._take_epoch, _refusals(coordinator), False)
        return None

    def _take_epoch(self, refusals: dict[str, int], final: bool) -> None:
        self._close_epoch(*self.tally.take(refusals), final)

    def finish(self, coordinator: Any | None = None, *, complete: bool = True, timeout_s: float | None = None) -> bool:
        """Settles the partial last epoch, optionally completes the session,
        and waits (bounded) for the queue; True if everything was sent."""
        if self.queue is None:
            return False
        if self.tally.rounds and coordinator is not None:
            self._take_epoch(_refusals(coordinator), True)
        if complete:
            self.queue.enqueue_complete(self.session_id or 0)
        started = time.perf_counter()
        drained = self.queue.drain(self.settings.flush_timeout_s if timeout_s is None else timeout_s)
        self.settle_times.append(time.perf_counter() - started)
        self._publish("flushed", drained=drained, pending=self.queue.pending_count())
        return drained

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()

    # --- accounts ---------------------------------------------------------------------

    def account_of(self, name: str, epoch: int | None = None) -> str | None:
        """Where ``name`` is paid now, or was paid in ``epoch`` (None: never seen with an account)."""
        if epoch is None or self.accounts is None:
            return self._accounts.get(name)
        return self.accounts.at(name, epoch)

    def _register_new(self, coordinator: Any, epoch: int) -> None:
        """Learn each node's payout address (what its verified hello signed); register the new ones."""
        assert self.queue is not None and self.accounts is not None
        joined = []
        for node in coordinator.registry.all():
            if node.node_id not in self._names:
                self._names[node.node_id] = node.name
            payout = getattr(node, "payout", None)
            if payout is None or not self.accounts.set(node.name, payout, epoch):
                continue
            account = self._accounts[node.name] = checksum(payout, f"payout address of {node.name}")
            joined.append(account)
            self._publish("node-queued", node=node.node_id, name=node.name, account=account, epoch=epoch)
        if joined:
            self.queue.enqueue_nodes(joined)  # one registration transaction for all newcomers

    # --- per epoch (off the event loop) ------------------------------------------------

    def _close_epoch(self, epoch: int, stats: list[NodeEpochStats], final: bool) -> None:
        assert self.book is not None and self.queue is not None and self.session_id is not None
        if not stats:
            return
        scores = self.book.scores_of(epoch)  # a resumed run keeps the epoch's first score
        if scores is None:
            scores = score_epoch(epoch, stats)
            self.book.add_epoch(scores)
        amounts = self.book.rewards_of(epoch)
        if amounts is None:
            amounts = allocate(self._budget(epoch, final), scores.nodes, self.policy)
            self.book.add_rewards(epoch, amounts)
        accounts = {n: a for n in scores.nodes if (a := self.account_of(n, epoch)) is not None}
        if len(accounts) < len(scores.nodes):  # only a node no verified hello introduced: not paid
            self._publish("alert", epoch=epoch, message="no payout address for " +
                          ", ".join(sorted(set(scores.nodes) - set(accounts))))
        rows = [(accounts[n], *ContributionEntry.of(s, node_id=1).as_tuple()[1:])
                for n, s in sorted(scores.nodes.items()) if n in accounts]
        self.queue.enqueue_account_contributions(self.session_id, epoch, rows)
        paid = {accounts[n]: a for n, a in nonzero(amounts).items() if n in accounts}
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
        own = self.book.rewards_of(epoch)  # running totals: no pass over the session's epochs
        allocated = self.book.allocated - (sum(own.values()) if own else 0)
        if final or epoch + 1 >= self.planned_epochs:
            return max(0, pool - allocated)
        return max(0, pool * (epoch + 1) // self.planned_epochs - allocated)

    def _rebuild_tree(self, epoch: int, amounts: dict[str, int]) -> RewardTree | None:
        paid = {account: a for n, a in nonzero(amounts).items() if (account := self.account_of(n, epoch))}
        if not paid:
            return None
        self._trees[epoch] = tree = RewardTree.build(paid)
        while len(self._trees) > self.settings.history_epochs:
            del self._trees[next(iter(self._trees))]
        return tree

    def merkle_claim(self, name: str, epoch: int) -> tuple[str, int, list[bytes]]:
        """(account, amount, proof) for a node's Merkle claim of an epoch (an older
        epoch's tree is rebuilt from the score book)."""
        tree = self._trees.get(epoch)
        if tree is None and self.book is not None and (amounts := self.book.rewards_of(epoch)) is not None:
            tree = self._rebuild_tree(epoch, amounts)
        if tree is None:
            raise ChainError(f"no reward root for epoch {epoch}")
        account = self.account_of(name, epoch)
        if account is None:
            raise ChainError(f"no payout account known for node {name!r}")
        account = checksum(account)
        return account, tree.amounts[account], tree.proof(account)

    # --- events -----------------------------------------------------------------------

    def _publish(self, type_: str, **data: Any) -> None:
        if self.events is not None:
            self.events.publish("chain", type=type_, session=self.session_id, **data)

    def _alert(self, op: QueuedOp, message: str) -> None:
        self._publish("alert", key=op.key, op=op.kind, message=message)

    def _op_changed(self, op: QueuedOp) -> None:
        """One event per operation and status it reached, as the sender reaches it (a waiting
        one once while it waits, and again once done)."""
        if op.status == "waiting":
            if op.id in self._waiting:
                return
            self._waiting.add(op.id)
        else:
            self._waiting.discard(op.id)
        self._publish("tx", key=op.key, op=op.kind, status=op.status, tx_hash=op.tx_hash,
                      gas_used=op.gas_used, error=op.error)


def _refusals(coordinator: Any) -> dict[str, int]:
    """Each registered node's name -> updates refused so far."""
    return {node.name: sum(node.refusals.values()) for node in coordinator.registry.all()}
