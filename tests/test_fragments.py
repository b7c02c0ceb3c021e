"""Streaming DiLoCo: the parameters synced one fragment per round, in turn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from hypergpu.config import load_config
from hypergpu.coordinator import Coordinator
from hypergpu.model import GPT, ModelManager
from hypergpu.model.layout import ParamLayout
from hypergpu.model.outer import NesterovOuter
from hypergpu.node.overlap import Folder
from test_overlap import digits_config

from engine_helpers import run_with_nodes


def gpt_layout() -> ParamLayout:
    cfg = load_config(None, ["training.model=gpt", "data.dataset='stdlib'", "training.gpt.n_layer=3"])
    return ParamLayout.from_model(GPT(cfg.training.gpt, vocab_size=256))


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_fragments_cover_every_parameter_exactly_once_per_cycle(count: int) -> None:
    layout = gpt_layout()
    fragments = layout.fragments(count)
    assert len(fragments) == count
    covered = np.zeros(layout.total, np.int64)
    for round_id in range(1, count + 1):  # one cycle: round r syncs fragment (r-1) mod count
        covered[fragments[(round_id - 1) % len(fragments)]] += 1
    assert (covered == 1).all()
    starts = {s.offset for s in layout.specs} | {layout.total}
    assert all(f.start in starts and f.stop in starts for f in fragments)  # cut at tensor boundaries
    sizes = [f.stop - f.start for f in fragments]
    print(f"{count} fragments of {sizes} values")
    assert max(sizes) < 2.5 * layout.total / count  # no fragment is much of the model on its own


def test_more_fragments_than_tensors_gives_one_per_tensor() -> None:
    layout = ParamLayout.from_model(nn.Linear(4, 2))
    assert layout.fragments(5) == (slice(0, 8), slice(8, 10))


def test_each_fragment_sends_all_progress_made_on_it_and_nothing_is_lost() -> None:
    rng = np.random.default_rng(1)
    n, fragments = 12, (slice(0, 5), slice(5, 9), slice(9, 12))
    folder, theta = Folder(), np.zeros(n, np.float32)
    folder.arrive(theta, 0, 0)
    folder.fold(theta)
    made, sent = np.zeros(n, np.float32), np.zeros(n, np.float32)
    for round_id in range(1, 3 * len(fragments) + 1):
        progress = rng.standard_normal(n).astype(np.float32)
        made += progress
        where = fragments[(round_id - 1) % len(fragments)]
        part = folder.outgoing(round_id, progress, where)
        assert part.shape == (where.stop - where.start,)
        sent[where] += part
    # Each fragment sent last one cycle ago: what it made since is all that is unsent.
    last_cycle = made - sent
    np.testing.assert_allclose(sent + last_cycle, made, rtol=1e-6)
    assert folder.pending_rounds == list(range(1, 10))


def test_the_outer_step_moves_only_the_synced_fragment_and_its_momentum() -> None:
    model = ModelManager(nn.Linear(8, 4))
    where = slice(0, 16)
    outer = NesterovOuter(0.7, 0.9)
    start = model.flat_parameters()
    outer.step(model, np.full(16, 0.1, np.float32), where)
    after = model.flat_parameters()
    assert np.allclose(after[where], start[where] + 0.7 * 1.9 * 0.1)
    np.testing.assert_array_equal(after[16:], start[16:])
    assert outer.velocity is not None and not outer.velocity[16:].any()


@pytest.mark.slow
async def test_a_fragmented_run_trains_and_each_round_uploads_one_fragment(tmp_path: Path) -> None:
    cfg = digits_config(tmp_path, "training.fragments=3", "training.overlap=false", "training.rounds=9")
    coord = Coordinator(cfg)
    summary, nodes = await run_with_nodes(coord, cfg, tmp_path)
    nodes.stop()
    fragments = coord.model.layout.fragments(3)
    assert summary.rounds == 9 and all(r.applied for r in coord.history)
    assert summary.accuracy is not None and summary.accuracy >= 0.85
    for record in coord.history:
        where = fragments[(record.round - 1) % 3]
        for answer in record.answers.values():
            # a raw update of the fragment alone (plus the frame's header and meta)
            assert (where.stop - where.start) * 4 <= answer.update_bytes < (where.stop - where.start) * 4 + 4096
    print(f"fragments {[f.stop - f.start for f in fragments]}, accuracy {summary.accuracy:.3f}")
