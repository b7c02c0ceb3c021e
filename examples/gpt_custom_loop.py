"""Train a small GPT on the Python standard library with your own loop across HyperGPU nodes.

Run it as is: it starts a coordinator in this process (holding a tiny GPT,
evaluating it on held-out stdlib source) and two node processes that run
this same script in ``node`` mode. Each node is an ordinary PyTorch
language-model loop — its own ``GPT``, its own ``AdamW``, its own batches of
random blocks of the byte-level stdlib corpus, its own cross-entropy —
with the optimizer wrapped in ``hypergpu.DistributedOptimizer``, the only
change to the loop. Every round the coordinator averages the nodes'
updates and prints the held-out loss and perplexity::

    python examples/gpt_custom_loop.py            # coordinator + 2 nodes
    python examples/gpt_custom_loop.py --rounds 12 --nodes 3

A node can also join a coordinator started elsewhere::

    python examples/gpt_custom_loop.py node --join 'quic://…' --token …

The corpus is tokenized once into ``--cache-dir`` (default
``./.hypergpu-cache``, a few seconds), which the nodes then reuse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

import hypergpu
from hypergpu.config.schema import DataConfig, GPTConfig, HyperGPUConfig
from hypergpu.data.corpus import TokenWindows, load_corpus
from hypergpu.launch import assemble, train_with_script_nodes
from hypergpu.model import GPT

#: The model's shape: coordinator and nodes must build the same one (the layouts are compared).
SHAPE = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64)
VOCAB = 256  # byte-level tokens
BATCH = 16


# --- a node: the user's own loop, with the optimizer wrapped -----------------


def random_blocks(windows: TokenWindows, batch_size: int, seed: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The user's data loader: endless batches of random blocks (inputs, next-token targets)."""
    rng = np.random.default_rng(seed)
    while True:
        yield windows.batch(rng.integers(len(windows), size=batch_size))


def run_node(join: str, token: str, name: str, lr: float, cache_dir: Path, device: str, seed: int) -> None:
    torch.set_num_threads(1)  # several processes share this machine's cores
    torch.manual_seed(seed)
    model = GPT(SHAPE, VOCAB).to(device)
    opt = hypergpu.DistributedOptimizer(
        torch.optim.AdamW(model.parameters(), lr=lr), model, join=join, token=token, name=name
    )
    # The node's own data: the coordinator hands a wrapped optimizer no samples.
    corpus = load_corpus(DataConfig(dataset="stdlib", cache_dir=cache_dir))
    windows = TokenWindows(corpus.train, SHAPE.block_size)
    print(f"{name}: node {opt.node_id} on {device}, {len(windows)} training blocks of {SHAPE.block_size} "
          f"tokens, {opt.local_steps} steps a round", flush=True)
    with opt:
        for x, y in random_blocks(windows, BATCH, seed):
            if opt.finished:
                break
            logits = model(x.to(device))
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.to(device).view(-1))
            opt.zero_grad()
            loss.backward()
            opt.step(loss=loss)  # every `local_steps` steps: send the update, load the next round
    print(f"{name}: {opt.report.rounds} rounds, {opt.accepted} updates accepted, {opt.refused} refused", flush=True)


# --- the coordinator: holds the GPT, evaluates it, aggregates -----------------


async def run_coordinator(args: argparse.Namespace) -> tuple[float, float]:
    config = HyperGPUConfig.model_validate({
        "training": {"model": "gpt", "gpt": SHAPE.model_dump(), "rounds": args.rounds,
                     "local_steps": args.local_steps, "batch_size": BATCH, "optimizer": "adamw",
                     "lr": args.lr, "seed": 0},
        "data": {"dataset": "stdlib", "cache_dir": str(args.cache_dir)},
        "nodes": {"count": args.nodes},
        "coordinator": {"port": 0, "checkpoint_every": 0, "round_timeout_s": 60.0},
        "rewards": {"enabled": False},
    })
    # Blocking (tokenizes the corpus on first use), so off the event loop.
    coordinator = await asyncio.to_thread(assemble, config)
    summary = await train_with_script_nodes(
        coordinator, __file__,
        [["--name", f"node-{i}", "--lr", str(args.lr), "--cache-dir", str(args.cache_dir),
         "--device", args.device, "--seed", str(i)] for i in range(args.nodes)],
    )
    for record in coordinator.history:
        train = f"{record.train_loss:.3f}" if record.train_loss is not None else "n/a"
        held = f"{record.test_loss:.3f}" if record.test_loss is not None else "n/a"
        ppl = f"{record.test_perplexity:.2f}" if record.test_perplexity is not None else "n/a"
        print(f"round {record.round:2d}: train loss {train}  held-out loss {held}  perplexity {ppl}")
    assert summary.loss is not None and summary.perplexity is not None
    return summary.loss, summary.perplexity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", nargs="?", choices=("all", "node"), default="all")
    parser.add_argument("--join", help="node mode: the coordinator's join string")
    parser.add_argument("--token", default=os.environ.get("HYPERGPU_TOKEN"), help="node mode: the join token")
    parser.add_argument("--name", default=f"node-{os.getpid()}")
    parser.add_argument("--seed", type=int, default=0, help="node mode: seeds the node's batches")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--local-steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--cache-dir", type=Path, default=Path(".hypergpu-cache").resolve(),
                        help="where the tokenized corpus is kept")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where the nodes train (default: cuda when there is one)")
    args = parser.parse_args()
    if args.mode == "node":
        if not args.join or not args.token:
            parser.error("node mode needs --join and --token")
        run_node(args.join, args.token, args.name, args.lr, args.cache_dir, args.device, args.seed)
        return
    started = time.perf_counter()
    loss, perplexity = asyncio.run(run_coordinator(args))
    print(f"final held-out loss: {loss:.4f} (perplexity {perplexity:.2f}, {args.nodes} nodes, "
          f"{time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
