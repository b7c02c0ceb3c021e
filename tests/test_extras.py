"""The base package trains without any extra, and a missing extra says which
`pip install 'hypergpu[...]'` to run. The extras' modules are hidden from the
processes by a sitecustomize that refuses to find them (the node processes
the run spawns inherit it through PYTHONPATH)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import hypergpu
from hypergpu.errors import MissingExtraError
from hypergpu.extras import EXTRAS, require

pytestmark = pytest.mark.timeout(360)

# eth_account, eth_abi and eth_utils are base dependencies (every node signs its hello with its key).
HIDDEN = sorted({m for _, modules in EXTRAS.values() for m in modules} | {"starlette", "scipy"})

BLOCKER = f'''
import sys

class _Hide:
    """Wraps a finder so that it finds none of the extras' modules, as if they were not installed:
    an import of one fails, and importlib.util.find_spec returns None for it (libraries probe
    optional modules that way; torch does, when its optimizers first load its compiler)."""
    hidden = {HIDDEN!r}

    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.hidden:
            return None
        find = getattr(self.finder, "find_spec", None)
        return None if find is None else find(name, path, target)

    def __getattr__(self, attr):  # invalidate_caches and the like
        return getattr(self.finder, attr)

sys.meta_path[:] = [_Hide(finder) for finder in sys.meta_path]
'''

SMALL = ("nodes.count=2", "training.rounds=2", "training.model='mlp'", "training.local_steps=2",
         "data.cache_dir=null", "coordinator.checkpoint_every=0", "coordinator.heartbeat_interval_s=0.5")


def bare_env(tmp_path: Path) -> dict[str, str]:
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(BLOCKER)
    source = Path(hypergpu.__file__).resolve().parent.parent
    return dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{source}")


def hypergpu_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # A real run in a fresh process: 69 s alone on the 2-core CI machine, and once past 150 s under the suite's load.
    return subprocess.run([sys.executable, "-m", "hypergpu.cli", *args], cwd=tmp_path, env=bare_env(tmp_path),
                          capture_output=True, text=True, timeout=300)


def sets(*overrides: str) -> list[str]:
    return [a for o in overrides for a in ("--set", o)]


def test_require_names_the_extra_and_the_missing_modules() -> None:
    require("chain")  # installed here
    with pytest.raises(MissingExtraError) as caught:
        require("tracking", ("tensorboard", "hypergpu_no_such_module"))
    assert caught.value.extra == "tracking" and caught.value.missing == ("hypergpu_no_such_module",)
    assert "pip install 'hypergpu[tracking]'" in str(caught.value)
    assert isinstance(caught.value, ImportError)


def test_the_base_package_trains_without_any_extra(tmp_path: Path) -> None:
    done = hypergpu_cli(tmp_path, "train", "--no-api",
                        *sets(*SMALL, "data.dataset='synthetic'", "rewards.enabled=false"))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "rounds 2" in out
    # The blocker did hide them (web3 is installed here): the same process cannot see it.
    probe = subprocess.run([sys.executable, "-c", "import web3"], env=bare_env(tmp_path),
                           capture_output=True, text=True)
    assert probe.returncode != 0 and "No module named 'web3'" in probe.stderr, probe.stderr


@pytest.mark.parametrize(("args", "extra"), [
    (("train", "--no-api", *sets(*SMALL, "data.dataset='synthetic'")), "chain"),
    (("train", *sets(*SMALL, "data.dataset='synthetic'", "rewards.enabled=false")), "api"),
    (("train", "--no-api", *sets(*SMALL, "rewards.enabled=false")), "data"),
    (("train", "--no-api", *sets(*SMALL, "data.dataset='synthetic'", "rewards.enabled=false",
                                 "tracking.backends=['tensorboard']")), "tracking"),
])
def test_a_missing_extra_fails_with_the_command_that_installs_it(tmp_path: Path, args: tuple[str, ...],
                                                                 extra: str) -> None:
    done = hypergpu_cli(tmp_path, *args)
    assert done.returncode != 0
    assert f"pip install 'hypergpu[{extra}]'" in done.stderr, done.stdout + done.stderr
    assert "Traceback" not in done.stderr, done.stderr
