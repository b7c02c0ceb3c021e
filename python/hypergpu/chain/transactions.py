"""Signed writes and retried reads as one account: explicit gas limits, a
locally tracked nonce, sends that are skipped when they already took effect,
and every write sent at most once (the base of
:class:`~hypergpu.chain.client.ChainClient`).

Exactly once: a write's signed bytes and nonce go into a
:class:`~hypergpu.chain.journal.TxJournal` before they are broadcast. A
receipt timeout, a dropped link or a restart leads back to that stored
transaction: it is looked for on chain, rebroadcast as it is, or after
``replace_after`` timeouts re-signed at the *same* nonce with higher fees, so
only one of its signings can ever be mined. A new nonce is used only once the
stored one is decided: mined, reverted, or taken by another transaction.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

from eth_typing import ChecksumAddress, HexStr
from web3 import Web3
from web3.exceptions import TimeExhausted, TransactionNotFound, Web3RPCError
from web3.types import TxParams, TxReceipt

from hypergpu.config.chain import ChainConfig
from hypergpu.chain.contracts import decode_revert
from hypergpu.chain.journal import MemoryJournal, SentTx, TxJournal
from hypergpu.chain.keys import Signer
from hypergpu.chain.rpc import RETRYABLE, retry
from hypergpu.chain.types import TxResult
from hypergpu.errors import ContractRevertError

log = logging.getLogger("hypergpu.chain.client")

T = TypeVar("T")

# What nodes answer when the bytes are already in their pool or already mined:
# a rebroadcast that meets these has done its job.
_ALREADY_SEEN = ("already known", "known transaction", "already imported", "already exists", "nonce too low",
                 "underpriced")
_FEE_FIELDS = ("maxFeePerGas", "maxPriorityFeePerGas", "gasPrice")


class Transactor:
    """Sends transactions and calls as ``signer`` on ``w3``."""

    def __init__(self, w3: Web3, signer: Signer, config: ChainConfig):
        self.w3 = w3
        self.config = config
        self._signer = signer
        self._nonce: int | None = None
        self._journals = threading.local()
        self.transactions: list[TxResult] = []

    @property
    def address(self) -> ChecksumAddress:
        return self._signer.address

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        return retry(self.config, what, call)

    @contextmanager
    def journaled(self, journal: TxJournal) -> Iterator[TxJournal]:
        """Writes made in this thread inside the block keep their transactions in ``journal``
        (a durable one lets a restarted process resume them); otherwise each call keeps its own."""
        self._journals.current = journal
        try:
            yield journal
        finally:
            self._journals.current = None

    def resume_open(self, journal: TxJournal) -> TxResult | None:
        """Decides ``journal``'s undecided transactions (waiting, rebroadcasting, replacing);
        returns the last one mined, if any. Raises ContractRevertError if one reverted on chain,
        ChainUnavailableError if one is still undecided after the retries."""
        return self._retry("pending transaction", lambda: self._settle_open(journal))

    def _estimate(self, action: str, fn: Any, value: int) -> int:
        try:
            estimate = fn.estimate_gas({"from": self.address, "value": value})
        except RETRYABLE:
            raise
        except Exception as exc:  # web3 / eth-tester report reverts with assorted types
            raise decode_revert(exc, action) from None
        return int(estimate * (1 + self.config.gas_margin)) + self.config.gas_extra

    def _transact(
        self, action: str, fn: Any, *, value: int = 0, applied: Callable[[], bool] | None = None
    ) -> TxResult | None:
        """Sends ``fn`` unless ``applied()`` says it already took effect (then None)."""
        journal: TxJournal = getattr(self._journals, "current", None) or MemoryJournal()

        def attempt() -> TxResult | None:
            try:
                # A transaction an earlier try sent decides first: while it may still be
                # mined, signing the call again at a new nonce could apply it twice.
                landed = self._settle_open(journal)
                if landed is not None and landed.action == action:
                    return landed
                if applied is not None and applied():
                    log.info("%s: already on chain, not sent again", action)
                    return None
                return self._send_new(action, fn, value, journal)
            except RETRYABLE:
                self._nonce = None  # the next new transaction asks the node for its nonce
                raise

        return self._retry(action, attempt)

    def _send_new(self, action: str, fn: Any, value: int, journal: TxJournal) -> TxResult:
        gas = self._estimate(action, fn, value)
        if self._nonce is None:
            self._nonce = self.w3.eth.get_transaction_count(self.address, "pending")
        fields = dict(fn.build_transaction(
            {"from": self.address, "value": value, "gas": gas, "nonce": self._nonce, "chainId": self.w3.eth.chain_id}
        ))
        raw = self._signer.sign_transaction(fields)
        sent = SentTx(action, self._nonce, gas, fields, raw, [_hash_of(raw)])
        journal.save(sent)  # stored before the bytes leave: from here on a retry resumes this transaction
        try:
            self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            # The node refused the bytes, so they are in no pool: this signing is over.
            journal.settle(sent, "rejected")
            self._nonce = None
            if "nonce" in str(exc).lower():
                raise ConnectionError(f"nonce out of sync: {exc}") from exc
            raise decode_revert(exc, action) from None
        self._nonce = sent.nonce + 1
        return self._conclude(sent, self._await_receipt(sent, journal), journal)

    def _settle_open(self, journal: TxJournal) -> TxResult | None:
        landed = None
        for sent in journal.open():
            landed = self._settle_one(sent, journal) or landed
        return landed

    def _settle_one(self, sent: SentTx, journal: TxJournal) -> TxResult | None:
        # The nonce is read before the receipts: if it is used by then and none of our
        # hashes has a receipt after, another transaction took it and ours can never be mined.
        used = self.w3.eth.get_transaction_count(self.address, "latest")
        receipt = self._find_receipt(sent)
        if receipt is None and used > sent.nonce:
            journal.settle(sent, "dropped")
            log.warning("%s: nonce %d went to another transaction; the call is checked and signed anew",
                        sent.action, sent.nonce)
            return None
        if receipt is None:
            self._resend(sent, journal)
            receipt = self._await_receipt(sent, journal)
        return self._conclude(sent, receipt, journal)

    def _resend(self, sent: SentTx, journal: TxJournal) -> None:
        """Rebroadcasts ``sent``'s bytes, or re-signs them at the same nonce with higher fees once
        ``replace_after`` timeouts have passed since the last signing."""
        cfg = self.config
        if (cfg.replace_after and sent.replacements < cfg.max_replacements
                and sent.timeouts >= cfg.replace_after * (sent.replacements + 1)):
            sent.fields = {k: (int(v * (1 + cfg.fee_bump)) + 1 if k in _FEE_FIELDS else v)
                           for k, v in sent.fields.items()}
            sent.raw = self._signer.sign_transaction(sent.fields)
            sent.hashes.append(_hash_of(sent.raw))
            sent.replacements += 1
            log.warning("%s: replaced at nonce %d with fees +%.1f%% (tx %s)",
                        sent.action, sent.nonce, 100 * cfg.fee_bump, sent.hashes[-1])
        else:
            sent.rebroadcasts += 1
            log.info("%s: rebroadcasting tx %s (nonce %d)", sent.action, sent.hashes[-1], sent.nonce)
        journal.save(sent)  # a replacement's hash is stored before it can be mined
        try:
            self.w3.eth.send_raw_transaction(sent.raw)
        except Web3RPCError as exc:
            if not any(s in str(exc).lower() for s in _ALREADY_SEEN):
                # The transaction may still sit in some pool: it is never given up on here.
                raise ConnectionError(f"{sent.action}: rebroadcast refused: {exc}") from exc

    def _find_receipt(self, sent: SentTx) -> TxReceipt | None:
        for tx_hash in sent.hashes:
            try:
                return self.w3.eth.get_transaction_receipt(HexStr(tx_hash))
            except TransactionNotFound:
                continue
        return None

    def _await_receipt(self, sent: SentTx, journal: TxJournal) -> TxReceipt:
        deadline = time.monotonic() + self.config.receipt_timeout_s
        while True:
            receipt = self._find_receipt(sent)
            if receipt is not None:
                return receipt
            if time.monotonic() >= deadline:
                sent.timeouts += 1
                journal.save(sent)
                raise TimeExhausted(f"{sent.action}: tx {sent.hashes[-1]} (nonce {sent.nonce}) not mined "
                                    f"within {self.config.receipt_timeout_s}s")
            time.sleep(self.config.receipt_poll_s)

    def _conclude(self, sent: SentTx, receipt: TxReceipt, journal: TxJournal) -> TxResult:
        result = TxResult(sent.action, "0x" + bytes(receipt["transactionHash"]).hex(), receipt["blockNumber"],
                          receipt["gasUsed"], sent.gas)
        if receipt["status"] != 1:
            journal.settle(sent, "reverted")
            raise self._mined_revert(sent, result)
        journal.settle(sent, "mined")
        self.transactions.append(result)
        log.info("%s: tx %s gas %d/%d", sent.action, result.tx_hash, result.gas_used, sent.gas)
        return result

    def _mined_revert(self, sent: SentTx, result: TxResult) -> ContractRevertError:
        """The revert of a mined transaction, named by replaying its call on the state of its block."""
        call = {k: sent.fields[k] for k in ("to", "data", "value", "gas") if k in sent.fields}
        where = f"{sent.action} (tx {result.tx_hash}, block {result.block})"
        try:
            self.w3.eth.call(cast(TxParams, {**call, "from": self.address}), result.block)
        except RETRYABLE:
            raise
        except Exception as exc:  # as in _estimate: a revert, whatever type reports it
            return decode_revert(exc, where)
        return ContractRevertError(f"{where} reverted on chain")

    def _call(self, what: str, fn: Any) -> Any:
        def call() -> Any:
            try:
                return fn.call({"from": self.address})
            except RETRYABLE:
                raise
            except Exception as exc:  # as in _estimate: a revert, whatever type reports it
                raise decode_revert(exc, what) from None

        return self._retry(what, call)


def _hash_of(raw: bytes) -> str:
    """A signed transaction's hash: the keccak of its bytes (typed envelopes included)."""
    return "0x" + bytes(Web3.keccak(raw)).hex()
