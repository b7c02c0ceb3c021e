"""The committed artifacts match the sources, and Python's Merkle trees match
OpenZeppelin's own JavaScript implementation."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from eth_account import Account

from hypergpu.chain import RewardTree
from hypergpu.chain.anvil import contracts_dir, ensure_node_modules
from hypergpu.chain.merkle import leaf_hash
from hypergpu.errors import ChainError, InvalidArgumentError


@pytest.fixture(scope="module")
def contracts():
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js/npm not installed: cannot recompile the contracts to check the artifacts")
    try:
        return ensure_node_modules(contracts_dir())
    except ChainError as exc:
        pytest.skip(f"contracts/node_modules unavailable: {exc}")


def test_artifacts_are_up_to_date(contracts) -> None:
    done = subprocess.run(["node", "compile.js", "--check"], cwd=contracts, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"artifacts are stale, run `node contracts/compile.js`:\n{done.stderr}"
    assert "up to date" in done.stdout


@pytest.mark.parametrize("n", [1, 2, 3, 7, 16])
def test_tree_matches_openzeppelin_merkle_tree(contracts, n: int) -> None:
    amounts = {Account.create().address: 10**15 * (k + 1) + k for k in range(n)}
    values = [[a, str(v)] for a, v in amounts.items()]
    script = (
        "const {StandardMerkleTree} = require('@openzeppelin/merkle-tree');"
        "const values = JSON.parse(require('fs').readFileSync(0, 'utf8'));"
        "const t = StandardMerkleTree.of(values, ['address', 'uint256']);"
        "const proofs = {}; for (const [i, v] of t.entries()) proofs[v[0]] = t.getProof(i);"
        "console.log(JSON.stringify({root: t.root, proofs}));"
    )
    done = subprocess.run(
        ["node", "-e", script], cwd=contracts, input=json.dumps(values), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    reference = json.loads(done.stdout)
    tree = RewardTree.build(amounts)
    assert "0x" + tree.root.hex() == reference["root"]
    for account, amount in amounts.items():
        proof = tree.proof(account)
        assert ["0x" + p.hex() for p in proof] == reference["proofs"][account]
        assert tree.verify(account, amount, proof)
        assert not tree.verify(account, amount + 1, proof)


def test_tree_rejects_bad_input() -> None:
    with pytest.raises(InvalidArgumentError, match="at least one"):
        RewardTree.build({})
    with pytest.raises(InvalidArgumentError, match="not a valid address"):
        RewardTree.build({"0xnothex": 1})
    with pytest.raises(InvalidArgumentError, match="uint256"):
        RewardTree.build({Account.create().address: -1})
    a = Account.create().address
    with pytest.raises(InvalidArgumentError, match="twice"):
        RewardTree.build({a: 1, a.lower(): 2})
    tree = RewardTree.build({a: 5})
    assert tree.root == leaf_hash(a, 5) and tree.proof(a) == []
    with pytest.raises(InvalidArgumentError, match="no leaf"):
        tree.proof(Account.create().address)
