"""Models, their flat parameter layout, the model manager and checkpoints."""

from hypergpu.model.checkpoint import Checkpoint, CheckpointManager, get_rng_state, set_rng_state
from hypergpu.model.layout import ParamLayout, ParamSpec
from hypergpu.model.manager import EvalResult, ModelManager, Package, params_hash
from hypergpu.model.nets import CNN, MLP, build_model

__all__ = [
    "CNN",
    "MLP",
    "Checkpoint",
    "CheckpointManager",
    "EvalResult",
    "ModelManager",
    "Package",
    "ParamLayout",
    "ParamSpec",
    "build_model",
    "get_rng_state",
    "params_hash",
    "set_rng_state",
]
