"""Which codec each node's update (and parameter delta) travels in, from its link's speed.

The update of a model with P parameters is 4P bytes raw. The chooser
estimates how long that takes on the node's link and picks the least
lossy codec that brings the upload under the time budget: raw, fp16
(2x smaller), int8 (about 4x) or top-k with error feedback (each kept
coordinate costs an index and a value, so a ratio r sends about 2r of the
raw bytes; the node keeps what it did not send and adds it next round).
Top-k costs far more accuracy per round than int8 (most of each update
waits in the residual), so it is kept for links where even int8 would
take over ``TOPK_AFTER`` times the budget; int8 may overrun the budget
up to there. A change needs the new choice to persist for ``dwell``
rounds, except a move to stronger compression when the link got much worse.

A second chooser picks, the same way, how a node's parameters come down:
whole (raw), or as a delta against what it holds in fp16 or int8
(``hypergpu.update.downlink``; top-k is not offered there, as it would
leave most of a node's coordinates stale).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Size relative to raw float32.
SIZE_FACTOR = {"raw": 1.0, "fp16": 0.5, "int8": 0.25 + 1e-3}
ORDER = ("raw", "fp16", "int8", "topk")
#: Top-k only once int8's upload would take this many times the budget.
TOPK_AFTER = 4.0


@dataclass(frozen=True)
class CodecChoice:
    codec: str
    ratio: float | None = None  # top-k: share of coordinates sent

    @property
    def size_factor(self) -> float:
        return 2.0 * self.ratio if self.codec == "topk" and self.ratio else SIZE_FACTOR[self.codec]


RAW = CodecChoice("raw")


class CodecChooser:
    def __init__(
        self,
        *,
        budget_s: float = 0.5,
        allowed: tuple[str, ...] = ORDER,
        min_ratio: float = 0.01,
        max_ratio: float = 0.25,
        dwell: int = 2,
    ):
        unknown = set(allowed) - set(ORDER)
        if unknown or not allowed:
            raise ValueError(f"codecs must be a non-empty subset of {ORDER}, got {allowed}")
        self.budget_s = budget_s
        self.allowed = tuple(c for c in ORDER if c in allowed)
        self.min_ratio = min_ratio
        self.max_ratio = max_ratio
        self.dwell = dwell
        self.current: dict[int, CodecChoice] = {}
        self._pending: dict[int, tuple[CodecChoice, int]] = {}

    def ideal(self, raw_upload_s: float) -> CodecChoice:
        """The least lossy allowed codec whose upload fits the budget."""
        for codec in self.allowed:
            if codec == "topk":
                ratio = min(self.max_ratio, max(self.min_ratio, self.budget_s / (2.0 * raw_upload_s)))
                return CodecChoice("topk", round(ratio, 4))
            if raw_upload_s * SIZE_FACTOR[codec] <= self.budget_s:
                return CodecChoice(codec)
            if codec == "int8" and raw_upload_s * SIZE_FACTOR[codec] <= TOPK_AFTER * self.budget_s:
                return CodecChoice(codec)  # near the budget: not worth top-k's loss
        return CodecChoice(self.allowed[-1])

    def choose(self, node_id: int, raw_upload_s: float) -> CodecChoice:
        want = self.ideal(raw_upload_s)
        have = self.current.get(node_id)
        if have is None or want == have:
            self._pending.pop(node_id, None)
            self.current[node_id] = want
            return want
        # A link four times worse than the budget allows is not worth waiting out.
        urgent = want.size_factor < have.size_factor and raw_upload_s * have.size_factor > 4 * self.budget_s
        seen = self._pending.get(node_id)
        count = seen[1] + 1 if seen is not None and seen[0].codec == want.codec else 1
        if urgent or count >= self.dwell:
            self._pending.pop(node_id, None)
            self.current[node_id] = want
            return want
        self._pending[node_id] = (want, count)
        return have

    def restore(self, node_id: int, choice: CodecChoice) -> None:
        self.current[node_id] = choice
        self._pending.pop(node_id, None)
