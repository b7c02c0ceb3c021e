"""The chain recorder's part in a run: attached before the first round when
settlement is configured (``rewards.enabled``), settled after the last."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator import Coordinator, Summary

if TYPE_CHECKING:
    from hypergpu.chain.recorder import ChainRecorder

log = logging.getLogger("hypergpu.launch")


async def attach_recorder(config: HyperGPUConfig, coordinator: Coordinator, *,
                          resume: bool = False) -> ChainRecorder | None:
    """Starts a chain recorder (off the event loop: it connects and deploys) and
    makes it a round observer; None when ``rewards.enabled`` is off."""
    if not config.rewards.enabled:
        return None
    from hypergpu.chain.recorder import ChainRecorder

    recorder = await asyncio.to_thread(ChainRecorder(config, resume=resume).start, coordinator)
    coordinator.observers.append(recorder)
    return recorder


async def settle_recorder(recorder: ChainRecorder, coordinator: Coordinator, summary: Summary) -> bool:
    """Settles the last (partial) epoch and waits, bounded, for the chain; True if every write was sent."""
    try:
        return await asyncio.to_thread(recorder.finish, coordinator, complete=not summary.stopped_early)
    except Exception as exc:  # the run's result must survive a failed settlement; the queue stays on disk
        log.exception("settling the run on chain failed")
        coordinator.events.publish("alert", level="error", message=f"chain settlement failed: {exc}")
        return False
