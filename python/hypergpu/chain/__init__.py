"""On-chain contribution tracking and rewards.

``ChainClient`` deploys and talks to the contracts; ``SettlementQueue`` is
the durable, non-blocking way for the coordinator to send writes;
``RewardTree`` builds the per-epoch Merkle root for O(1) settlement;
``chain_up`` starts a local anvil and deploys (``hypergpu chain up``).
"""

import warnings

with warnings.catch_warnings():
    # web3 imports websockets' deprecated legacy client; that is web3's to fix,
    # and it must not break programs (or tests) that run with warnings as errors.
    warnings.filterwarnings("ignore", message="websockets.legacy is deprecated", category=DeprecationWarning)
    import web3  # noqa: F401

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
