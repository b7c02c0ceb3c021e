"""Where a run is put together: the planner and outer optimizer chosen for a
configuration (:func:`assemble`), the local-run harness (:func:`local_run`:
coordinator, node processes, chain recorder), and the time-to-accuracy
trial the benchmarks and end-to-end tests share (:func:`run_trial`), and
runs whose nodes run the user's own script (:func:`train_with_script_nodes`).
Node processes start on this machine (:class:`LocalNodes`) or under Ray
actors (:class:`RayNodes`), as ``nodes.launcher`` says (:func:`node_launcher`)."""

from hypergpu.launch.assemble import assemble, planner_for
from hypergpu.launch.local import LocalNodes, LocalRun, NodeLauncher, local_run, node_command, node_launcher
from hypergpu.launch.ray_nodes import RayNodes
from hypergpu.launch.recorder import attach_recorder, settle_recorder
from hypergpu.launch.script_nodes import train_with_script_nodes
from hypergpu.launch.trial import TrialResult, TrialRound, run_trial

__all__ = [
    "LocalNodes",
    "LocalRun",
    "NodeLauncher",
    "RayNodes",
    "TrialResult",
    "TrialRound",
    "assemble",
    "attach_recorder",
    "local_run",
    "node_command",
    "node_launcher",
    "planner_for",
    "run_trial",
    "settle_recorder",
    "train_with_script_nodes",
]
