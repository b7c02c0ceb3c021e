"""Which codec each node's update (and parameter delta) travels in, from its link's speed.

The update of a model with P parameters is 4P bytes raw. The chooser
estimates how long that takes on the node's link and picks the least
lossy codec that brings the upload under the time budget: raw, fp16
(2x smaller), int8 (about 4x), int4 (about 8x) or top-k (each kept
coordinate costs an index and a value, so a ratio r sends about 2r of the
raw bytes). Every lossy codec runs with error feedback: the node keeps
what a round's payload lost and adds it to the next round's update.
Top-k costs far more accuracy per round than the blockwise codecs (most
of each update waits in the residual), so it is kept for links where even
the smallest allowed blockwise codec (int4, or int8 without it) would
take over ``TOPK_AFTER`` times the budget; that codec may overrun the
budget up to there. A change needs the new choice to persist for
``dwell`` rounds, except a move to stronger compression when the link
got much worse, and the first choice on a measured link: the one before
it was a guess (in a WAN bench run, a guess held 100 Mbit/s hosts on
int4 for two rounds past their first measure).

A second chooser picks, the same way, how a node's parameters come down:
whole (raw), or as a delta against what it holds in fp16 or int8
(``hypergpu.update.downlink``; top-k is not offered there, as it would
leave most of a node's coordinates stale, nor int4).
"""

from __future__ import annotations

from dataclasses import dataclass

#: Size relative to raw float32; the blockwise codecs add one float32
#: scale per block of 256 (the default block size), 1/256 of raw.
SIZE_FACTOR = {"raw": 1.0, "fp16": 0.5, "int8": 0.25 + 1 / 256, "int4": 0.125 + 1 / 256}
#: Least lossy first.
ORDER = ("raw", "fp16", "int8", "int4", "topk")
#: Codecs that may overrun the budget rather than fall back to top-k.
BLOCKWISE = ("int8", "int4")
#: Top-k only once the smallest blockwise upload would take this many times the budget.
TOPK_AFTER = 4.0


@dataclass(frozen=True)
class CodecChoice:
    codec: str
    ratio: float | None = None  # top-k: share of coordinates sent

    @property
    def size_factor(self) -> float:
        return 2.0 * self.ratio if self.codec == "topk" and self.ratio else SIZE_FACTOR[self.codec]


RAW = CodecChoice("raw")


def fragments_for(upload_s: float, budget_s: float, most: int) -> int:
    """``training.link_fragments``: the fewest fragments, a power of two up to ``most``, whose
    share of an ``upload_s`` upload goes up within ``budget_s``."""
    fragments = 1
    while fragments < most and upload_s / fragments > budget_s:
        fragments *= 2
    return fragments


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
        self._guessed: set[int] = set()  # nodes whose current choice was made on a guess of their link

    def budget_for(self, budget_s: float | None) -> float:
        """The budget a call works to: ``budget_s`` may raise the chooser's own, never lower it."""
        return max(self.budget_s, budget_s or 0.0)

    def ideal(self, raw_upload_s: float, budget_s: float | None = None) -> CodecChoice:
        """The least lossy allowed codec whose upload fits the budget (``budget_s``, see :meth:`budget_for`)."""
        budget = self.budget_for(budget_s)
        dense = [c for c in self.allowed if c != "topk"]
        for codec in dense:
            if raw_upload_s * SIZE_FACTOR[codec] <= budget:
                return CodecChoice(codec)
        if "topk" not in self.allowed:
            return CodecChoice(dense[-1])
        smallest = dense[-1] if dense else "topk"
        if smallest in BLOCKWISE and raw_upload_s * SIZE_FACTOR[smallest] <= TOPK_AFTER * budget:
            return CodecChoice(smallest)  # near the budget: not worth top-k's loss
        ratio = min(self.max_ratio, max(self.min_ratio, budget / (2.0 * raw_upload_s)))
        return CodecChoice("topk", round(ratio, 4))

    def choose(self, node_id: int, raw_upload_s: float, budget_s: float | None = None, *,
               guess: bool = False) -> CodecChoice:
        """The node's codec this round; ``budget_s`` raises the chooser's budget for this node
        (overlap: the time its upload hides under its next compute); ``guess``: ``raw_upload_s``
        is a guess, not yet measured on the link."""
        budget = self.budget_for(budget_s)
        want = self.ideal(raw_upload_s, budget)
        have = self.current.get(node_id)
        settled = node_id in self._guessed and not guess  # the first measure replaces a guess at once
        (self._guessed.add if guess else self._guessed.discard)(node_id)
        if have is None or want == have or settled:
            self._pending.pop(node_id, None)
            self.current[node_id] = want
            return want
        # A link four times worse than the budget allows is not worth waiting out.
        urgent = want.size_factor < have.size_factor and raw_upload_s * have.size_factor > 4 * budget
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
