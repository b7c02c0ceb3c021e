"""A node's settings as the planner chose them, and a change to them under watch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hypergpu.adapt.batch import BatchChoice
from hypergpu.adapt.compression import RAW, CodecChoice


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


def codec_name(c: CodecChoice) -> str:
    return f"topk({c.ratio:g})" if c.codec == "topk" and c.ratio else c.codec


def describe(k: Knobs | None) -> dict[str, Any] | None:
    if k is None:
        return None
    return {"batch": k.effective_batch, "local_steps": k.local_steps, "codec": codec_name(k.codec),
            "down_codec": codec_name(k.down), "fragments": k.fragments}
