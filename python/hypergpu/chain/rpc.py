"""The chain's JSON-RPC link: a Web3 for the configured chain, retries with
backoff for faults of the link (not of the request), address checks, and
funding from a local chain's dev account."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

import requests
from eth_typing import ChecksumAddress
from eth_utils import is_address, to_checksum_address
from web3 import Web3
from web3.exceptions import TimeExhausted
from web3.types import Wei

from hypergpu.config.chain import ChainConfig
from hypergpu.errors import ChainUnavailableError, ConfigError, InvalidArgumentError

log = logging.getLogger("hypergpu.chain.client")

T = TypeVar("T")

#: Faults of the link, not of the request: worth retrying.
RETRYABLE: tuple[type[BaseException], ...] = (OSError, requests.RequestException, TimeExhausted)


def checksum(address: str, what: str = "address") -> ChecksumAddress:
    """``address`` in checksum form, or InvalidArgumentError naming ``what``."""
    if not isinstance(address, str) or not is_address(address):
        raise InvalidArgumentError(f"{what} is not a valid address: {address!r}")
    return to_checksum_address(address)


def make_web3(config: ChainConfig) -> Web3:
    """A Web3 for ``config.kind`` (embedded: an in-process eth-tester chain)."""
    if config.kind == "embedded":
        from web3 import EthereumTesterProvider

        from hypergpu.chain.ledger_db import disk_ledger

        with disk_ledger():  # a long run's ledger on disk, not in this process's memory
            return Web3(EthereumTesterProvider())
    url = config.effective_rpc_url
    if not url:
        raise ConfigError(f"chain kind {config.kind!r} needs rpc_url")
    return Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": config.rpc_timeout_s}))



def retry(config: ChainConfig, what: str, call: Callable[[], T]) -> T:
    """Runs ``call``, retrying link faults with exponential backoff."""
    attempts = config.retries + 1
    for attempt in range(attempts):
        try:
            return call()
        except RETRYABLE as exc:
            if attempt + 1 == attempts:
                raise ChainUnavailableError(f"{what}: chain unreachable after {attempts} tries: {exc}") from exc
            delay = min(config.backoff_s * (2**attempt), config.backoff_max_s)
            log.warning("%s: %s; retrying in %.2fs", what, type(exc).__name__, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


def fund_from_dev_account(w3: Web3, address: str, wei: int) -> None:
    """Funds ``address`` from a local chain's first unlocked dev account."""
    dev = w3.eth.accounts[0]
    tx_hash = w3.eth.send_transaction({"from": dev, "to": address, "value": Wei(wei)})
    w3.eth.wait_for_transaction_receipt(tx_hash)

