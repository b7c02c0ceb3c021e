"""Named configurations saved as JSON files (the dashboard's presets)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from hypergpu.config.loader import validate_config
from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import InvalidArgumentError, UnknownPresetError

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def public_config(config: HyperGPUConfig) -> HyperGPUConfig:
    """The configuration without secrets (the API token), for responses and files."""
    return config.model_copy(update={"api": config.api.model_copy(update={"token": None})})


class PresetStore:
    def __init__(self, directory: Path):
        self.directory = directory

    def _path(self, name: str) -> Path:
        if not NAME.match(name):
            raise InvalidArgumentError(f"preset name {name!r} must be 1-64 letters, digits, '_' or '-'")
        return self.directory / f"{name}.json"

    def names(self) -> list[tuple[str, float]]:
        if not self.directory.is_dir():
            return []
        return sorted((p.stem, p.stat().st_mtime) for p in self.directory.glob("*.json") if NAME.match(p.stem))

    def save(self, name: str, config: HyperGPUConfig) -> float:
        path = self._path(name)
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(public_config(config).model_dump_json(indent=2))
        os.replace(tmp, path)  # never leave a half-written preset
        return path.stat().st_mtime

    def load(self, name: str) -> HyperGPUConfig:
        path = self._path(name)
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise UnknownPresetError(f"no preset named {name!r}") from None
        return validate_config(raw)

    def delete(self, name: str) -> None:
        try:
            self._path(name).unlink()
        except FileNotFoundError:
            raise UnknownPresetError(f"no preset named {name!r}") from None
