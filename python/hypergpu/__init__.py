"""HyperGPU: network-aware distributed PyTorch training over QUIC."""

from hypergpu import errors
from hypergpu._core import __version__

__all__ = ["__version__", "errors"]
