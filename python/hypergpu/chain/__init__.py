"""On-chain contribution tracking and rewards.

``ChainClient`` deploys and talks to the contracts; ``SettlementQueue`` is
the durable, non-blocking way for the coordinator to send writes;
``RewardTree`` builds the per-epoch Merkle root for O(1) settlement;
``chain_up`` starts a local anvil and deploys (``hypergpu chain up``).

Names are imported on first use, so importing the package does not pull in
web3. The chain settings, ``ChainConfig``, are part of the configuration
(:mod:`hypergpu.config.chain`).
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from hypergpu.extras import require

require("chain")

_EXPORTS = {
    "AnvilProcess": "anvil",
    "ChainClient": "client",
    "ContributionEntry": "types",
    "ContributionRecord": "types",
    "Deployment": "types",
    "Mismatch": "reconcile",
    "RewardTree": "merkle",
    "SessionInfo": "types",
    "SettlementQueue": "queue",
    "Signer": "keys",
    "TxResult": "types",
    "chain_up": "up",
    "compare_with_chain": "reconcile",
    "load_signer": "keys",
}

__all__ = sorted(_EXPORTS)

# web3 imports websockets' deprecated legacy client; that is web3's to fix,
# and it must not break programs (or tests) run with warnings as errors.
warnings.filterwarnings("ignore", message="websockets.legacy is deprecated", category=DeprecationWarning)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hypergpu.chain' has no attribute {name!r}")
    return getattr(importlib.import_module(f"hypergpu.chain.{module}"), name)
