"""Which configuration fields a client of the API may change while it serves.

A configuration sent to ``PUT /api/config``, ``POST /api/training/start``
or a preset may differ from the startup configuration only in
:data:`RUNTIME_SETTABLE`: training hyper-parameters, the adaptation and
link-emulation knobs, the synthetic data's shape and how many local nodes
a run starts. Everything else (the chain and its contracts, rewards and
the pool, paths, hosts, ports, the token, ``training.custom_model``'s
import) is the operator's, set when the server started; a request that
changes any of it is refused, naming each such field. A whole
configuration that only echoes those fields back (as the dashboard's form
does) is accepted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import ConfigError

#: Fields the API may change, each a dotted path: a field, or a section and every field in it
#: (but those in STARTUP_ONLY). Anything not named here is refused.
RUNTIME_SETTABLE: tuple[str, ...] = (
    "training",
    "adapt",
    "network",
    "nodes.count", "nodes.speed_factors",
    "data.dataset", "data.shards", "data.eval_samples", "data.synthetic_samples", "data.synthetic_features",
    "data.synthetic_classes", "data.test_fraction",
    "coordinator.round_timeout_s", "coordinator.quorum", "coordinator.late_updates", "coordinator.staleness_decay",
    "coordinator.heartbeat_interval_s", "coordinator.max_consecutive_failures",
)
#: Fields inside a settable section that stay the operator's: ``custom_model`` names code to import.
STARTUP_ONLY: tuple[str, ...] = ("training.custom_model",)

_ABSENT = object()


def _under(path: str, paths: tuple[str, ...]) -> bool:
    return any(path == p or path.startswith(p + ".") for p in paths)


def settable(path: str) -> bool:
    return _under(path, RUNTIME_SETTABLE) and not _under(path, STARTUP_ONLY)


def changed_fields(before: Any, after: Any, path: str = "") -> Iterator[str]:
    """Dotted paths of the leaves that differ between two JSON-like trees."""
    if isinstance(before, dict) and isinstance(after, dict):
        for key in sorted(before.keys() | after.keys(), key=str):
            where = f"{path}.{key}" if path else str(key)
            yield from changed_fields(before.get(key, _ABSENT), after.get(key, _ABSENT), where)
    elif before != after:
        yield path


def check_runtime_change(startup: HyperGPUConfig, proposed: HyperGPUConfig) -> HyperGPUConfig:
    """``proposed`` if it changes only :data:`RUNTIME_SETTABLE` fields of ``startup``; else a
    :class:`ConfigError` naming every other field it changes.

    The API never returns the token, so a configuration without one keeps the startup's.
    """
    if proposed.api.token is None:
        proposed = proposed.model_copy(update={"api": proposed.api.model_copy(update={"token": startup.api.token})})
    fixed = [p for p in changed_fields(startup.model_dump(mode="json"), proposed.model_dump(mode="json"))
             if not settable(p)]
    if fixed:
        raise ConfigError(
            f"{', '.join(fixed)}: set at startup only; while serving, the API changes only training "
            "hyper-parameters (GET /api/config/settable lists them)"
        )
    return proposed
