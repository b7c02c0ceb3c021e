"""Text files as a corpus's source: which files, in which order, and which are held out.

The standard library's ``*.py`` files (installed packages aside) or every
regular file of a directory, sorted by relative POSIX path so every machine
lists them alike; a file is held out by a hash of its relative path, so the
split is the same on every node and in every later run.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path

from hypergpu.errors import DataError

_STDLIB_SKIP = frozenset({"site-packages", "dist-packages", "__pycache__"})


def stdlib_root() -> Path:
    """The standard library of the running Python."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_sources(root: Path) -> list[Path]:
    """Every ``*.py`` under ``root`` except installed packages and bytecode caches."""
    if not root.is_dir():
        raise DataError(f"stdlib corpus: {root} is not a directory")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _STDLIB_SKIP]
        found.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return _sorted_files(root, found)


def text_sources(directory: Path) -> list[Path]:
    """Every regular file under ``directory``, hidden files and directories skipped."""
    if not directory.is_dir():
        raise DataError(f"text corpus {directory}: not a directory")
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if not f.startswith("."))
    files = _sorted_files(directory, found)
    if not files:
        raise DataError(f"text corpus {directory}: the directory holds no files")
    return files


def _sorted_files(root: Path, paths: list[Path]) -> list[Path]:
    # Sorted by relative POSIX path so every machine lists the same order.
    regular = [p for p in paths if p.is_file()]
    return sorted(regular, key=lambda p: p.relative_to(root).as_posix())


def _held_out(rel_path: str, test_fraction: float) -> bool:
    # A hash of the name, not of the content or a random draw: every node and
    # every later run puts the same files on the same side.
    digest = hashlib.sha256(rel_path.encode("utf-8")).hexdigest()
    return int(digest[:8], 16) / 2**32 < test_fraction


def split_files(rel_paths: Sequence[str], test_fraction: float) -> tuple[list[str], list[str]]:
    """(training, held-out) relative paths, each in the given order.

    Tiny corpora may hash every file to one side: then the last file is held
    out, or the first kept for training. A one-file corpus keeps it for
    training (its tokens are split instead, see :func:`load_corpus`).
    """
    held = [r for r in rel_paths if _held_out(r, test_fraction)]
    if not held and rel_paths:
        held = [rel_paths[-1]]
    if len(held) == len(rel_paths):
        held = held[1:]
    held_set = set(held)
    return [r for r in rel_paths if r not in held_set], held
