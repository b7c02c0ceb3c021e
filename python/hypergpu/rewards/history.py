"""A local, append-only history of scored epochs and reward splits (checked
against what the chain recorded by :func:`hypergpu.chain.reconcile.compare_with_chain`)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hypergpu.rewards.scoring import EpochScores, NodeScore

class ScoreBook:
    """Epoch scores and reward amounts of one session, in a JSON-lines file."""

    def __init__(self, path: Path | str, session_id: int):
        self.path = Path(path)
        self.session_id = session_id
        self.epochs: dict[int, EpochScores] = {}
        self.rewards: dict[int, dict[str, int]] = {}
        if self.path.exists():
            self._load()

    def _load(self) -> None:
        with self.path.open(encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                row = json.loads(line)
                if row["session"] != self.session_id:
                    continue
                if row["type"] == "scores":
                    nodes = {n: NodeScore(**{**s, "reasons": tuple(s["reasons"])}) for n, s in row["nodes"].items()}
                    self.epochs[row["epoch"]] = EpochScores(row["epoch"], nodes)
                elif row["type"] == "rewards":
                    self.rewards[row["epoch"]] = {n: int(a) for n, a in row["amounts"].items()}

    def _append(self, row: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()

    def add_epoch(self, scores: EpochScores) -> None:
        if scores.epoch in self.epochs:
            return  # an epoch is scored once; a replay after a crash changes nothing
        self.epochs[scores.epoch] = scores
        nodes = {n: asdict(s) for n, s in scores.nodes.items()}
        self._append({"type": "scores", "session": self.session_id, "epoch": scores.epoch, "nodes": nodes})

    def add_rewards(self, epoch: int, amounts: Mapping[str, int]) -> None:
        if epoch in self.rewards:
            return
        self.rewards[epoch] = dict(amounts)
        row = {"type": "rewards", "session": self.session_id, "epoch": epoch, "amounts": {n: str(a) for n, a in amounts.items()}}
        self._append(row)

    def totals(self) -> dict[str, dict[str, int]]:
        """Per node, the session totals in the contract's units."""
        out: dict[str, dict[str, int]] = {}
        for epoch in sorted(self.epochs):
            for node, s in self.epochs[epoch].nodes.items():
                t = out.setdefault(node, {"compute_credit": 0, "updates_accepted": 0, "successful_rounds": 0})
                t["compute_credit"] += s.compute_credit
                t["updates_accepted"] += s.samples_accepted
                t["successful_rounds"] += s.rounds_succeeded
        return out

    def reward_totals(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for amounts in self.rewards.values():
            for node, a in amounts.items():
                out[node] = out.get(node, 0) + a
        return out
