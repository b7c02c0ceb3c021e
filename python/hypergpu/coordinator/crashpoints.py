"""A test hook: a coordinator that kills itself with SIGKILL at a named moment of a round.

``HYPERGPU_CRASH_AT=<point>:<round>`` (e.g. ``checkpoint:9``) makes the
coordinator process send itself SIGKILL when it reaches that point of that
round, so an end-to-end test can crash it exactly where it means to — no
cleanup, no flush, as a power cut or the OOM killer would. The points:

- ``send``: the round's parameters have reached one node, others may be on their way;
- ``aggregate``: the round is sealed and its updates are being aggregated, before the outer step;
- ``checkpoint``: a checkpoint's temporary file is written and synced, not yet renamed into place.

Unset (always, outside tests) it costs one dictionary lookup.
"""

from __future__ import annotations

import os
import signal
import sys

ENV = "HYPERGPU_CRASH_AT"
POINTS = ("send", "aggregate", "checkpoint")


def crash_point(point: str, round_id: int) -> None:
    """SIGKILL this process if ``HYPERGPU_CRASH_AT`` names ``point`` in ``round_id``."""
    spec = os.environ.get(ENV)
    if spec and spec == f"{point}:{round_id}":
        # stderr is unbuffered: the test reads where the process died
        print(f"crash point {point}:{round_id}: SIGKILL", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
