"""Checks the local score book against what the chain recorded."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hypergpu.chain.client import ChainClient
from hypergpu.rewards import ScoreBook


@dataclass(frozen=True)
class Mismatch:
    node: str
    field: str
    local: int
    chain: int


def compare_with_chain(book: ScoreBook, client: ChainClient, node_ids: Mapping[str, int]) -> list[Mismatch]:
    """Differences between the book's session totals and the chain's records (empty when they agree);
    ``node_ids`` maps node names to their on-chain ids."""
    mismatches = []
    for node, local in book.totals().items():
        record = client.get_contribution(book.session_id, node_ids[node])
        for name, value in local.items():
            on_chain = getattr(record, name)
            if on_chain != value:
                mismatches.append(Mismatch(node, name, value, on_chain))
    return mismatches
