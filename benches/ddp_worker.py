"""One rank of synchronous data parallel (torch DDP over gloo), the baseline of bench_diloco_wan.

Run by the bench as ``ip netns exec <host> python benches/ddp_worker.py SPEC RANK``
with ``GLOO_SOCKET_IFNAME`` set to the host's interface. ``SPEC`` (JSON) holds
the HyperGPU config overrides (the same GPT, optimizer, data and held-out
blocks as the HyperGPU arms), the world size, the store's address (rank 0's
host), the time budget, the fewest and most steps, how often rank 0
evaluates, and where each rank writes its figures (``out_dir/rank-<r>.json``).

Every step trains the global batch (``training.batch_size`` blocks per rank,
world x that in all) drawn from one seeded permutation of the training blocks,
rank r taking its slice; DDP averages the gradients (its buckets all-reduce
during the backward pass) and each rank takes the same AdamW step. Rank 0
decides before each step whether another one starts: always below
``min_steps``; else only while ``elapsed + the last step's time`` stays within
the budget, and never beyond ``max_steps`` (the token budget). The decision is
broadcast, so every rank stops at the same step. Rank 0's evaluations are off
the clock (the other ranks wait for it, and that wait is not counted):
``elapsed`` is training time only, which favours this arm.

``python benches/ddp_worker.py SPEC replay`` takes the same steps in one
process with no network: the whole global batch (every rank's slice) per
step, the mean loss, the same AdamW step: the gradient DDP all-reduces is
the mean of the ranks' gradients, so the parameters follow the same path
(up to float rounding). It stops at ``max_steps`` or once the held-out loss
(evaluated every ``eval_every`` steps) reaches ``target``: how many steps
DDP needs to reach a loss, learned without paying its links for each step.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from hypergpu.config import load_config
from hypergpu.data.run_data import CorpusRunData, prepare_run_data
from hypergpu.data.token_shards import TokenWindows
from hypergpu.model.nets import build_model
from hypergpu.model.task import LanguageModel
from hypergpu.node.trainer import forward, make_optimizer


def _dev_bytes(dev: str) -> tuple[int, int]:
    """(received, sent) bytes of ``dev`` in this process's network namespace."""
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == dev:
            f = rest.split()
            return int(f[0]), int(f[8])
    return 0, 0


class Steps:
    """The model, data and batches every rank (and the replay) share: step ``k``'s rows."""

    def __init__(self, spec: dict) -> None:
        cfg = load_config(None, spec["overrides"])
        self.data = data = prepare_run_data(cfg)  # the bench prepared and cached it: this only loads
        assert isinstance(data, CorpusRunData)
        self.cfg = cfg
        torch.set_flush_denormal(cfg.training.flush_denormal)  # as the HyperGPU nodes train
        self.model = build_model(cfg.training, data.input_shape, data.num_classes)  # seeded: the same everywhere
        self.task = LanguageModel(data.bytes_per_token)
        self.block = data.block_size
        self.blocks = [(s, i) for s, info in enumerate(data.manager.shards) for i in range(len(info))]
        self.shards = [TokenWindows(np.asarray(data.corpus.tokens[i.start:i.stop]), self.block)
                       for i in data.manager.shards]
        self.order = np.random.default_rng(cfg.training.seed).permutation(len(self.blocks))
        self.per_rank = cfg.training.batch_size
        self.global_batch = self.per_rank * int(spec["world"])

    def batch(self, step: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``lo:hi`` of step ``step``'s global batch (inputs, targets)."""
        rows = self.order[(step * self.global_batch) % len(self.order):][:self.global_batch][lo:hi]
        xs, ys = zip(*(self.shards[self.blocks[r][0]].batch(np.array([self.blocks[r][1]])) for r in rows))
        return torch.cat(xs), torch.cat(ys)

    def evaluate(self) -> float:
        result = self.task.evaluate(self.model, self.data.test, indices=self.data.eval_indices)
        self.model.train()
        return float(result.loss)


def replay(spec_path: str) -> None:
    """The DDP arm's steps in this one process (see the module doc)."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec.get("threads", 1)))
    st = Steps(spec)
    optimizer = make_optimizer(st.cfg.training, st.model.parameters())
    target, every = float(spec["target"]), int(spec["eval_every"])
    evals = [{"step": 0, "loss": st.evaluate()}]
    t0 = time.perf_counter()
    step = 0
    while step < int(spec["max_steps"]) and evals[-1]["loss"] > target:
        x, y = st.batch(step, 0, st.global_batch)
        st.task.loss(forward(st.model, x, st.cfg.training), y).backward()  # in the nodes' precision
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % every == 0 or step == int(spec["max_steps"]):
            evals.append({"step": step, "loss": st.evaluate()})
    reached = next((e["step"] for e in evals if e["loss"] <= target), None)
    out = {"steps": step, "steps_to_target": reached, "evals": evals, "target": target,
           "seconds": time.perf_counter() - t0}
    Path(spec["out_dir"], "replay.json").write_text(json.dumps(out))


def main(spec_path: str, rank: int) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec.get("threads", 1)))
    world = int(spec["world"])
    dev = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    st = Steps(spec)
    model, task, block = st.model, st.task, st.block
    per_rank, global_batch = st.per_rank, st.global_batch

    dist.init_process_group("gloo", init_method=f"tcp://{spec['master']}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=float(spec["budget_s"]) * 3 + 600))
    # Every rank built the same seeded model: no initial broadcast of the parameters over the slow links.
    ddp = DistributedDataParallel(model, init_sync=False)
    optimizer = make_optimizer(st.cfg.training, ddp.parameters())
    rx0, tx0 = _dev_bytes(dev)
    dist.barrier()
    elapsed, eval_s = 0.0, 0.0
    step_s: list[float] = []
    evals: list[dict[str, float]] = []

    def evaluate(step: int) -> None:
        nonlocal eval_s
        t0 = time.perf_counter()
        loss = st.evaluate()
        eval_s += time.perf_counter() - t0
        evals.append({"step": step, "tokens": step * global_batch * block, "t_s": elapsed, "loss": loss})

    if rank == 0:
        evaluate(0)  # the untrained model: where every arm's curve starts
    step = 0
    go = torch.zeros(1, dtype=torch.int64)
    train_losses: list[float] = []
    while True:
        if rank == 0:
            last = step_s[-1] if step_s else 0.0
            more = step < int(spec["max_steps"]) and (
                step < int(spec["min_steps"]) or elapsed + last <= float(spec["budget_s"]))
            go.fill_(1 if more else 0)
        dist.broadcast(go, 0)
        if not int(go.item()):
            break
        t0 = time.perf_counter()
        x, y = st.batch(step, rank * per_rank, (rank + 1) * per_rank)
        loss = task.loss(forward(ddp, x, st.cfg.training), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_s.append(time.perf_counter() - t0)
        elapsed += step_s[-1]
        train_losses.append(float(loss.item()))
        step += 1
        if rank == 0 and step % int(spec["eval_every"]) == 0:
            evaluate(step)
    if rank == 0 and (not evals or evals[-1]["step"] != step):
        evaluate(step)
    rx1, tx1 = _dev_bytes(dev)
    out = {
        "rank": rank, "steps": step, "step_s": step_s, "train_s": elapsed, "eval_s": eval_s,
        "tokens": step * global_batch * block, "global_batch": global_batch,
        "bytes_received": rx1 - rx0, "bytes_sent": tx1 - tx0, "train_losses": train_losses,
        "evals": evals, "params": int(sum(p.numel() for p in model.parameters())),
    }
    Path(spec["out_dir"], f"rank-{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2] == "replay":
        replay(sys.argv[1])
    else:
        main(sys.argv[1], int(sys.argv[2]))
