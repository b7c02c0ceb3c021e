"""Train your own PyTorch model with your own loop across HyperGPU nodes.

Run it as is: it starts a coordinator in this process (holding ``MyNet``)
and two node processes that run this same script in ``node`` mode. Each
node trains ``MyNet`` with an ordinary PyTorch loop on the data shard the
coordinator assigned it; wrapping the optimizer in
``hypergpu.DistributedOptimizer`` is the only change to the loop. At the
end the coordinator prints the test accuracy of the global model::

    python examples/custom_model.py            # coordinator + 2 nodes
    python examples/custom_model.py --rounds 12 --nodes 3

A node can also join a coordinator started elsewhere::

    python examples/custom_model.py node --join 'quic://…' --token …
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import torch
from torch import nn
from torch.nn import functional as F

import hypergpu
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.launch import assemble, train_with_script_nodes


class MyNet(nn.Module):
    """A user-defined model: a small residual MLP for 8x8 digit images."""

    def __init__(self, pixels: int = 64, width: int = 96, classes: int = 10):
        super().__init__()
        self.embed = nn.Linear(pixels, width)
        self.block = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
        self.head = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.gelu(self.embed(x.flatten(1)))
        h = h + self.block(h)
        return self.head(h)


# --- a node: the user's own loop, with the optimizer wrapped -----------------


def run_node(join: str, token: str, name: str, lr: float) -> None:
    torch.set_num_threads(1)  # several processes share this machine's cores
    torch.manual_seed(0)
    model = MyNet()
    opt = hypergpu.DistributedOptimizer(
        torch.optim.Adam(model.parameters(), lr=lr), model, join=join, token=token, name=name
    )
    print(f"{name}: node {opt.node_id}, {len(opt.shard)} samples, {opt.local_steps} steps a round", flush=True)
    with opt:
        while not opt.finished:
            for x, y in opt.dataloader():  # the coordinator-assigned shard, at the assigned batch size
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step(loss=loss)  # every `local_steps` steps: send the update, load the next round
                if opt.finished:
                    break
    print(f"{name}: {opt.report.rounds} rounds, {opt.accepted} updates accepted, {opt.refused} refused", flush=True)


# --- the coordinator: holds MyNet, shards the data, aggregates ---------------


async def run_coordinator(nodes: int, rounds: int, local_steps: int, lr: float) -> float:
    config = HyperGPUConfig.model_validate({
        "training": {"rounds": rounds, "local_steps": local_steps, "batch_size": 32, "seed": 0},
        "data": {"dataset": "digits", "cache_dir": None},
        "nodes": {"count": nodes},
        "coordinator": {"port": 0, "checkpoint_every": 0, "round_timeout_s": 30.0},
    })
    torch.manual_seed(0)
    coordinator = assemble(config, model=MyNet())  # the planner and outer optimizer the config asks for
    summary = await train_with_script_nodes(
        coordinator, __file__,
        [["--name", f"node-{i}", "--lr", str(lr)] for i in range(nodes)],
    )
    for record in coordinator.history:
        loss = f"{record.train_loss:.3f}" if record.train_loss is not None else "n/a"
        accuracy = f"{record.test_accuracy:.3f}" if record.test_accuracy is not None else "n/a"
        print(f"round {record.round:2d}: train loss {loss}  test accuracy {accuracy}")
    assert summary.accuracy is not None
    return summary.accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("all", "node"), default="all")
    parser.add_argument("--join", help="node mode: the coordinator's join string")
    parser.add_argument("--token", default=os.environ.get("HYPERGPU_TOKEN"), help="node mode: the join token")
    parser.add_argument("--name", default=f"node-{os.getpid()}")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=2e-3)
    args = parser.parse_args()
    if args.mode == "node":
        if not args.join or not args.token:
            parser.error("node mode needs --join and --token")
        run_node(args.join, args.token, args.name, args.lr)
        return
    started = time.perf_counter()
    accuracy = asyncio.run(run_coordinator(args.nodes, args.rounds, args.local_steps, args.lr))
    print(f"final test accuracy: {accuracy:.4f} ({args.nodes} nodes, {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
