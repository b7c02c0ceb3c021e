"""A local, append-only history of scored epochs and reward splits (checked
against what the chain recorded by :func:`hypergpu.chain.reconcile.compare_with_chain`).

The file holds every epoch; memory holds only the latest ``window`` epochs and
running totals over all of them, so a session of any length costs the same
memory. An epoch older than the window is read back from the file when asked
for (a resumed run replaying it), never on the way of a running session.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hypergpu.rewards.scoring import EpochScores, NodeScore

#: Epochs a book keeps in memory unless told otherwise (``rewards.history_epochs``).
DEFAULT_WINDOW = 256


class ScoreBook:
    """Epoch scores and reward amounts of one session, in a JSON-lines file.

    ``epochs`` and ``rewards`` hold the latest ``window`` epochs; :meth:`totals`,
    :meth:`reward_totals`, :meth:`score_totals`, :attr:`allocated` and
    :attr:`epochs_scored` count every epoch of the session.
    """

    def __init__(self, path: Path | str, session_id: int, *, window: int = DEFAULT_WINDOW):
        self.path = Path(path)
        self.session_id = session_id
        self.window = max(1, window)
        self.epochs: dict[int, EpochScores] = {}
        self.rewards: dict[int, dict[str, int]] = {}
        self.epochs_scored = 0
        #: wei allocated over every epoch with rewards
        self.allocated = 0
        self._totals: dict[str, dict[str, int]] = {}
        self._scores: dict[str, float] = {}
        self._reward_totals: dict[str, int] = {}
        # The highest epoch with scores / rewards: anything above was never written,
        # so the common question (is the epoch closing now already scored?) needs no file read.
        self._last_scored = -1
        self._last_rewarded = -1
        if self.path.exists():
            for kind, epoch, value in self._rows():
                if kind == "scores":
                    self._keep_epoch(value)  # type: ignore[arg-type]
                else:
                    self._keep_rewards(epoch, value)  # type: ignore[arg-type]

    # --- the file -------------------------------------------------------------------

    def _rows(self) -> Iterator[tuple[str, int, EpochScores | dict[str, int]]]:
        """This session's rows, oldest first, as ("scores", epoch, EpochScores) or ("rewards", epoch, amounts)."""
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                if row["session"] != self.session_id:
                    continue
                if row["type"] == "scores":
                    nodes = {n: NodeScore(**{**s, "reasons": tuple(s["reasons"])}) for n, s in row["nodes"].items()}
                    yield "scores", row["epoch"], EpochScores(row["epoch"], nodes)
                elif row["type"] == "rewards":
                    yield "rewards", row["epoch"], {n: int(a) for n, a in row["amounts"].items()}

    def _find(self, kind: str, epoch: int) -> Any:
        """An epoch that left the window, read back from the file (None if it is not there)."""
        if not self.path.exists():
            return None
        return next((value for k, e, value in self._rows() if k == kind and e == epoch), None)

    def _append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()

    # --- memory: the window and the totals --------------------------------------------

    def _keep_epoch(self, scores: EpochScores) -> None:
        if scores.epoch in self.epochs:
            return  # a row written twice (by an older version) counts once
        self.epochs[scores.epoch] = scores
        self.epochs_scored += 1
        self._last_scored = max(self._last_scored, scores.epoch)
        for node, s in scores.nodes.items():
            t = self._totals.setdefault(node, {"compute_credit": 0, "updates_accepted": 0, "successful_rounds": 0})
            t["compute_credit"] += s.compute_credit
            t["updates_accepted"] += s.samples_accepted
            t["successful_rounds"] += s.rounds_succeeded
            self._scores[node] = self._scores.get(node, 0.0) + s.score
        _trim(self.epochs, self.window)

    def _keep_rewards(self, epoch: int, amounts: Mapping[str, int]) -> None:
        if epoch in self.rewards:
            return
        self.rewards[epoch] = dict(amounts)
        self._last_rewarded = max(self._last_rewarded, epoch)
        for node, a in amounts.items():
            self._reward_totals[node] = self._reward_totals.get(node, 0) + a
            self.allocated += a
        _trim(self.rewards, self.window)

    # --- reading ----------------------------------------------------------------------

    def scores_of(self, epoch: int) -> EpochScores | None:
        """The epoch's scores (its first), or None if it was never scored."""
        found = self.epochs.get(epoch)
        if found is None and epoch <= self._last_scored:
            found = self._find("scores", epoch)
        return found

    def rewards_of(self, epoch: int) -> dict[str, int] | None:
        """The epoch's reward split (its first), or None if none was written."""
        found = self.rewards.get(epoch)
        if found is None and epoch <= self._last_rewarded:
            found = self._find("rewards", epoch)
        return found

    def totals(self) -> dict[str, dict[str, int]]:
        """Per node, the session totals in the contract's units."""
        return {node: dict(t) for node, t in self._totals.items()}

    def reward_totals(self) -> dict[str, int]:
        return dict(self._reward_totals)

    def score_totals(self) -> dict[str, float]:
        """Per node, the summed score over every epoch of the session."""
        return dict(self._scores)

    # --- writing ----------------------------------------------------------------------

    def add_epoch(self, scores: EpochScores) -> None:
        if self.scores_of(scores.epoch) is not None:
            return  # an epoch is scored once; a replay after a crash changes nothing
        self._keep_epoch(scores)
        nodes = {n: asdict(s) for n, s in scores.nodes.items()}
        self._append({"type": "scores", "session": self.session_id, "epoch": scores.epoch, "nodes": nodes})

    def add_rewards(self, epoch: int, amounts: Mapping[str, int]) -> None:
        if self.rewards_of(epoch) is not None:
            return
        self._keep_rewards(epoch, amounts)
        row = {"type": "rewards", "session": self.session_id, "epoch": epoch, "amounts": {n: str(a) for n, a in amounts.items()}}
        self._append(row)


def _trim(held: dict[int, Any], window: int) -> None:
    """Drops the epochs kept longest beyond ``window`` (epochs are written in order, so they are the oldest)."""
    while len(held) > window:
        del held[next(iter(held))]
