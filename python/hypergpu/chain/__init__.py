"""On-chain contribution tracking and rewards.

``ChainClient`` deploys and talks to the contracts; ``SettlementQueue`` is
the durable, non-blocking way for the coordinator to send writes;
``RewardTree`` builds the per-epoch Merkle root for O(1) settlement;
``chain_up`` starts a local anvil and deploys (``hypergpu chain up``).
"""

from hypergpu.chain.anvil import AnvilProcess
from hypergpu.chain.client import ChainClient
from hypergpu.chain.config import ChainConfig
from hypergpu.chain.keys import Signer, load_signer
from hypergpu.chain.merkle import RewardTree
from hypergpu.chain.queue import SettlementQueue
from hypergpu.chain.types import ContributionEntry, ContributionRecord, Deployment, SessionInfo, TxResult
from hypergpu.chain.up import chain_up

__all__ = [
    "AnvilProcess",
    "ChainClient",
    "ChainConfig",
    "ContributionEntry",
    "ContributionRecord",
    "Deployment",
    "RewardTree",
    "SessionInfo",
    "SettlementQueue",
    "Signer",
    "TxResult",
    "chain_up",
    "load_signer",
]
