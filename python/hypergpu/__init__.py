"""HyperGPU: network-aware distributed PyTorch training over QUIC."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypergpu import errors
from hypergpu._core import __version__

if TYPE_CHECKING:
    from hypergpu.node.optimizer import DistributedOptimizer

__all__ = ["DistributedOptimizer", "__version__", "errors"]


def __getattr__(name: str) -> Any:
    # Imported on first use: it pulls in torch, which `import hypergpu` alone should not.
    if name == "DistributedOptimizer":
        from hypergpu.node.optimizer import DistributedOptimizer

        return DistributedOptimizer
    raise AttributeError(f"module 'hypergpu' has no attribute {name!r}")
