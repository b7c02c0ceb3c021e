"""A node for tests/test_crash_user_loop.py: a user's own training loop through
``DistributedOptimizer`` that records, for every update message it sends, the update
it trained and what the message carried, and at the end writes them with its
error-feedback residual and its report.

    python user_loop_crash_node.py JOIN TOKEN NAME OUT   (OUT.npz and OUT.json are written)
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from hypergpu import DistributedOptimizer
from hypergpu.config.schema import TrainingConfig
from hypergpu.model.nets import build_model
from hypergpu.node.update_encoder import UpdateEncoder
from hypergpu.protocol import Message
from hypergpu.update.codec import decode


class RecordingEncoder(UpdateEncoder):
    """An update encoder that keeps (round, trained update, what the message carried)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[tuple[int, np.ndarray, np.ndarray]] = []

    def message(self, update: np.ndarray, assignment: Any, meta: Any, round_id: int) -> Message:
        msg = super().message(update, assignment, meta, round_id)
        payload = msg.sections["update"]
        if msg.codec == "raw" and not msg.zstd:
            carried = np.array(payload, dtype=np.float32)
        else:
            carried = decode(np.asarray(payload).tobytes(), msg.codec, zstd=msg.zstd, numel=update.size)
        self.sent.append((round_id, update.copy(), carried.copy()))
        return msg


def main() -> None:
    join, token, name, out = sys.argv[1:5]
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # the coordinator's model: tests/test_crash_user_loop.py's [training] on 8x8 digits
    model = build_model(TrainingConfig(model="mlp", hidden_sizes=[32], seed=7), (64,), 10)
    opt = DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), model,
                               join=join, token=token, name=name, seed=0)
    encoder = RecordingEncoder()
    opt._encoder = encoder  # what each message carried is what this test checks
    with opt:
        while not opt.finished:
            for x, y in opt.dataloader():
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step(loss=loss)
                if opt.finished:
                    break
    size = opt.layout.total
    residual = encoder.residual if encoder.residual is not None else np.zeros(size, np.float32)
    np.savez(out + ".npz", rounds=np.array([r for r, _, _ in encoder.sent], dtype=np.int64),
             trained=np.stack([t for _, t, _ in encoder.sent]) if encoder.sent else np.zeros((0, size)),
             carried=np.stack([c for _, _, c in encoder.sent]) if encoder.sent else np.zeros((0, size)),
             residual=residual)
    with open(out + ".json", "w") as f:
        json.dump({"node_id": opt.node_id, "links_lost": opt.links_lost, "acks": dict(opt.report.acks),
                   "rounds": opt.report.rounds}, f)


if __name__ == "__main__":
    main()
