"""Fashion-MNIST with ten node processes on the demo's mixed links, adaptive.

The CNN trains on Debian's ``dataset-fashion-mnist`` (loaded by name) with
``examples/fashion_mnist.toml``: 3 good, 4 average, 2 poor and 1 unstable
link, two half-speed nodes, nodes preparing their own shards (checked by
checksum). Each round is evaluated on 2,000 test images (an even stride);
the run stops once that reaches 91 %, a little past the target, and the
trained model is then evaluated on the whole test set (14,000 images),
which must be >= 90 %. Reported: time to 90 % on the per-round evaluation,
rounds, final accuracy on the full test set, bytes per node. Under
``--benchmark-disable`` two nodes train an MLP for two rounds as a smoke test.
"""

from __future__ import annotations

import asyncio
import statistics
from pathlib import Path
from typing import Any

import pytest

from hypergpu.config import load_config
from hypergpu.config.schema import DEBIAN_FASHION_MNIST
from hypergpu.data.run_data import prepare_run_data
from hypergpu.launch import TrialResult, run_trial
from hypergpu.model.manager import ModelManager
from hypergpu.model.nets import build_model

pytestmark = pytest.mark.timeout(1800)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "fashion_mnist.toml"
TARGET = 0.90
SMOKE = ("nodes.count=2", "nodes.speed_factors={}", "network.node_profiles={}", "network.default_profile='good'",
         "training.model='mlp'", "training.rounds=2", "training.local_steps=5", "training.target_accuracy=null")


def test_fashion_mnist_ten_nodes_adaptive_to_ninety_percent(benchmark, tmp_path) -> None:
    if not (DEBIAN_FASHION_MNIST / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(f"Debian's dataset-fashion-mnist is not installed ({DEBIAN_FASHION_MNIST}); `make system-deps`")
    full = not benchmark.disabled
    cfg = load_config(EXAMPLE, [
        f"data.cache_dir='{tmp_path}/cache'", "coordinator.checkpoint_every=0", "rewards.enabled=false",
        # Stops a little past 90 % on the 2,000-image stride, so the whole test set is judged past it too.
        *(("training.target_accuracy=0.91", "training.rounds=90") if full else ()),
        *(() if full else SMOKE),
    ])
    out: dict[str, Any] = {}
    benchmark.pedantic(lambda: out.update(result=asyncio.run(run_trial(cfg))), rounds=1, iterations=1)
    result: TrialResult = out["result"]
    assert result.rounds and result.params is not None
    data = prepare_run_data(cfg)
    model = ModelManager(build_model(cfg.training, data.input_shape, data.num_classes))
    model.set_flat(result.params)
    whole = model.evaluate(data.test)
    up = [n["bytes_received"] for n in result.nodes]
    down = [n["bytes_sent"] for n in result.nodes]
    info: dict[str, Any] = {
        "full_run": full,
        "time_to_90_s": result.time_to(TARGET),
        "rounds": len(result.rounds),
        "wall_s": result.wall_s,
        "test_images": whole.samples,
        "final_test_accuracy": whole.accuracy,
        "per_round_eval_accuracy": result.accuracy,
        "down_mb_mean": statistics.fmean(down) / 1e6,
        "up_mb_mean": statistics.fmean(up) / 1e6,
    }
    benchmark.extra_info.update(info)
    print("\nFashion-MNIST, 10 nodes, mixed links, adaptive:")
    for key, value in info.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    for r in result.rounds:
        acc = f"{r.accuracy:.3f}" if r.accuracy is not None else "-"
        print(f"  round {r.round}: t={r.t_s:.1f}s acc={acc} reported={r.reported}")
    if full:
        assert whole.samples == 14_000 and whole.accuracy >= TARGET
