"""Load a :class:`HyperGPUConfig` from TOML plus ``section.field=value`` overrides.

Pydantic's errors are translated into one :class:`~hypergpu.errors.ConfigError`
whose message names the field path, the offending value and what is allowed.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError

from hypergpu.config.schema import HyperGPUConfig
from hypergpu.errors import ConfigError

_NULL_WORDS = frozenset({"null", "none"})


def load_config(
    path: str | Path | None = None, overrides: Iterable[str] = ()
) -> HyperGPUConfig:
    """Read ``path`` (TOML; ``None`` for all defaults) and apply ``overrides``.

    Each override is ``dotted.path=value`` where value is a TOML literal
    (``0.01``, ``"adam"``, ``[64, 32]``, ``true``); a bare word that is not
    valid TOML is taken as a string, and ``null``/``none`` as unset.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        raw = _read_toml(Path(path))
    for item in overrides:
        _apply_override(raw, item)
    return validate_config(raw)


def validate_config(raw: Mapping[str, Any]) -> HyperGPUConfig:
    """Validate a plain mapping, raising :class:`ConfigError` on any problem."""
    try:
        return HyperGPUConfig.model_validate(raw)
    except ValidationError as exc:
        problems = [_describe(err) for err in exc.errors()]
        error = ConfigError("invalid configuration: " + "; ".join(problems))
        error.problems = problems  # type: ignore[attr-defined]
        raise error from None


def config_schema() -> dict[str, Any]:
    """The JSON schema of :class:`HyperGPUConfig`."""
    return HyperGPUConfig.model_json_schema()


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc}") from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    if not sep or not key or any(not p.strip() for p in parts):
        raise ConfigError(f"override {item!r} must look like section.field=value")
    value = _parse_literal(text.strip())
    node = raw
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"override {item!r}: {where} is a value, not a section")
        node = child
    node[parts[-1]] = value


def _parse_literal(text: str) -> Any:
    if text.lower() in _NULL_WORDS:
        return None
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _describe(err: Mapping[str, Any]) -> str:
    loc = tuple(err.get("loc", ()))
    where = ".".join(str(p) for p in loc) or "(top level)"
    kind = err.get("type", "")
    ctx = err.get("ctx") or {}
    value = err.get("input")
    shown = "null" if value is None else repr(value)
    if kind == "extra_forbidden":
        allowed = _field_names(loc[:-1])
        hint = f"; known fields: {', '.join(allowed)}" if allowed else ""
        return f"{where}: unknown field{hint}"
    if kind == "missing":
        return f"{where}: required but missing"
    if kind == "value_error":
        message = str(ctx.get("error", err.get("msg", "")))
        return f"{where}: {message}" if loc else message
    if kind == "literal_error":
        return f"{where}: {shown} is not one of {ctx.get('expected')}"
    if value is None:
        return f"{where}: null is not allowed{_allowed(loc)}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        bound = _allowed(loc) or f" ({err.get('msg')})"
        return f"{where}: {shown} is out of range{bound}"
    if kind in ("string_too_short", "too_short") and value in ("", [], {}):
        return f"{where}: must not be empty{_allowed(loc)}"
    return f"{where}: {shown} is invalid: {err.get('msg')}{_allowed(loc)}"


def _allowed(loc: tuple[Any, ...]) -> str:
    """'; allowed: 0 < value <= 1' from the field's declared bounds, if any."""
    field = _field_at(loc)
    if field is None:
        return ""
    lower = upper = ""
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Gt):
            lower = f"{meta.gt} < "
        elif isinstance(meta, annotated_types.Ge):
            lower = f"{meta.ge} <= "
        elif isinstance(meta, annotated_types.Lt):
            upper = f" < {meta.lt}"
        elif isinstance(meta, annotated_types.Le):
            upper = f" <= {meta.le}"
        elif isinstance(meta, annotated_types.MinLen) and meta.min_length:
            return f"; allowed: length >= {meta.min_length}"
    if lower or upper:
        return f"; allowed: {lower}value{upper}"
    return ""


def _field_at(loc: tuple[Any, ...]) -> Any:
    model: type[BaseModel] = HyperGPUConfig
    field = None
    for part in loc:
        if model is None or not isinstance(part, str) or part not in model.model_fields:
            return None
        field = model.model_fields[part]
        ann = field.annotation
        model = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None  # type: ignore[assignment]
    return field


def _field_names(loc: tuple[Any, ...]) -> list[str]:
    model: Any = HyperGPUConfig
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return []
        model = field.annotation
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
    return sorted(model.model_fields)
