"""Round metrics reach the experiment trackers: a real run (coordinator and two
node processes, ``hypergpu train --no-api``) with every installed tracker on;
TensorBoard's and MLflow's records are read back with their own readers."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import hypergpu
from hypergpu.config.tracking import TrackingConfig
from hypergpu.extras import installed
from hypergpu.round import NodeAnswer, RoundRecord
from hypergpu.tracking import RoundTracking, WandbTracker, round_metrics

pytestmark = pytest.mark.timeout(240)

ROUNDS = 3
TOKEN = "tracking-test-token-0123456789"
BACKENDS = [name for name, module in (("tensorboard", "tensorboard"), ("wandb", "wandb"), ("mlflow", "mlflow"))
            if installed(module)]


def wandb_env(tmp: Path) -> dict[str, str]:
    return {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONFIG_DIR": str(tmp / "wandb-config"),
            "WANDB_CACHE_DIR": str(tmp / "wandb-cache"), "WANDB_DATA_DIR": str(tmp / "wandb-data")}


@pytest.fixture(scope="module")
def tracked_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tracking dir of one short run with every installed tracker."""
    tmp = tmp_path_factory.mktemp("tracking")
    overrides = ["nodes.count=2", f"training.rounds={ROUNDS}", "training.model='mlp'", "training.local_steps=2",
                 "data.cache_dir=null", "coordinator.checkpoint_every=0", "coordinator.heartbeat_interval_s=0.5",
                 "rewards.enabled=false", f"tracking.backends={BACKENDS!r}", f"tracking.dir='{tmp / 'track'}'",
                 "tracking.run_name='t1'", f"api.token='{TOKEN}'"]
    env = dict(os.environ, PYTHONPATH=str(Path(hypergpu.__file__).resolve().parent.parent), **wandb_env(tmp))
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, "-m", "hypergpu.cli", "train", "--no-api",
                           *[a for o in overrides for a in ("--set", o)]],
                          cwd=tmp, env=env, capture_output=True, text=True, timeout=200)
    assert done.returncode == 0, done.stdout + done.stderr
    return tmp / "track"


def test_tensorboard_event_files_hold_every_round(tracked_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tracked_run / "tensorboard" / "t1"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "eval/loss", "eval/accuracy", "round/reported", "bytes/updates",
            "node/0/loss", "node/1/compute_s"} <= scalars
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, ROUNDS + 1))
    assert [e.value for e in events.Scalars("round/reported")] == [2.0] * ROUNDS
    assert all(0.0 <= e.value <= 1.0 for e in events.Scalars("eval/accuracy"))
    assert all(e.value > 0 for e in events.Scalars("bytes/updates"))
    assert "config/text_summary" in events.Tags()["tensors"]  # the configuration


def test_mlflow_run_holds_every_round_and_the_configuration(tracked_run: Path) -> None:
    if "mlflow" not in BACKENDS:
        pytest.skip("mlflow is not installed (pip install 'hypergpu[mlflow]')")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(tracked_run / "mlruns").as_uri())
    experiment = client.get_experiment_by_name("hypergpu")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "t1" and run.info.status == "FINISHED"
    history = client.get_metric_history(run.info.run_id, "train/loss")
    assert sorted(m.step for m in history) == list(range(1, ROUNDS + 1))
    assert run.data.params["training.rounds"] == str(ROUNDS) and run.data.params["training.model"] == "mlp"
    assert run.data.params["api.token"] == "<redacted>"


def test_wandb_keeps_an_offline_run(tracked_run: Path) -> None:
    if "wandb" not in BACKENDS:
        pytest.skip("wandb is not installed (pip install 'hypergpu[wandb]')")
    (run_dir,) = (tracked_run / "wandb").glob("offline-run-*")
    (records,) = run_dir.glob("run-*.wandb")
    assert records.stat().st_size > 1000


def test_no_tracker_keeps_the_api_token(tracked_run: Path) -> None:
    for path in tracked_run.rglob("*"):
        if path.is_file() and "debug" not in path.name:
            assert TOKEN.encode() not in path.read_bytes(), path


def record(round_id: int, loss: float) -> RoundRecord:
    answer = NodeAnswer(node_id=0, round=round_id, samples=32, loss=loss, compute_s=0.5, wall_s=0.6,
                        turnaround_s=0.7, update_bytes=4096, params_bytes=2048, codec="raw", weight=1.0)
    return RoundRecord(round=round_id, applied=True, participants=[0], reported=[0], missing=[], excluded={},
                       train_loss=loss, samples=32, duration_s=0.8, model_version=round_id, answers={0: answer},
                       test_accuracy=0.5)


def test_round_metrics_name_the_round_s_figures() -> None:
    m = round_metrics(record(4, 1.25))
    assert m["train/loss"] == 1.25 and m["eval/accuracy"] == 0.5 and "eval/loss" not in m
    assert m["bytes/updates"] == 4096 and m["bytes/params"] == 2048 and m["node/0/loss"] == 1.25
    assert "node/0/loss" not in round_metrics(record(4, 1.25), per_node=False)


def test_wandb_run_summary_holds_the_last_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "wandb" not in BACKENDS:
        pytest.skip("wandb is not installed (pip install 'hypergpu[wandb]')")
    for key, value in wandb_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    tracker = WandbTracker(TrackingConfig(dir=str(tmp_path / "track")), "unit")
    tracking = RoundTracking([tracker])
    for round_id, loss in ((1, 2.0), (2, 1.5)):
        tracking.log_round(record(round_id, loss))
    assert tracker.run.summary["train/loss"] == 1.5 and tracker.run.summary["_step"] == 2
    tracking.finish()
