"""Running a real coordinator with real node processes (and scripted peers) in a test."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hypergpu.launch.local import LocalNodes
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator import Coordinator

#: A scripted peer: given the join string and token, joins and plays its part.
Peer = Callable[[str, str], Awaitable[None]]


async def run_with_nodes(
    coord: Coordinator,
    cfg: HyperGPUConfig,
    tmp_path: Path,
    indices: list[int] | None = None,
    peer: Peer | None = None,
    **run: Any,
) -> tuple[Any, LocalNodes]:
    """Start node processes ``indices`` (all by default) and ``peer``, run, and clean up."""
    join = await coord.start()
    scripted = asyncio.ensure_future(peer(join, coord.token)) if peer is not None else None
    nodes = LocalNodes(cfg, join, coord.token, tmp_path / "logs")
    for i in range(cfg.nodes.count) if indices is None else indices:
        nodes.start(i)
    try:
        summary = await coord.run(**{"join_timeout_s": 90, **run})
    finally:
        await coord.close()
        await asyncio.to_thread(nodes.stop)
        if scripted is not None:
            await asyncio.wait_for(scripted, 30)
    return summary, nodes
