"""Signed writes and retried reads as one account: explicit gas limits, a
locally tracked nonce, and sends that are skipped when they already took
effect (the base of :class:`~hypergpu.chain.client.ChainClient`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from eth_typing import ChecksumAddress
from web3 import Web3
from web3.exceptions import Web3RPCError

from hypergpu.config.chain import ChainConfig
from hypergpu.chain.contracts import decode_revert
from hypergpu.chain.keys import Signer
from hypergpu.chain.rpc import RETRYABLE, retry
from hypergpu.chain.types import TxResult
from hypergpu.errors import ContractRevertError

log = logging.getLogger("hypergpu.chain.client")

T = TypeVar("T")


class Transactor:
    """Sends transactions and calls as ``signer`` on ``w3``."""

    def __init__(self, w3: Web3, signer: Signer, config: ChainConfig):
        self.w3 = w3
        self.config = config
        self._signer = signer
        self._nonce: int | None = None
        self.transactions: list[TxResult] = []

    @property
    def address(self) -> ChecksumAddress:
        return self._signer.address

    def _retry(self, what: str, call: Callable[[], T]) -> T:
        return retry(self.config, what, call)

    def _estimate(self, action: str, fn: Any, value: int) -> int:
        try:
            estimate = fn.estimate_gas({"from": self.address, "value": value})
        except RETRYABLE:
            raise
        except Exception as exc:  # web3 / eth-tester report reverts with assorted types
            raise decode_revert(exc, action) from None
        return int(estimate * (1 + self.config.gas_margin)) + self.config.gas_extra

    def _send_once(self, action: str, fn: Any, value: int) -> TxResult:
        gas = self._estimate(action, fn, value)
        if self._nonce is None:
            self._nonce = self.w3.eth.get_transaction_count(self.address, "pending")
        tx = fn.build_transaction(
            {"from": self.address, "value": value, "gas": gas, "nonce": self._nonce, "chainId": self.w3.eth.chain_id}
        )
        raw = self._signer.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            # A nonce the node no longer agrees with: resynchronise and try again.
            self._nonce = None
            if "nonce" in str(exc).lower():
                raise ConnectionError(f"nonce out of sync: {exc}") from exc
            raise decode_revert(exc, action) from None
        self._nonce += 1
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=self.config.receipt_timeout_s)
        result = TxResult(action, "0x" + bytes(tx_hash).hex(), receipt["blockNumber"], receipt["gasUsed"], gas)
        if receipt["status"] != 1:
            raise ContractRevertError(f"{action} reverted on chain in block {result.block} (tx {result.tx_hash})")
        self.transactions.append(result)
        log.info("%s: tx %s gas %d/%d", action, result.tx_hash, result.gas_used, gas)
        return result

    def _transact(
        self, action: str, fn: Any, *, value: int = 0, applied: Callable[[], bool] | None = None
    ) -> TxResult | None:
        """Sends ``fn`` unless ``applied()`` says it already took effect (then None)."""

        def attempt() -> TxResult | None:
            if applied is not None and applied():
                log.info("%s: already on chain, not sent again", action)
                return None
            try:
                return self._send_once(action, fn, value)
            except RETRYABLE:
                self._nonce = None  # whatever happened to the last send, ask the node
                raise

        return self._retry(action, attempt)

    def _call(self, what: str, fn: Any) -> Any:
        def call() -> Any:
            try:
                return fn.call({"from": self.address})
            except RETRYABLE:
                raise
            except Exception as exc:  # as in _estimate: a revert, whatever type reports it
                raise decode_revert(exc, what) from None

        return self._retry(what, call)

