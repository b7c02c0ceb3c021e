"""One tracker per backend; each imports its library when it is started."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hypergpu.config.tracking import TrackingConfig
from hypergpu.errors import ConfigError
from hypergpu.extras import require


class TensorBoardTracker:
    """Scalars to TensorBoard event files in ``tracking.dir``/tensorboard/RUN
    (torch's ``SummaryWriter``); the configuration as a text summary."""

    name = "tensorboard"

    def __init__(self, settings: TrackingConfig, run_name: str):
        require("tracking")
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(settings.dir) / "tensorboard" / run_name
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", global_step=0)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class WandbTracker:
    """A Weights & Biases run in ``tracking.project``; its local files under
    ``tracking.dir``. Online it needs ``wandb login`` (or ``WANDB_API_KEY``);
    ``WANDB_MODE=offline`` keeps it on disk for ``wandb sync`` later."""

    name = "wandb"

    def __init__(self, settings: TrackingConfig, run_name: str):
        require("wandb")
        import wandb

        Path(settings.dir).mkdir(parents=True, exist_ok=True)
        try:
            # No system metadata: it would record the command line, and --set may carry the API token.
            self.run = wandb.init(project=settings.project, name=run_name, dir=settings.dir, reinit="create_new",
                                  settings=wandb.Settings(x_disable_meta=True))
        except Exception as exc:  # wandb raises its own errors for a missing login, a bad project, no network
            raise ConfigError(f"tracking: W&B could not start a run ({exc}); log in with `wandb login`, "
                              "or set WANDB_MODE=offline") from exc

    def log_config(self, config: Mapping[str, Any]) -> None:
        self.run.config.update(dict(config), allow_val_change=True)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step, commit=True)  # a round is logged whole: no waiting for the next

    def finish(self) -> None:
        self.run.finish()


class MLflowTracker:
    """An MLflow run in experiment ``tracking.project``: ``tracking.mlflow_uri``,
    else ``$MLFLOW_TRACKING_URI``, else a file store in ``tracking.dir``/mlruns
    (``mlflow ui --backend-store-uri`` reads it)."""

    name = "mlflow"

    def __init__(self, settings: TrackingConfig, run_name: str):
        require("mlflow")
        from mlflow import MlflowClient
        from mlflow.entities import Metric, Param

        self._metric, self._param = Metric, Param

        uri = settings.mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None:
            # Our own default: a file store, which MLflow keeps in maintenance mode
            # and refuses unless told it is wanted (mlflow_uri names a database or server).
            uri = (Path(settings.dir) / "mlruns").resolve().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.uri = uri
        try:
            self.client = MlflowClient(tracking_uri=uri)
            experiment = self.client.get_experiment_by_name(settings.project)
            experiment_id = experiment.experiment_id if experiment is not None \
                else self.client.create_experiment(settings.project)
            self.run_id: str = self.client.create_run(experiment_id, run_name=run_name).info.run_id
        except Exception as exc:  # MlflowException, or the store's own I/O errors
            raise ConfigError(f"tracking: MLflow could not start a run at {uri} ({exc})") from exc

    def log_config(self, config: Mapping[str, Any]) -> None:
        items = list(_flatten(config).items())
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            batch = [self._param(k, _param_value(v)) for k, v in items[start:start + 100]]
            self.client.log_batch(self.run_id, params=batch)

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[self._metric(k, v, now, step) for k, v in metrics.items()])

    def finish(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _param_value(value: Any) -> str:
    # MLflow keeps parameter values up to 6000 characters.
    return json.dumps(value)[:6000] if not isinstance(value, str) else value[:6000]


BACKENDS: dict[str, Callable[[TrackingConfig, str], Any]] = {
    "tensorboard": TensorBoardTracker,
    "wandb": WandbTracker,
    "mlflow": MLflowTracker,
}
