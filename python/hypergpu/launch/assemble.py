"""Where a run is assembled: the planner (static or adaptive) and the outer
optimizer are chosen here and handed to the
:class:`~hypergpu.coordinator.Coordinator` (which, built alone, takes the
static planner and the same configured outer optimizer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.coordinator import Coordinator
from hypergpu.events import EventBus
from hypergpu.model.outer import outer_optimizer_for
from hypergpu.round import Planner, StaticPlanner

#: ``EventBus.publish``: where a planner reports its decisions.
Publish = Callable[..., Any]


def planner_for(config: HyperGPUConfig, publish: Publish | None = None) -> Planner:
    """The adaptive planner when ``adapt.enabled``, else every node on the configured settings."""
    if config.adapt.enabled:
        from hypergpu.adapt import AdaptivePlanner

        return AdaptivePlanner(config, publish=publish)
    return StaticPlanner(config)


def assemble(
    config: HyperGPUConfig,
    *,
    events: EventBus | None = None,
    token: str | None = None,
    planner: Planner | None = None,
    model: nn.Module | None = None,
) -> Coordinator:
    """A coordinator for ``config`` with its planner (default: :func:`planner_for`) and outer optimizer.

    Blocking (loads the data, builds the model): call it off the event loop.
    """
    events = events or EventBus(config.coordinator.event_window)
    # The coordinator evaluates on the CPU, on threads started after this one (they inherit its float mode).
    torch.set_flush_denormal(config.training.flush_denormal)
    return Coordinator(
        config,
        planner=planner or planner_for(config, events.publish),
        outer=outer_optimizer_for(config),
        model=model,
        token=token,
        events=events,
    )
