"""Merkle trees of (account, amount) reward leaves, laid out exactly as
OpenZeppelin's StandardMerkleTree (so MerkleProof in the contract accepts the
proofs): leaves are keccak(keccak(abi.encode(address, uint256))), sorted,
and pairs are hashed in sorted order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from eth_abi import encode
from eth_utils import keccak, to_checksum_address

from hypergpu.errors import InvalidArgumentError


def leaf_hash(account: str, amount: int) -> bytes:
    # Double hashing keeps a leaf from ever equalling an inner node's preimage.
    return keccak(keccak(encode(["address", "uint256"], [account, amount])))


def _pair_hash(a: bytes, b: bytes) -> bytes:
    return keccak(a + b) if a < b else keccak(b + a)


@dataclass(frozen=True)
class RewardTree:
    """One epoch's rewards as a Merkle tree; ``root`` goes on chain, each node
    claims with ``proof(account)``."""

    amounts: dict[str, int]
    _tree: list[bytes] = field(repr=False)
    _index: dict[str, int] = field(repr=False)

    @classmethod
    def build(cls, amounts: Mapping[str, int]) -> RewardTree:
        if not amounts:
            raise InvalidArgumentError("a reward tree needs at least one (account, amount) leaf")
        normalised: dict[str, int] = {}
        for account, amount in amounts.items():
            try:
                key = to_checksum_address(account)
            except ValueError:
                raise InvalidArgumentError(f"reward recipient is not a valid address: {account!r}") from None
            if key in normalised:
                raise InvalidArgumentError(f"reward recipient appears twice: {key}")
            if not isinstance(amount, int) or amount < 0 or amount >= 2**256:
                raise InvalidArgumentError(f"reward amount for {key} is not a uint256: {amount!r}")
            normalised[key] = amount
        leaves = sorted((leaf_hash(a, v), a) for a, v in normalised.items())
        size = 2 * len(leaves) - 1
        tree: list[bytes] = [b""] * size
        index: dict[str, int] = {}
        for i, (h, account) in enumerate(leaves):
            tree[size - 1 - i] = h
            index[account] = size - 1 - i
        for i in range(size - 1 - len(leaves), -1, -1):
            tree[i] = _pair_hash(tree[2 * i + 1], tree[2 * i + 2])
        return cls(normalised, tree, index)

    @property
    def root(self) -> bytes:
        return self._tree[0]

    @property
    def total(self) -> int:
        return sum(self.amounts.values())

    def __len__(self) -> int:
        return len(self.amounts)

    def proof(self, account: str) -> list[bytes]:
        key = to_checksum_address(account)
        if key not in self._index:
            raise InvalidArgumentError(f"{key} has no leaf in this reward tree")
        i = self._index[key]
        proof = []
        while i > 0:
            proof.append(self._tree[i + 1 if i % 2 else i - 1])
            i = (i - 1) // 2
        return proof

    def verify(self, account: str, amount: int, proof: list[bytes]) -> bool:
        node = leaf_hash(to_checksum_address(account), amount)
        for sibling in proof:
            node = _pair_hash(node, sibling)
        return node == self.root
