"""MkDocs hook: pages generated from the code, so they cannot drift from it.

``{{ config_reference }}`` becomes one table per configuration section, walked
from the pydantic schema (``hypergpu.config.schema.HyperGPUConfig``) with the
defaults of a default configuration; ``{{ benchmarks }}`` becomes each
benchmark's own description (the docstring of ``benches/bench_*.py``).
"""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "python"))


def on_page_markdown(markdown: str, **_: Any) -> str:
    if "{{ config_reference }}" in markdown:
        markdown = markdown.replace("{{ config_reference }}", config_reference())
    if "{{ benchmarks }}" in markdown:
        markdown = markdown.replace("{{ benchmarks }}", benchmarks())
    return markdown


# --- the configuration reference -----------------------------------------------


def config_reference() -> str:
    from hypergpu.config.schema import HyperGPUConfig

    schema = HyperGPUConfig.model_json_schema()
    defs = schema["$defs"]
    defaults = HyperGPUConfig().model_dump(mode="json")
    out: list[str] = []
    shapes: set[str] = set()
    for name, prop in schema["properties"].items():
        _section(out, name, defs[_ref(prop)], defs, defaults[name], shapes)
    for shape in sorted(shapes):
        out += [f"### {shape} {{#{shape.lower()}}}", "", defs[shape].get("description", ""), ""]
        out += _table(defs[shape], defs, None, shapes, nested=None)
    return "\n".join(out)


def _section(out: list[str], path: str, spec: dict, defs: dict, defaults: dict, shapes: set[str]) -> None:
    out += [f"## `[{path}]`", "", spec.get("description", ""), ""]
    nested: list[tuple[str, dict]] = []
    out += _table(spec, defs, defaults, shapes, nested)
    for key, sub in nested:
        _section(out, f"{path}.{key}", defs[_ref(sub)], defs, defaults[key], shapes)


def _table(spec: dict, defs: dict, defaults: dict | None, shapes: set[str],
           nested: list[tuple[str, dict]] | None) -> list[str]:
    rows = ["| key | type | default | what |", "| --- | --- | --- | --- |"]
    for key, prop in spec["properties"].items():
        if nested is not None and "$ref" in prop and "properties" in defs[_ref(prop)] and defaults is not None \
                and isinstance(defaults.get(key), dict):
            nested.append((key, prop))
            rows.append(f"| `{key}` | section `[…{key}]` (below) | | {_cell(prop.get('description', ''))} |")
            continue
        default = "" if defaults is None else f"`{_cell(json.dumps(defaults.get(key)))}`"
        if defaults is None and "default" in prop:
            default = f"`{_cell(json.dumps(prop['default']))}`"
        rows.append(f"| `{key}` | {_cell(_type(prop, shapes))} | {default} | {_cell(prop.get('description', ''))} |")
    return [*rows, ""]


def _type(prop: dict, shapes: set[str]) -> str:
    if "$ref" in prop:
        shapes.add(_ref(prop))
        return f"[{_ref(prop)}](#{_ref(prop).lower()})"
    if "enum" in prop:
        return " | ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    if "anyOf" in prop:
        return " or ".join("unset (`null`)" if p.get("type") == "null" else _type(p, shapes) for p in prop["anyOf"])
    kind = prop.get("type", "any")
    if kind == "array":
        text = f"list of {_type(prop.get('items', {}), shapes)}"
    elif kind == "object":
        text = f"table of {_type(prop['additionalProperties'], shapes)}" if "additionalProperties" in prop else "table"
    else:
        text = {"integer": "int", "number": "float", "string": "str", "boolean": "bool"}.get(kind, kind)
    return text + _bounds(prop)


def _bounds(prop: dict) -> str:
    marks = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"),
             ("minItems", "items ≥"), ("maxItems", "items ≤"), ("minLength", "length ≥"), ("maxLength", "length ≤"))
    found = [f"{sign} {prop[key]}" for key, sign in marks if key in prop]
    if "pattern" in prop:
        found.append(f"matching `{prop['pattern']}`")
    return f" ({', '.join(found)})" if found else ""


def _ref(prop: dict) -> str:
    return str(prop["$ref"]).rsplit("/", 1)[-1]


def _cell(text: str) -> str:
    """A table cell: pipes escaped outside code spans (inside them the table keeps them)."""
    parts = text.replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("|", "\\|") for i, p in enumerate(parts))


# --- the benchmarks ---------------------------------------------------------------


def benchmarks() -> str:
    out: list[str] = []
    for path in sorted((ROOT / "benches").glob("bench_*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or "(no description)"
        title, _, body = doc.partition("\n")
        out += [f"## `{path.name}`", "", f"**{title.strip()}**", "", body.strip(), "",
                f"Run: `.venv/bin/python -m pytest benches/{path.name} --benchmark-only -s`", ""]
    return "\n".join(out)
