"""What each kind of settlement operation does on chain: one function per kind,
idempotent because each checks the chain (or the contract refuses a repeat)
before anything is sent."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hypergpu.chain.client import ChainClient
from hypergpu.chain.rpc import checksum
from hypergpu.chain.types import ContributionEntry, TxResult


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
    return c.top_up_pool(p["session_id"], p["total"])


def _apply_rewards(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    return c.post_rewards(p["session_id"], p["epoch"], p["amounts"])


def _apply_root(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    return c.post_reward_root(p["session_id"], p["epoch"], bytes.fromhex(p["root"]), p["total"], p["nodes"])


def _apply_complete(c: ChainClient, p: dict[str, Any]) -> TxResult | None:
    return c.complete_session(p["session_id"])


APPLY: dict[str, Callable[[ChainClient, dict[str, Any]], TxResult | None]] = {
    "create_session": _apply_create_session,
    "register_nodes": _apply_register,
    "record": _apply_record,
    "record_accounts": _apply_record_accounts,
    "fund": _apply_fund,
    "rewards": _apply_rewards,
    "reward_root": _apply_root,
    "complete_session": _apply_complete,
}
