#!/usr/bin/env python3
"""Lists Python modules over MAX_MODULE_LINES lines and functions over
MAX_FUNCTION_LINES lines that give no reason for their length.

A long function gives its reason in a comment at its top: a ``#`` line
between its ``def`` and its first statement (the docstring aside), e.g.
``# one table of every message kind; splitting it hides the protocol``.

    python scripts/sizes.py [PATH ...]     (default: python/hypergpu)

Exits 1 when it lists anything.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

Function = ast.FunctionDef | ast.AsyncFunctionDef


def functions(tree: ast.AST) -> Iterator[Function]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def first_statement(fn: Function) -> ast.stmt:
    body = fn.body
    has_docstring = (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                     and isinstance(body[0].value.value, str))
    return body[1] if has_docstring and len(body) > 1 else body[0]


def gives_reason(fn: Function, lines: list[str]) -> bool:
    """A comment line between the ``def`` and the first statement."""
    top = lines[fn.lineno - 1:first_statement(fn).lineno - 1]
    return any(line.strip().startswith("#") for line in top)


def check(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    found = []
    if len(lines) > MAX_MODULE_LINES:
        found.append(f"{path}: module of {len(lines)} lines (> {MAX_MODULE_LINES})")
    for fn in functions(ast.parse(text, str(path))):
        length = (fn.end_lineno or fn.lineno) - fn.lineno + 1
        if length > MAX_FUNCTION_LINES and not gives_reason(fn, lines):
            found.append(f"{path}:{fn.lineno}: {fn.name}() of {length} lines (> {MAX_FUNCTION_LINES}), no reason given")
    return found


def main(argv: list[str]) -> int:
    roots = [Path(a) for a in argv] or [Path(__file__).resolve().parent.parent / "python" / "hypergpu"]
    files = sorted(f for r in roots for f in ([r] if r.is_file() else r.rglob("*.py")))
    found = [line for f in files for line in check(f)]
    print("\n".join(found) if found else f"sizes: {len(files)} files, nothing over the limits")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
