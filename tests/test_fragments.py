"""Streaming DiLoCo: the parameters synced one fragment per round, in turn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from torch import nn

from hypergpu.config import load_config
from hypergpu.coordinator import Coordinator
from hypergpu.launch import assemble
from hypergpu.model import GPT, ModelManager
from hypergpu.model.layout import ParamLayout
from hypergpu.model.outer import NesterovOuter
from hypergpu.node.overlap import Folder
from hypergpu.node.update_encoder import UpdateEncoder
from hypergpu.protocol import Assignment, UpdateMeta
from hypergpu.update.codec import decode
from test_overlap import digits_config, run_with_a_slow_uplink

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


@pytest.mark.parametrize("pieces", [4, 8])
def test_a_links_fragments_cover_every_parameter_once_per_cycle_and_end_where_pieces_do(pieces: int) -> None:
    """training.link_fragments: a node sending its update in F fragments (F a power of two up to the
    pieces) covers each parameter once every F rounds, and the coordinator's pieces tile each fragment."""
    layout = gpt_layout()
    cut = layout.fragments(pieces)
    bounds = {p.start for p in cut} | {layout.total}
    for count in (1, 2, 4, pieces):
        covered = np.zeros(layout.total, np.int64)
        for round_id in range(5, 5 + count):  # any `count` rounds in a row
            where = layout.fragment_of(round_id, count, pieces)
            covered[slice(0, layout.total) if where is None else where] += 1
            assert where is None or (where.start in bounds and where.stop in bounds)
        assert (covered == 1).all(), count
    assert layout.fragment_of(3, 3, None) == layout.fragments(3)[2]  # the run's schedule is the same call
    one = ParamLayout.from_model(nn.Linear(4, 2))  # two tensors: no more than two fragments
    assert one.fragment_of(2, 4, 4) == slice(8, 10) and one.fragment_of(3, 4, 4) == slice(0, 8)


def test_error_feedback_loses_nothing_however_a_links_fragments_are_cut() -> None:
    """One residual over the whole vector: the cut may change from round to round (the planner
    picks F per link) and every rounding int4 left behind is still carried, never dropped."""
    rng = np.random.default_rng(3)
    n = 64
    encoder, sent, made = UpdateEncoder(), np.zeros(n, np.float64), np.zeros(n, np.float64)
    cuts = [None, slice(0, 32), slice(32, 64), slice(0, 16), slice(16, 32), slice(32, 48), slice(48, 64), None]
    for round_id, where in enumerate(cuts * 4, start=1):
        progress = rng.standard_normal(n if where is None else where.stop - where.start).astype(np.float32)
        made[slice(None) if where is None else where] += progress
        msg = encoder.message(progress, Assignment(batch_size=1, local_steps=1, codec="int4"),
                              UpdateMeta(samples=1), round_id, where, n)
        payload = decode(msg.sections["update"], "int4", zstd=msg.zstd, shape=progress.shape)
        sent[slice(None) if where is None else where] += payload
    assert encoder.residual is not None and encoder.residual.shape == (n,)
    np.testing.assert_allclose(sent + encoder.residual, made, atol=1e-4)  # sent + still owed = all made
    last = encoder.message(np.zeros(n, np.float32), Assignment(batch_size=1, local_steps=1), UpdateMeta(samples=1), 99)
    np.testing.assert_allclose(sent + last.sections["update"], made, atol=1e-4)  # a raw round flushes it all
    assert encoder.residual is None


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


def test_the_outer_step_moves_only_the_parts_some_node_sent() -> None:
    model = ModelManager(nn.Linear(8, 4))
    outer = NesterovOuter(0.7, 0.9)
    start = model.flat_parameters()
    update = np.full(36, 0.1, np.float32)
    update[8:16] = 0.0  # a piece nobody sent: zero in the round's result
    outer.step(model, update, (slice(0, 8), slice(16, 36)))
    after = model.flat_parameters()
    assert np.allclose(after[:8], start[:8] + 0.7 * 1.9 * 0.1) and np.allclose(after[16:], start[16:] + 0.133)
    np.testing.assert_array_equal(after[8:16], start[8:16])
    assert outer.velocity is not None and not outer.velocity[8:16].any() and outer.velocity[:8].all()


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


@pytest.mark.slow
async def test_a_slow_link_sends_its_update_in_fragments_and_the_run_trains(tmp_path: Path) -> None:
    """Over the real transport: node 0's uplink is shaped to 1 Mbit/s and only raw updates are
    allowed, so once its link is measured the planner cuts its update into fragments (runs of
    whole tensors: this MLP's are uneven); node 1's loopback link sends the whole. Every round
    is applied and the run learns."""
    cfg = digits_config(tmp_path, "adapt.enabled=true", "adapt.strategy='all'", "adapt.codecs=['raw']",
                        "adapt.param_codecs=['raw']", "training.link_fragments=4", "training.rounds=10")
    coord = assemble(cfg)  # with the adaptive planner
    summary, _ = await run_with_a_slow_uplink(coord, 1_000_000)  # ~2.7 s a raw update
    raw = 4 * coord.model.layout.total
    sizes = {r.round: {n: (r.assignments[n].fragments, a.update_bytes) for n, a in r.answers.items()}
             for r in coord.history}
    print(f"\n(fragments, update bytes) per round and node, of {raw} raw: {sizes}; accuracy {summary.accuracy:.3f}")
    assert summary.rounds == 10 and all(r.applied for r in coord.history)
    assert summary.accuracy is not None and summary.accuracy >= 0.85
    layout = coord.model.layout
    cut = {r: per[0] for r, per in sizes.items() if 0 in per and per[0][0] > 1}
    assert cut, "node 0's slow link was never cut into fragments"
    for r, (f, size) in cut.items():  # the turn's run of pieces alone, raw (plus the frame's header and meta)
        where = layout.fragment_of(r, f, 4)
        assert where is not None and 4 * (where.stop - where.start) <= size < 4 * (where.stop - where.start) + 4096
    assert all(f == 1 and size >= raw for per in sizes.values() for n, (f, size) in per.items() if n == 1)
    assert any(d["knob"] == "fragments" and d["node"] == 0 for d in coord.planner.decisions)
