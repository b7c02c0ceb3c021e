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
from hypergpu.node.trainer import make_optimizer


def _dev_bytes(dev: str) -> tuple[int, int]:
    """(received, sent) bytes of ``dev`` in this process's network namespace."""
    for line in Path("/proc/net/dev").read_text().splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == dev:
            f = rest.split()
            return int(f[0]), int(f[8])
    return 0, 0


def main(spec_path: str, rank: int) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec.get("threads", 1)))
    world = int(spec["world"])
    dev = os.environ.get("GLOO_SOCKET_IFNAME", "lo")
    cfg = load_config(None, spec["overrides"])
    data = prepare_run_data(cfg)  # the bench prepared and cached it: this only loads
    assert isinstance(data, CorpusRunData)
    model = build_model(cfg.training, data.input_shape, data.num_classes)  # seeded: the same on every rank
    task = LanguageModel(data.bytes_per_token)
    block = data.block_size
    blocks = [(s, i) for s, info in enumerate(data.manager.shards) for i in range(len(info))]
    shards = [TokenWindows(np.asarray(data.corpus.tokens[i.start:i.stop]), block) for i in data.manager.shards]
    order = np.random.default_rng(cfg.training.seed).permutation(len(blocks))
    per_rank = cfg.training.batch_size
    global_batch = per_rank * world

    dist.init_process_group("gloo", init_method=f"tcp://{spec['master']}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=float(spec["budget_s"]) * 3 + 600))
    # Every rank built the same seeded model: no initial broadcast of the parameters over the slow links.
    ddp = DistributedDataParallel(model, init_sync=False)
    optimizer = make_optimizer(cfg.training, ddp.parameters())
    rx0, tx0 = _dev_bytes(dev)
    dist.barrier()
    elapsed, eval_s = 0.0, 0.0
    step_s: list[float] = []
    evals: list[dict[str, float]] = []

    def evaluate(step: int) -> None:
        nonlocal eval_s
        t0 = time.perf_counter()
        result = task.evaluate(model, data.test, indices=data.eval_indices)
        model.train()
        eval_s += time.perf_counter() - t0
        evals.append({"step": step, "tokens": step * global_batch * block, "t_s": elapsed, "loss": result.loss})

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
        rows = order[(step * global_batch) % len(order):][:global_batch][rank * per_rank:(rank + 1) * per_rank]
        xs, ys = zip(*(shards[blocks[r][0]].batch(np.array([blocks[r][1]])) for r in rows))
        loss = task.loss(ddp(torch.cat(xs)), torch.cat(ys))
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
    main(sys.argv[1], int(sys.argv[2]))
