"""Helpers for tests and demos on local chains (embedded or anvil)."""

from __future__ import annotations

import shutil
import socket

from hypergpu.chain.anvil import ANVIL_ENV, contracts_dir
from hypergpu.chain.client import ChainClient
from hypergpu.chain.rpc import fund_from_dev_account
from hypergpu.chain.keys import Signer
from hypergpu.errors import ChainError


def funded_signer(client: ChainClient, wei: int = 10**20) -> Signer:
    """A fresh account with ``wei`` from the local chain's dev account."""
    signer = Signer.create()
    fund_from_dev_account(client.w3, signer.address, wei)
    return signer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def anvil_unavailable_reason() -> str | None:
    """Why anvil cannot run here, or None if it can (installing it with npm ci if needed)."""
    import os

    if os.environ.get(ANVIL_ENV):
        return None
    try:
        directory = contracts_dir()
    except ChainError as exc:
        return str(exc)
    if (directory / "node_modules" / ".bin" / "anvil").exists():
        return None
    if shutil.which("npm") is None:
        return "npm is not installed, so contracts/node_modules (anvil) cannot be installed"
    from hypergpu.chain.anvil import ensure_node_modules

    try:
        ensure_node_modules(directory)
    except ChainError as exc:
        return str(exc)
    return None
