"""Collect ``bench_*.py`` files when pytest is pointed at ``benches/``
(the default ``python_files`` only matches ``test_*.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_collect_file(parent: pytest.Collector, file_path: Path) -> pytest.Module | None:
    # A file named on the command line is collected by pytest already.
    if parent.session.isinitpath(file_path):
        return None
    if file_path.suffix == ".py" and file_path.name.startswith("bench_"):
        return pytest.Module.from_parent(parent, path=file_path)
    return None
