"""A node's own checkpoint: its local model and its inner optimizer's state.

DiLoCo's inner optimizer (e.g. Adam's moments) carries over from round to
round; a node that restarts should not lose it and begin again from zero
moments. With a state directory (``hypergpu node --state-dir``, or
``nodes.state_dir`` for local runs) the node writes one checkpoint after
every round it trains, under a folder named after the node, in the same
verified, atomically replaced safetensors format as the coordinator's
(:mod:`hypergpu.model.checkpoint`); on start it restores the newest one.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hypergpu.model.checkpoint import CheckpointManager
from hypergpu.model.manager import ModelManager
from hypergpu.node.trainer import LocalTrainer

log = logging.getLogger("hypergpu.node")


class NodeState:
    """The checkpoints of one node (by name) in ``directory``; the last two are kept."""

    def __init__(self, directory: str | Path, name: str):
        folder = re.sub(r"[^\w.-]", "_", name) or "node"
        self.checkpoints = CheckpointManager(Path(directory) / folder, keep=2, every=1)

    def save(self, trainer: LocalTrainer, round_id: int) -> Path:
        """Checkpoint the trainer's model and inner optimizer after ``round_id``."""
        return self.checkpoints.save(ModelManager(trainer.model), round_id, optimizer=trainer.inner_optimizer())

    def restore(self, trainer: LocalTrainer) -> int | None:
        """Put the newest checkpoint back into ``trainer``; the round it was written after, or None."""
        found = self.checkpoints.latest(check_config=False)
        if found is None:
            return None
        found.restore(ModelManager(trainer.model), trainer.inner_optimizer(), restore_rng=False)
        log.info("restored the inner optimizer from %s (after round %d)", found.path, found.round)
        return found.round
