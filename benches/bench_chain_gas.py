"""Gas of settling one epoch: per-node storage vs one Merkle root.

Gas is deterministic, so it is recorded (pytest-benchmark ``extra_info`` and
printed), not timed; the timed part is building the Merkle tree in Python.
Run: .venv/bin/python -m pytest benches/bench_chain_gas.py -s --benchmark-disable
"""

from __future__ import annotations

import json

import pytest
from eth_account import Account

from hypergpu.chain import AnvilProcess, ChainClient, ContributionEntry, RewardTree
from hypergpu.chain.testing import anvil_unavailable_reason, free_port, funded_signer
from hypergpu.config.chain import ChainConfig

ETH = 10**18


@pytest.fixture(scope="module")
def coord():
    """anvil when it can run (hundreds of transactions are quick there), else the
    embedded EVM; gas is the same on both for the same EVM version."""
    if anvil_unavailable_reason() is None:
        port = free_port()
        with AnvilProcess(port):
            client = ChainClient.connect(ChainConfig(kind="anvil", anvil_port=port, key_env="HYPERGPU_BENCH_NO_KEY"))
            client.deploy()
            yield client
        return
    print("\nanvil unavailable, measuring on the embedded EVM:", anvil_unavailable_reason())
    client = ChainClient.connect()
    client.deploy()
    yield client


def epoch_gas(coord: ChainClient, session: int, n: int) -> dict[str, float]:
    coord.create_session(session, session.to_bytes(32, "big"))
    nodes = [coord.with_signer(funded_signer(coord, ETH // 10)) for _ in range(n)]
    ids = coord.register_nodes([c.address for c in nodes])
    coord.fund_pool(session, 10 * ETH)
    record = coord.record_contributions(session, 0, [ContributionEntry(i, 1000, 10, 1, 10_000) for i in ids.values()])
    amounts = {c.address: ETH // (n * 10) + k for k, c in enumerate(nodes)}

    # Per-node storage: one slot per node per epoch, then one claim per node (any number of epochs).
    first = coord.post_rewards(session, 0, amounts)
    again = coord.post_rewards(session, 1, amounts)  # slots already non-zero
    pull_claims = [c.claim().gas_used for c in nodes]

    # Merkle: one root per epoch whatever n, then one claim per node per epoch.
    tree = RewardTree.build(amounts)
    root = coord.post_reward_root(session, 2, tree.root, tree.total, n)
    merkle_claims = [
        c.claim_merkle(session, 2, c.address, amounts[c.address], tree.proof(c.address)).gas_used for c in nodes
    ]
    return {
        "nodes": n,
        "record_batch": record.gas_used,
        "per_node_post_first_epoch": first.gas_used,
        "per_node_post_later_epoch": again.gas_used,
        "per_node_claim_avg": sum(pull_claims) / n,
        "merkle_post_root": root.gas_used,
        "merkle_claim_avg": sum(merkle_claims) / n,
        "per_node_epoch_total": first.gas_used + sum(pull_claims),
        "merkle_epoch_total": root.gas_used + sum(merkle_claims),
    }


@pytest.mark.parametrize("n", [10, 100])
def test_settlement_gas(benchmark, coord: ChainClient, n: int) -> None:
    figures = epoch_gas(coord, 1000 + n, n)
    benchmark.extra_info.update(figures)
    amounts = {Account.create().address: k + 1 for k in range(n)}
    benchmark(RewardTree.build, amounts)
    print(f"\nsettlement gas on {coord.config.kind}:", json.dumps(figures))
    # The coordinator's Merkle cost per epoch does not grow with the number of nodes.
    assert figures["merkle_post_root"] < 150_000
    assert figures["per_node_post_first_epoch"] > figures["merkle_post_root"] * (n // 10)
