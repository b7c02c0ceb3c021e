"""Folding the global parameters into a node that kept training (sans-IO).

With ``training.overlap`` a node does not wait for the round's outer step:
it sends its update and goes straight on with the next work it already
holds, from its own parameters. When newer global parameters arrive they
are folded in. The node's model is at all times

    local = g + (updates sent whose outer step ``g`` does not include yet) + (progress since)

where ``g`` is the last global parameters folded. Parameters that include
the outer steps of rounds up to ``closed`` replace ``g`` and drop the
node's own updates for those rounds (the global model now holds them, or
the round did without them), so

    local' = local + (params - g - sum of own updates for rounds <= closed)

keeps exactly the progress the node made since. Without overlap this is
the plain "load the parameters" (nothing is pending, nothing was made
since). The update a round reports is its inner steps' own displacement:
the trainer moves its starting point by every fold it makes mid-round.

With fragments (Streaming DiLoCo) a round sends only its fragment's part
of the progress not yet sent (:meth:`Folder.outgoing`, :func:`part_of`);
the rest waits for its own fragment's turn, and a fold only takes out what
was sent.

Parameters arrive on the event loop (:meth:`Folder.arrive`); the trainer
folds them in between steps on its own thread (:meth:`Folder.fold`), so
the model is only ever touched by the thread that trains it.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from hypergpu.config.schema import TrainingConfig
from hypergpu.model.layout import ParamLayout
from hypergpu.node.protocol import RoundOpened


class Folder:
    """The global parameters a node has folded, and its updates they do not include yet."""

    def __init__(self) -> None:
        self.params: np.ndarray | None = None  # g: the last global parameters folded
        self.version: int | None = None  # g's model version
        self.closed = 0  # the last round whose outer step g includes
        self._pending: dict[int, tuple[slice, np.ndarray]] = {}  # round -> (where, what was sent), not in g yet
        self._unsent: np.ndarray | None = None  # progress not sent yet (other fragments')
        self._arrived: deque[tuple[np.ndarray, int | None, int, bool]] = deque()
        self._lock = threading.Lock()
        #: the highest ``closed`` that has arrived (folded or not): an update for round k
        #: goes out only once k-1 is closed, i.e. its round is open on the coordinator
        self.closed_seen = 0
        self._restart = False
        self._behind_s = 0.0  # how late the node's last late update came (catch_up)

    # --- the event loop's side ---------------------------------------------------

    def arrive(self, params: np.ndarray, version: int | None, closed: int, *, replace: bool = False) -> None:
        """New global parameters came in (they include rounds up to ``closed``). ``replace``:
        the node made no progress it has not sent (no overlap, no fragments), so the fold is
        the plain load, bit for bit."""
        with self._lock:
            self._arrived.append((params, version, closed, replace))
            self.closed_seen = max(self.closed_seen, closed)

    def catch_up(self, late_s: float) -> None:
        """An update of this node's came ``late_s`` after its round closed: its work in hand
        (or the next) should end that much sooner, so the update after comes in on time.
        The node's phase is what is late, so acks for several rounds ask for the largest cut,
        not their sum."""
        with self._lock:
            self._behind_s = max(self._behind_s, late_s)

    def take_catch_up(self) -> float:
        """The cut :meth:`catch_up` asked for (0 when none), taken once."""
        with self._lock:
            behind, self._behind_s = self._behind_s, 0.0
        return behind

    def rejoined(self) -> None:
        """The node was welcomed again: the coordinator may have restarted from a checkpoint,
        so its next parameters are taken as they are (what was pending may never be applied,
        and its versions and rounds may run behind those folded before)."""
        with self._lock:
            self._restart = True
            self.closed_seen = 0

    # --- the trainer's side ---------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether parameters wait to be folded in."""
        return bool(self._arrived)

    def fold(self, local: np.ndarray) -> np.ndarray:
        """The node's model with every arrival folded in (``local`` itself when none came)."""
        with self._lock:
            arrived, self._arrived = list(self._arrived), deque()
        for params, version, closed, replace in arrived:
            if self._restart or self.params is None or replace:
                # the first parameters, or the first after a restart (nothing pending counts then)
                if self._restart or replace:
                    self._pending.clear()
                local, self._restart, self.closed = params.copy(), False, closed
            elif self.version is not None and version is not None and version < self.version:
                continue  # overtaken by newer parameters already folded in
            else:
                shift = params - self.params
                for round_id in [r for r in self._pending if r <= closed]:
                    where, part = self._pending.pop(round_id)
                    shift[where] -= part
                local = local + shift
            self.params, self.version, self.closed = params, version, max(self.closed, closed)
        return local

    def outgoing(self, round_id: int, progress: np.ndarray, where: slice | None = None) -> np.ndarray:
        """Add a round's progress to what is unsent and take out the part ``round_id``
        sends: fragment ``where`` of it (the whole of it when None).

        The next parameters that include ``round_id``'s outer step take that part
        out of the local model again: they hold it, or the round did without it.
        """
        if where is None and self._unsent is None:
            part = progress  # no fragments: every round sends all it made
        else:
            if self._unsent is None or self._unsent.shape != progress.shape:
                self._unsent = np.zeros_like(progress)
            self._unsent += progress
            where = where or slice(0, progress.size)
            part = self._unsent[where].copy()
            self._unsent[where] = 0.0
        where = where or slice(0, progress.size)
        earlier = self._pending.get(round_id)
        # A round run again (a restarted coordinator) adds to the local model once more:
        # the fold must take out both.
        self._pending[round_id] = (where, part if earlier is None else earlier[1] + part)
        return part

    @property
    def pending_rounds(self) -> list[int]:
        return sorted(self._pending)


def part_of(layout: ParamLayout, training: TrainingConfig, opened: RoundOpened) -> slice | None:
    """The fragment of its progress a node sends in ``opened``'s round (None: all of it):
    Streaming DiLoCo's run-wide turn, or the turn of the fragments its link was given."""
    if training.link_fragments > 1:
        return layout.fragment_of(opened.round, opened.assignment.fragments, training.link_fragments)
    return layout.fragment_of(opened.round, training.fragments)
