"""One rank of synchronous data parallel (torch DDP over gloo), the baseline of bench_diloco_wan.

Run by the bench as ``ip netns exec <host> python benches/ddp_worker.py SPEC RANK``
with ``GLOO_SOCKET_IFNAME`` set to the host's interface. ``SPEC`` (JSON) holds
the HyperGPU config overrides (the same GPT, optimizer, data and held-out
blocks as the HyperGPU arms), the world size, the store's address (rank 0's
host), the fewest and most steps, how often rank 0 evaluates, where rank 0
writes its figures (``out_dir/rank-0.json``, after every step and at the
end) and the file the bench writes the time budget to once it knows it
(``budget_file``: seconds of DDP's clock).

Every step trains the global batch (``training.batch_size`` blocks per rank,
world x that in all) drawn from one seeded permutation of the training blocks,
rank r taking its slice; DDP averages the gradients (its buckets all-reduce
during the backward pass) and each rank takes the same AdamW step. DDP's clock
runs from the first barrier, less rank 0's evaluations (the other ranks wait
for them, and that wait is not counted, which favours this arm). Rank 0 starts
another step always below ``min_steps``, else while the clock is short of the
budget (none yet: no limit), and never beyond ``max_steps`` (the token budget).
The decision is broadcast, so every rank stops at the same step. Once the
clock passes the budget within a step (and ``min_steps`` are done), rank 0
writes its figures with ``train_s`` the clock then and exits: the step in
flight would have ended later, so DDP's time to any loss its last evaluated
step did not reach is more than ``train_s``. The bench then stops the other
ranks.

``python benches/ddp_worker.py SPEC replay`` takes the same steps in one
process with no network: the whole global batch (every rank's slice) per
step, the mean loss, the same AdamW step: the gradient DDP all-reduces is
the mean of the ranks' gradients, so the parameters follow the same path
(up to float rounding). It takes ``cover_steps`` steps and goes on while the
held-out loss (evaluated every ``eval_every`` steps) is above ``target``, up
to ``max_steps``: DDP's loss at the tokens another arm trained, and how many
steps DDP needs to reach a loss, learned without paying its links for each.
"""

from __future__ import annotations

import datetime
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

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


class Clock:
    """DDP's training clock: seconds since it started, less the evaluations (paused during them)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.off = 0.0
        self.paused: float | None = None

    def now(self) -> float:
        at = self.paused if self.paused is not None else time.perf_counter()
        return at - self.started - self.off

    def pause(self) -> None:
        self.paused = time.perf_counter()

    def resume(self) -> None:
        assert self.paused is not None
        self.off += time.perf_counter() - self.paused
        self.paused = None


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
    cover, limit = int(spec["cover_steps"]), int(spec["max_steps"])
    while step < cover or (step < limit and evals[-1]["loss"] > target):
        x, y = st.batch(step, 0, st.global_batch)
        st.task.loss(forward(st.model, x, st.cfg.training), y).backward()  # in the nodes' precision
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % every == 0:
            evals.append({"step": step, "loss": st.evaluate()})
    reached = next((e["step"] for e in evals if e["loss"] <= target), None)
    out = {"steps": step, "steps_to_target": reached, "evals": evals, "target": target,
           "seconds": time.perf_counter() - t0}
    Path(spec["out_dir"], "replay.json").write_text(json.dumps(out))


def _budget(spec: dict) -> float | None:
    """The time budget the bench wrote (None: not yet)."""
    try:
        return float(Path(spec["budget_file"]).read_text())
    except (FileNotFoundError, ValueError):
        return None


def main(spec_path: str, rank: int) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(int(spec.get("threads", 1)))
    world, min_steps, max_steps = int(spec["world"]), int(spec["min_steps"]), int(spec["max_steps"])
    st = Steps(spec)
    model, task, block = st.model, st.task, st.block
    per_rank, global_batch = st.per_rank, st.global_batch

    dist.init_process_group("gloo", init_method=f"tcp://{spec['master']}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=float(spec["timeout_s"])))
    # Every rank built the same seeded model: no initial broadcast of the parameters over the slow links.
    ddp = DistributedDataParallel(model, init_sync=False)
    optimizer = make_optimizer(st.cfg.training, ddp.parameters())
    dist.barrier()
    clock = Clock()
    out: dict[str, Any] = {
        "steps": 0, "step_s": [], "train_losses": [], "evals": [], "global_batch": global_batch,
        "params": int(sum(p.numel() for p in model.parameters())), "stopped_by_budget": False,
    }
    lock = threading.Lock()

    def write(**final: object) -> None:
        """Rank 0's figures so far (the bench reads them mid-run too), replaced whole."""
        with lock:
            out.update(train_s=clock.now(), tokens=out["steps"] * global_batch * block,
                       cpu_s=time.process_time(), **final)
            tmp = Path(spec["out_dir"], "rank-0.json.tmp")
            tmp.write_text(json.dumps(out))
            tmp.replace(Path(spec["out_dir"], "rank-0.json"))

    def evaluate() -> None:
        clock.pause()
        out["evals"].append({"step": out["steps"], "tokens": out["steps"] * global_batch * block,
                             "t_s": clock.now(), "loss": st.evaluate()})
        clock.resume()

    def watch() -> None:
        """Stops the run once the clock passes the budget within a step (see the module doc)."""
        while True:
            time.sleep(0.2)
            budget = _budget(spec)
            if budget is not None and out["steps"] >= min_steps and clock.now() >= budget and clock.paused is None:
                write(stopped_by_budget=True)
                os._exit(0)

    if rank == 0:
        evaluate()  # the untrained model: where every arm's curve starts
        write()
        threading.Thread(target=watch, daemon=True).start()
    go = torch.zeros(1, dtype=torch.int64)
    step = 0
    while True:
        if rank == 0:
            budget = _budget(spec)
            go.fill_(int(step < max_steps and (step < min_steps or budget is None or clock.now() < budget)))
        dist.broadcast(go, 0)
        if not int(go.item()):
            break
        t0 = time.perf_counter()
        x, y = st.batch(step, rank * per_rank, (rank + 1) * per_rank)
        loss = task.loss(forward(ddp, x, st.cfg.training), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if rank == 0:
            with lock:
                out["step_s"].append(time.perf_counter() - t0)
                out["train_losses"].append(float(loss.item()))
                out["steps"] = step
            if step % int(spec["eval_every"]) == 0:  # the last step is evaluated after the loop
                evaluate()
            write()
    if rank == 0:
        if out["evals"][-1]["step"] != step:
            evaluate()
        write()
    dist.destroy_process_group()


if __name__ == "__main__":
    if sys.argv[2] == "replay":
        replay(sys.argv[1])
    else:
        main(sys.argv[1], int(sys.argv[2]))
