"""Fixtures shared by the test suites."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run torch single-threaded: the test machine's cores are shared, extra threads only contend."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _subnormal_floats_kept_after_each_test():
    """A node's trainer flushes subnormal floats on the thread that trains (``training.flush_denormal``):
    tests that train on their own thread leave it so; every test after them starts from torch's default."""
    yield
    torch.set_flush_denormal(False)


@pytest.fixture(autouse=True, scope="session")
def _node_keys_off_the_home_directory(tmp_path_factory: pytest.TempPathFactory):
    """Nodes without a key file of their own (the wrapped optimizer, examples) create theirs under
    $XDG_CONFIG_HOME/hypergpu: a temporary one here, never the user's."""
    import os

    before = os.environ.get("XDG_CONFIG_HOME")
    os.environ["XDG_CONFIG_HOME"] = str(tmp_path_factory.mktemp("config-home"))
    yield
    if before is None:
        os.environ.pop("XDG_CONFIG_HOME", None)
    else:
        os.environ["XDG_CONFIG_HOME"] = before
