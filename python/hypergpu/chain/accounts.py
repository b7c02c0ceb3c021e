"""Where each node of a settlement session is paid, epoch by epoch.

A node is paid at the payout address its signed hello names (its key's own
address unless it signs another: :mod:`hypergpu.identity`); the coordinator
never holds a node's key. The recorder writes each (name, account) pair the
first epoch it applies to, in a JSON-lines file beside the session's queue,
so a resumed run rebuilds every epoch's rewards with the accounts they were
paid to, even for nodes that have not come back. A node that signs a new
payout address is paid there from the epoch it did so.
"""

from __future__ import annotations

import bisect
import json
from pathlib import Path

from hypergpu.chain.rpc import checksum


class AccountBook:
    """name -> [(first epoch, account)], kept in ``path`` (appended, never rewritten)."""

    def __init__(self, path: Path):
        self.path = path
        self._by_name: dict[str, list[tuple[int, str]]] = {}
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    row = json.loads(line)
                    self._keep(str(row["name"]), int(row["epoch"]), checksum(row["account"], "payout account"))

    def _keep(self, name: str, epoch: int, account: str) -> None:
        held = self._by_name.setdefault(name, [])
        if held and held[-1][0] >= epoch:  # a change within the epoch it began in: the last word holds
            held[-1] = (held[-1][0], account)
        else:
            held.append((epoch, account))

    def latest(self) -> dict[str, str]:
        """Each node's account now."""
        return {name: held[-1][1] for name, held in self._by_name.items()}

    def set(self, name: str, account: str, epoch: int) -> bool:
        """``name`` is paid to ``account`` from ``epoch`` on; True when that is news (then written)."""
        account = checksum(account, f"payout account of {name}")
        held = self._by_name.get(name)
        if held and held[-1][1] == account:
            return False
        self._keep(name, epoch, account)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps({"name": name, "epoch": epoch, "account": account}) + "\n")
        return True

    def at(self, name: str, epoch: int) -> str | None:
        """The account ``name`` was paid to in ``epoch`` (its first, for an epoch before any)."""
        held = self._by_name.get(name)
        if not held:
            return None
        i = bisect.bisect_right([e for e, _ in held], epoch) - 1
        return held[max(i, 0)][1]
