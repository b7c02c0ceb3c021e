"""A node's settings as the planner chose them, and a change to them under watch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypergpu.adapt.batch import BatchChoice
from hypergpu.adapt.compression import RAW, CodecChoice
from hypergpu.adapt.policy import Policy

#: A node's training loss moves this much from round to round by itself (its batches differ).
LOSS_NOISE = 0.02


@dataclass
class Knobs:
    """One node's settings, as the planner last chose them."""

    batch: BatchChoice
    local_steps: int
    codec: CodecChoice  # the node's update, up
    down: CodecChoice = RAW  # parameter deltas, down
    fragments: int = 1  # training.link_fragments: the update goes up in this many fragments, in turn

    @property
    def effective_batch(self) -> int:
        return self.batch.effective


@dataclass
class Trial:
    """A change under watch: the settings before it and the loss they gave."""

    round: int
    before: Knobs
    loss: float | None
    what: list[str] = field(default_factory=list)
    # Stronger compression or more work per exchange should raise throughput;
    # fewer local steps trade throughput for fresher models and are judged on loss only.
    expect_faster: bool = False
    # The change asked more of the node's round (see :func:`heavier`): if the node then hurt
    # the round, the planner did, and the change is undone rather than the node struck.
    heavier: bool = False


def heavier(before: Knobs, after: Knobs) -> bool:
    """Whether ``after`` asks more of a node's link each round than ``before``: more bytes up
    (a looser codec, fewer fragments) or down. (More work is how the planner amortises a slow
    link: the node's round is meant to grow with it.)"""
    return (after.codec.size_factor / after.fragments > before.codec.size_factor / before.fragments
            or after.down.size_factor > before.down.size_factor)


def rollback_reason(trial: Trial, policy: Policy, *, answered: bool, rate: float | None, loss: float | None,
                    would: float | None, own: str | None) -> str | None:
    """Why ``trial``'s change is undone once its round is in (None: it stays). ``own``: how the
    node hurt the round under settings the change made heavier; ``rate``: the samples per second
    it gave, ``would``: what the old settings would give on the link as measured before it."""
    if own is not None:
        return f"{own} under the new settings"
    if not answered:
        return None
    if trial.expect_faster and rate is not None and would and rate < (1 - policy.rollback_tolerance) * would:
        return f"throughput {rate:.0f} samples/s, below the {would:.0f} the previous settings would give now"
    if loss is not None and trial.loss is not None and loss > (1 + policy.loss_tolerance) * trial.loss + LOSS_NOISE:
        return f"loss rose {trial.loss:.3f} -> {loss:.3f}"
    return None


def codec_name(c: CodecChoice) -> str:
    return f"topk({c.ratio:g})" if c.codec == "topk" and c.ratio else c.codec


def describe(k: Knobs | None) -> dict[str, Any] | None:
    if k is None:
        return None
    return {"batch": k.effective_batch, "local_steps": k.local_steps, "codec": codec_name(k.codec),
            "down_codec": codec_name(k.down), "fragments": k.fragments}
