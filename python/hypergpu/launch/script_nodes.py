"""Train with node processes that run the user's own script.

:func:`train_with_script_nodes` starts one process per entry of
``node_args``, each running ``script node --join JOIN --token TOKEN *args``
with this process's ``hypergpu`` importable, runs the coordinator until
the training ends, then says bye and waits for the processes (killing any
that hang). The examples with a user's own loop
(``examples/custom_model.py``, ``examples/gpt_custom_loop.py``) run this way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import hypergpu
from hypergpu.coordinator import Coordinator, Summary
from hypergpu.launch.local import local_key_dir


async def train_with_script_nodes(coordinator: Coordinator, script: str | Path,
                                  node_args: Sequence[Sequence[str]], *, join_timeout_s: float = 60.0) -> Summary:
    """Run ``coordinator`` with one ``script node ...`` process per ``node_args`` entry."""
    join = await coordinator.start()
    # The nodes import the same hypergpu package as this process.
    package_root = str(Path(hypergpu.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, (package_root, os.environ.get("PYTHONPATH")))))
    # Each its own key (created by the node on first use), as a local run's nodes have.
    keys = local_key_dir(coordinator.config)
    procs = [
        # --token=...: a token may begin with '-', which argparse would take for an option
        subprocess.Popen([sys.executable, str(script), "node", f"--join={join}", f"--token={coordinator.token}", *args],
                         env=dict(env, HYPERGPU_KEY_FILE=str(keys / f"script-node-{i}.key")))
        for i, args in enumerate(node_args)
    ]
    try:
        return await coordinator.run(join_timeout_s=join_timeout_s)
    finally:
        await coordinator.close()  # says bye: the nodes' loops end
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
