"""web3.py client for the HyperGPU contracts.

Every write sets an explicit gas limit (estimate plus a margin: Monad charges
the limit, not the gas used), uses a locally tracked nonce, and is retried
with backoff when the RPC endpoint drops. Writes that the coordinator repeats
after a crash are idempotent: each checks on chain whether it already took
effect before sending, and the contracts refuse a second (session, epoch).
"""


from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from eth_typing import HexStr
from eth_utils import to_checksum_address
from web3 import Web3
from web3.types import FilterParams

from hypergpu.config.chain import ChainConfig
from hypergpu.chain.contracts import ERC20_ABI, load_artifact
from hypergpu.chain.keys import Signer, load_signer
from hypergpu.chain.rpc import checksum, fund_from_dev_account, make_web3, retry
from hypergpu.chain.transactions import Transactor
from hypergpu.chain.types import (
    SESSION_STATUS,
    ContributionEntry,
    ContributionRecord,
    Deployment,
    SessionInfo,
    TxResult,
)
from hypergpu.errors import ChainError, ConfigError, InvalidArgumentError

__all__ = ["ChainClient"]

log = logging.getLogger(__name__)

_DEV_FUNDING_WEI = 100 * 10**18


class ChainClient(Transactor):
    """Deploys, writes to and reads the three HyperGPU contracts as one signer."""

    def __init__(self, w3: Web3, signer: Signer, config: ChainConfig, deployment: Deployment | None = None):
        super().__init__(w3, signer, config)
        self.deployment: Deployment | None = None
        if deployment is not None:
            self.attach(deployment)

    def __repr__(self) -> str:
        where = self.deployment.distributor if self.deployment else "not deployed"
        return f"ChainClient(kind={self.config.kind}, account={self.address}, distributor={where})"

    # --- construction ------------------------------------------------------------

    @classmethod
    def connect(
        cls,
        config: ChainConfig | None = None,
        *,
        w3: Web3 | None = None,
        signer: Signer | None = None,
        deployment: Deployment | None = None,
    ) -> ChainClient:
        """Connects as configured. Local chains (embedded, anvil) without a
        configured key use a throwaway key; on them an unfunded signer is
        funded from the node's dev account."""
        config = config or ChainConfig()
        w3 = w3 or make_web3(config)
        local = config.kind in ("embedded", "anvil")
        chain_id = retry(config, "eth_chainId", lambda: w3.eth.chain_id)
        expected = config.expected_chain_id
        if expected is not None and chain_id != expected:
            raise ConfigError(f"{config.kind} endpoint reports chain id {chain_id}, expected {expected}")
        if signer is None:
            signer = load_signer(config, required=not local)
        if signer is None:
            signer = Signer.create()
        if local and w3.eth.get_balance(signer.address) == 0:
            fund_from_dev_account(w3, signer.address, _DEV_FUNDING_WEI)
        return cls(w3, signer, config, deployment or _deployment_from(config))

    def with_signer(self, signer: Signer) -> ChainClient:
        """The same chain and contracts, acting as another account (e.g. a node claiming)."""
        return ChainClient(self.w3, signer, self.config, self.deployment)

    def attach(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.registry = self._contract("TrainingRegistry", deployment.registry)
        self.tracker = self._contract("ContributionTracker", deployment.tracker)
        self.distributor = self._contract("RewardDistributor", deployment.distributor)

    def _contract(self, name: str, address: str) -> Any:
        return self.w3.eth.contract(address=checksum(address, f"{name} address"), abi=load_artifact(name)["abi"])

    def contract_at(self, name: str, address: str) -> Any:
        return self._contract(name, address)

    def _require_deployed(self) -> Deployment:
        if self.deployment is None:
            raise ChainError("contracts are not deployed or attached: call deploy() or attach()")
        return self.deployment

    # --- deployment --------------------------------------------------------------

    def deploy_contract(self, name: str, *args: Any) -> Any:
        """Deploys one artifact and returns the bound contract."""
        artifact = load_artifact(name)
        factory = self.w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        result = self._transact(f"deploy {name}", factory.constructor(*args))
        assert result is not None
        receipt = self.w3.eth.get_transaction_receipt(HexStr(result.tx_hash))
        address = receipt["contractAddress"]
        if address is None:
            raise ChainError(f"deploy {name}: receipt of tx {result.tx_hash} names no contract address")
        return self._contract(name, address)

    def deploy(self, token: str | None = None, coordinator: str | None = None) -> Deployment:
        """Deploys registry, tracker and distributor; this account is admin, and
        coordinator unless another address is given. ``token`` None pays natively."""
        coordinator = checksum(coordinator, "coordinator") if coordinator else self.address
        token_address = checksum(token, "reward token") if token else "0x" + "00" * 20
        registry = self.deploy_contract("TrainingRegistry", self.address, coordinator)
        tracker = self.deploy_contract("ContributionTracker", registry.address, self.address, coordinator)
        distributor = self.deploy_contract(
            "RewardDistributor", registry.address, token_address, self.address, coordinator
        )
        deployment = Deployment(registry.address, tracker.address, distributor.address, token and token_address)
        self.attach(deployment)
        return deployment

    # --- sessions and nodes ------------------------------------------------------

    def create_session(self, session_id: int, model_hash: bytes) -> TxResult | None:
        self._require_deployed()
        if len(model_hash) != 32:
            raise InvalidArgumentError(f"model hash must be 32 bytes, got {len(model_hash)}")
        return self._transact(
            f"createSession({session_id})",
            self.registry.functions.createSession(session_id, model_hash),
            applied=lambda: self.session_status(session_id) != "none",
        )

    def complete_session(self, session_id: int) -> TxResult | None:
        self._require_deployed()
        return self._transact(
            f"completeSession({session_id})",
            self.registry.functions.completeSession(session_id),
            applied=lambda: self.session_status(session_id) == "completed",
        )

    def cancel_session(self, session_id: int) -> TxResult | None:
        self._require_deployed()
        return self._transact(
            f"cancelSession({session_id})",
            self.registry.functions.cancelSession(session_id),
            applied=lambda: self.session_status(session_id) == "cancelled",
        )

    def register_nodes(self, accounts: Iterable[str]) -> dict[str, int]:
        """Registers the accounts not yet registered; returns every account's node id."""
        self._require_deployed()
        wanted = list(dict.fromkeys(checksum(a, "node address") for a in accounts))
        if not wanted:
            raise InvalidArgumentError("register_nodes needs at least one address")

        def missing() -> list[str]:
            return [a for a in wanted if self.node_id(a) == 0]

        todo = missing()
        if todo:
            self._transact(
                f"registerNodes({len(todo)})",
                self.registry.functions.registerNodes(todo),
                applied=lambda: not missing(),
            )
        return {a: self.node_id(a) for a in wanted}

    def node_id(self, account: str) -> int:
        return int(self._call("nodeIdOf", self.registry.functions.nodeIdOf(checksum(account, "node address"))))

    def node_account(self, node_id: int) -> str | None:
        account = self._call("accountOf", self.registry.functions.accountOf(node_id))
        return None if int(account, 16) == 0 else account

    def session_status(self, session_id: int) -> str:
        return SESSION_STATUS[self._call("sessionStatus", self.registry.functions.sessionStatus(session_id))]

    def get_session(self, session_id: int) -> SessionInfo:
        model_hash, start, end, status = self._call(
            f"getSession({session_id})", self.registry.functions.getSession(session_id)
        )
        return SessionInfo(session_id, bytes(model_hash), start, end, SESSION_STATUS[status])

    # --- contributions -----------------------------------------------------------

    def record_contributions(self, session_id: int, epoch: int, entries: Sequence[ContributionEntry]) -> TxResult | None:
        """Records one epoch's batch; a repeat of a recorded epoch is a no-op."""
        self._require_deployed()
        if not entries:
            raise InvalidArgumentError("record_contributions needs at least one entry")
        ids = [e.node_id for e in entries]
        if len(set(ids)) != len(ids):
            raise InvalidArgumentError(f"node ids repeat within epoch {epoch}'s batch")
        return self._transact(
            f"recordBatch({session_id}, epoch {epoch}, {len(entries)} nodes)",
            self.tracker.functions.recordBatch(session_id, epoch, [e.as_tuple() for e in entries]),
            applied=lambda: self.is_epoch_recorded(session_id, epoch),
        )

    def is_epoch_recorded(self, session_id: int, epoch: int) -> bool:
        return bool(self._call("epochRecorded", self.tracker.functions.epochRecorded(session_id, epoch)))

    def get_contribution(self, session_id: int, node_id: int) -> ContributionRecord:
        fields = self._call("getContribution", self.tracker.functions.getContribution(session_id, node_id))
        return ContributionRecord(*fields)

    # --- rewards -----------------------------------------------------------------

    def fund_pool(
        self, session_id: int, amount: int, *, applied: Callable[[], bool] | None = None
    ) -> TxResult | None:
        """Adds ``amount`` to the pool (once: a retry resumes the transaction sent, see
        :mod:`~hypergpu.chain.transactions`); ``applied`` as in :meth:`_transact`."""
        deployment = self._require_deployed()
        if amount <= 0:
            raise InvalidArgumentError(f"pool funding must be positive, got {amount}")
        fund = self.distributor.functions.fund(session_id, amount)
        if deployment.token:
            token = self.w3.eth.contract(address=checksum(deployment.token, "reward token"), abi=ERC20_ABI)
            self._transact("approve", token.functions.approve(deployment.distributor, amount))
            return self._transact(f"fund({session_id})", fund, applied=applied)
        return self._transact(f"fund({session_id})", fund, value=amount, applied=applied)

    def top_up_pool(self, session_id: int, total: int) -> TxResult | None:
        """Funds the pool up to ``total``: what is funded already counts, whoever funded it,
        so a repeat (or a restart) sends nothing."""
        funded, _ = self.pool(session_id)
        if funded >= total:
            return None
        return self.fund_pool(session_id, total - funded, applied=lambda: self.pool(session_id)[0] >= total)

    def withdraw_unallocated(self, session_id: int, to: str | None = None) -> TxResult:
        """Admin only: sends what a completed or cancelled session's pool never allocated
        to ``to`` (this account if None)."""
        self._require_deployed()
        recipient = checksum(to or self.address, "recipient")
        result = self._transact(
            f"withdrawUnallocated({session_id})", self.distributor.functions.withdrawUnallocated(session_id, recipient)
        )
        assert result is not None
        return result

    def withdrawn(self, session_id: int) -> int:
        """What the admin took back from a closed session's pool."""
        return int(self._call("withdrawn", self.distributor.functions.withdrawn(session_id)))

    def post_rewards(self, session_id: int, epoch: int, amounts: Mapping[str, int]) -> TxResult | None:
        """Per-node settlement: credits each account's pending balance once per epoch."""
        self._require_deployed()
        accounts = [checksum(a, "reward recipient") for a in amounts]
        values = [int(v) for v in amounts.values()]
        if any(v < 0 for v in values):
            raise InvalidArgumentError("reward amounts must be non-negative")
        return self._transact(
            f"postRewards({session_id}, epoch {epoch}, {len(accounts)} nodes)",
            self.distributor.functions.postRewards(session_id, epoch, accounts, values),
            applied=lambda: self.is_epoch_settled(session_id, epoch),
        )

    def post_reward_root(self, session_id: int, epoch: int, root: bytes, total: int, nodes: int) -> TxResult | None:
        """Merkle settlement: one root per epoch, whatever the number of nodes."""
        self._require_deployed()
        return self._transact(
            f"postRewardRoot({session_id}, epoch {epoch})",
            self.distributor.functions.postRewardRoot(session_id, epoch, root, total, nodes),
            applied=lambda: self.is_epoch_settled(session_id, epoch),
        )

    def is_epoch_settled(self, session_id: int, epoch: int) -> bool:
        return bool(self._call("epochSettled", self.distributor.functions.epochSettled(session_id, epoch)))

    def claim(self, amount: int | None = None) -> TxResult:
        """Withdraws ``amount`` (all if None) of this account's pending reward."""
        self._require_deployed()
        fn = self.distributor.functions.claimAll() if amount is None else self.distributor.functions.claim(amount)
        result = self._transact("claim", fn)
        assert result is not None
        return result

    def claim_merkle(
        self, session_id: int, epoch: int, account: str, amount: int, proof: Sequence[bytes]
    ) -> TxResult:
        self._require_deployed()
        account = checksum(account, "claimant")
        result = self._transact(
            f"claimMerkle({session_id}, epoch {epoch})",
            self.distributor.functions.claimMerkle(session_id, epoch, account, amount, list(proof)),
        )
        assert result is not None
        return result

    def pending_reward(self, account: str) -> int:
        return int(self._call("pending", self.distributor.functions.pending(checksum(account))))

    def claimed_reward(self, account: str) -> int:
        return int(self._call("claimed", self.distributor.functions.claimed(checksum(account))))

    def pool(self, session_id: int) -> tuple[int, int]:
        """(funded, allocated) of a session's pool."""
        funded = self._call("funded", self.distributor.functions.funded(session_id))
        allocated = self._call("allocated", self.distributor.functions.allocated(session_id))
        return int(funded), int(allocated)

    def balance(self, account: str | None = None) -> int:
        """Native balance, or token balance when the deployment pays in a token."""
        account = checksum(account or self.address)
        deployment = self._require_deployed()
        if deployment.token:
            token = self.w3.eth.contract(address=checksum(deployment.token, "reward token"), abi=ERC20_ABI)
            return int(self._call("balanceOf", token.functions.balanceOf(account)))
        return int(self._retry("eth_getBalance", lambda: self.w3.eth.get_balance(account)))

    # --- history -----------------------------------------------------------------

    def history(self, session_id: int | None = None, from_block: int = 0) -> list[dict[str, Any]]:
        """The contracts' events in chain order; with ``session_id``, only the
        events naming that session (pooled claims name session 0)."""
        self._require_deployed()
        decoders: dict[tuple[str, bytes], Any] = {}
        for contract in (self.registry, self.tracker, self.distributor):
            for event in contract.events:
                topic = bytes(self.w3.keccak(text=event.abi_element_identifier))
                decoders[(contract.address, topic)] = event
        params: FilterParams = {
            "address": [c.address for c in (self.registry, self.tracker, self.distributor)],
            "fromBlock": from_block,
        }
        logs = self._retry("eth_getLogs", lambda: self.w3.eth.get_logs(params))  # one request for all events
        rows: list[dict[str, Any]] = []
        for raw in logs:
            event = decoders.get((to_checksum_address(raw["address"]), bytes(raw["topics"][0])))
            if event is None:
                continue
            entry = event.process_log(raw)
            args = {k: ("0x" + v.hex() if isinstance(v, bytes) else v) for k, v in entry["args"].items()}
            if session_id is not None and args.get("sessionId") != session_id:
                continue
            rows.append(
                {
                    "event": entry["event"],
                    "block": entry["blockNumber"],
                    "log_index": entry["logIndex"],
                    "tx_hash": "0x" + bytes(entry["transactionHash"]).hex(),
                    "args": args,
                }
            )
        rows.sort(key=lambda r: (r["block"], r["log_index"]))
        return rows


def _deployment_from(config: ChainConfig) -> Deployment | None:
    addrs = config.deployment
    if addrs is None:
        return None
    return Deployment(token=config.reward_token, **addrs)
