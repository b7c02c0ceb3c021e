"""Models, their flat parameter layout, the model manager and checkpoints."""

from hypergpu.model.checkpoint import Checkpoint, CheckpointManager, get_rng_state, set_rng_state
from hypergpu.model.gpt import GPT, gpt_param_count
from hypergpu.model.layout import ParamLayout, ParamSpec
from hypergpu.model.manager import ModelManager, Package, params_hash
from hypergpu.model.nets import CNN, MLP, ResNet, build_model
from hypergpu.model.task import Evaluation, Task, task_for

__all__ = [
    "CNN",
    "GPT",
    "MLP",
    "Checkpoint",
    "CheckpointManager",
    "Evaluation",
    "Task",
    "task_for",
    "ModelManager",
    "Package",
    "ParamLayout",
    "ParamSpec",
    "ResNet",
    "build_model",
    "get_rng_state",
    "gpt_param_count",
    "params_hash",
    "set_rng_state",
]
