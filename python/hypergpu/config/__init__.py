"""Configuration: one validated model loaded from TOML with dotted overrides.

>>> from hypergpu.config import load_config
>>> cfg = load_config("examples/quick.toml", ["training.lr=0.01"])
"""

from hypergpu.config.api import ApiConfig
from hypergpu.config.loader import config_schema, load_config, validate_config
from hypergpu.config.network import CustomProfile, NetworkConfig, NetworkEvent
from hypergpu.config.nodes import NodesConfig
from hypergpu.config.schema import (
    CoordinatorConfig,
    DataConfig,
    HyperGPUConfig,
    TrainingConfig,
    data_hash,
)

__all__ = [
    "ApiConfig",
    "CoordinatorConfig",
    "CustomProfile",
    "DataConfig",
    "HyperGPUConfig",
    "NetworkConfig",
    "NetworkEvent",
    "NodesConfig",
    "TrainingConfig",
    "config_schema",
    "data_hash",
    "load_config",
    "validate_config",
]
