"""What a late fold costs with overlap (issue 14): DiLoCo in one process, the fold delay as the knob.

With ``training.overlap`` a node goes on with its next work from its own
parameters as soon as it sent its update, and folds the round's global
parameters in when they arrive (``node/overlap.py``, ``Folder``). Until then
its steps run from older parameters: the delay is its upload, the round's
wait past its quorum and the download. The adaptive planner holds a node's
transfers to a tenth of its work (``adapt/orchestrator.py``, ``FRESH_SHARE``)
and a round's wait past its quorum to a tenth of the quorum's time
(``coordinator.quorum_grace``) on this bench's figures.

Each arm trains the issue-14 WAN bench's GPT (``bench_diloco_wan.FULL``: the
same config, corpus, AdamW and batch) on ``nodes`` simulated nodes in this one
process, one after the other, for ``rounds`` rounds of ``H`` local steps,
each node drawing batches from its own shard. Every node keeps its inner
optimizer across rounds; its update goes through the run's codec with its
own error-feedback residual (``update/codec.py``) and the round's mean
through the run's outer optimizer (Nesterov, lr 0.7, momentum 0.9) on a
``ModelManager``. The arms differ only in when a node folds the round's
parameters in, through its own ``Folder``: at once (``delay`` 0: synchronous
DiLoCo, every round's work from the new parameters), or ``delay`` steps into
its next work (overlap). No network: the arms see the same batches, so the
held-out loss after each round differs only by the fold and the codec.

Reported per arm: the held-out loss after each round, and its gap to the
synchronous fp16 arm (the plain recipe) after each round. Nothing is
asserted on the figures. Measured with ``FULL`` (10 nodes, H 20, 4 rounds;
26 minutes, beside another job; in fp32, before the WAN config trained in bf16): held-out loss after rounds 1-4 synchronous
fp16 3.1215, 3.0043, 2.9698, 2.9298; the fold 10 steps in 3.1215, 3.0772,
2.9826, 2.9397 (+0.073 after round 2: over half a round of progress); 4 steps
in 3.1215, 3.0166, 2.9653, 2.9309 (+0.012, then even); synchronous int4
3.1207, 3.0134, 2.9764, 2.9288 (+0.009 after round 2, -0.001 after round 4).
Under ``--benchmark-disable`` a tiny GPT
runs two rounds on three nodes as a smoke test.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_diloco_wan import FULL as WAN_FULL  # noqa: E402
from bench_diloco_wan import overrides  # noqa: E402

from hypergpu.config import load_config  # noqa: E402
from hypergpu.config.schema import HyperGPUConfig  # noqa: E402
from hypergpu.data.run_data import CorpusRunData, prepare_run_data  # noqa: E402
from hypergpu.data.token_shards import TokenWindows  # noqa: E402
from hypergpu.model.manager import ModelManager  # noqa: E402
from hypergpu.model.nets import build_model  # noqa: E402
from hypergpu.model.outer import outer_optimizer_for  # noqa: E402
from hypergpu.model.task import LanguageModel  # noqa: E402
from hypergpu.node.overlap import Folder  # noqa: E402
from hypergpu.node.trainer import forward, make_optimizer  # noqa: E402
from hypergpu.update.codec import encode  # noqa: E402

pytestmark = pytest.mark.timeout(3600)

FULL = dict(gpt=WAN_FULL, nodes=10, H=20, rounds=4)
SMOKE = dict(gpt=dict(WAN_FULL, layers=1, embd=32, heads=2, block=32, eval_samples=16), nodes=3, H=3, rounds=2)
#: (name, codec, fold delay in steps; 0 is synchronous)
ARMS = (("sync fp16", "fp16", 0), ("sync int4", "int4", 0), ("fold 4 steps in", "raw", 4),
        ("fold 10 steps in", "raw", 10))


class SimNode:
    """One node: its model, inner optimizer, batches, residual and fold state."""

    def __init__(self, cfg: HyperGPUConfig, data: CorpusRunData, task: LanguageModel, index: int,
                 start: np.ndarray):
        self.model = build_model(cfg.training, data.input_shape, data.num_classes)
        self.manager = ModelManager(self.model)
        self.optimizer = make_optimizer(cfg.training, self.model.parameters())
        info = data.manager.shards[index % len(data.manager.shards)]
        self.windows = TokenWindows(np.asarray(data.corpus.tokens[info.start:info.stop]), data.block_size)
        self.rng = np.random.default_rng(1000 + index)  # the same batches in every arm
        self.batch, self.task, self.training = cfg.training.batch_size, task, cfg.training
        self.folder = Folder()
        self.folder.arrive(start, 0, 0)
        self.local = self.folder.fold(start)
        self.residual = np.zeros_like(start)

    def steps(self, k: int) -> np.ndarray:
        """``k`` inner steps from ``self.local``; returns their displacement."""
        before = self.local
        self.manager.layout.load_into(self.model, before)
        for _ in range(k):
            x, y = self.windows.batch(self.rng.integers(0, len(self.windows), size=self.batch))
            self.task.loss(forward(self.model, x, self.training), y).backward()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        self.local = self.manager.layout.flatten(self.model)
        return self.local - before

    def send(self, round_id: int, progress: np.ndarray, codec: str) -> np.ndarray:
        """What the coordinator gets for the round's progress (the Folder keeps it as pending)."""
        part = self.folder.outgoing(round_id, progress)
        if codec == "raw":  # exact: an arm keeps one codec, so there is no residual to flush
            return part
        return encode(part, codec, residual=self.residual).decode().reshape(-1)


def run_arm(cfg: HyperGPUConfig, data: CorpusRunData, size: dict[str, Any], codec: str, delay: int) -> list[float]:
    """Held-out loss before and after each round of one arm (every model built seeded: the same start)."""
    task = LanguageModel(data.bytes_per_token)
    glob = ModelManager(build_model(cfg.training, data.input_shape, data.num_classes))
    outer = outer_optimizer_for(cfg)
    nodes = [SimNode(cfg, data, task, i, glob.flat_parameters().copy()) for i in range(size["nodes"])]

    def held_out() -> float:
        return float(task.evaluate(glob.model, data.test, indices=data.eval_indices).loss)

    losses, H = [held_out()], size["H"]
    for r in range(1, size["rounds"] + 1):
        closed = glob.flat_parameters().copy()  # round r-1's parameters, with its outer step
        sent = []
        for node in nodes:
            pre = min(delay, H) if r > 1 else 0
            moved = node.steps(pre)  # from its own parameters, the fold not in yet
            node.folder.arrive(closed, glob.version, r - 1)
            node.local = node.folder.fold(node.local)
            moved = moved + node.steps(H - pre)
            sent.append(node.send(r, moved, codec))
        outer.step(glob, np.mean(sent, axis=0))
        losses.append(held_out())
    return losses


def measure(size: dict[str, Any], tmp: Path) -> dict[str, Any]:
    torch.set_num_threads(1)
    cfg = load_config(None, overrides(size["gpt"], tmp, "127.0.0.1"))
    torch.set_flush_denormal(cfg.training.flush_denormal)
    data = prepare_run_data(cfg)
    assert isinstance(data, CorpusRunData)
    curves = {name: run_arm(cfg, data, size, codec, delay) for name, codec, delay in ARMS}
    base = curves[ARMS[0][0]]
    info: dict[str, Any] = {"nodes": size["nodes"], "H": size["H"], "rounds": size["rounds"]}
    for name, curve in curves.items():
        info[f"loss {name}"] = [round(v, 4) for v in curve]
        info[f"gap {name}"] = [round(a - b, 4) for a, b in zip(curve[1:], base[1:])]
        print(f"{name:>18}: " + " ".join(f"{v:.4f}" for v in curve)
              + "   gap " + " ".join(f"{g:+.4f}" for g in info[f"gap {name}"]))
    return info


def test_fold_delay_on_the_wan_gpt(benchmark, tmp_path) -> None:
    size = SMOKE if benchmark.disabled else FULL
    out: dict[str, Any] = {}
    benchmark.pedantic(lambda: out.update(measure(size, tmp_path)), rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    curves = [c for k, c in out.items() if k.startswith("loss")]
    assert len(curves) == len(ARMS) and all(len(c) == size["rounds"] + 1 for c in curves)
    # every arm starts from the same model and trains it
    assert len({c[0] for c in curves}) == 1 and all(c[-1] < c[0] for c in curves)
