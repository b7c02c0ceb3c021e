"""Experiment tracking (``[tracking]``): where round metrics go besides the
dashboard — TensorBoard event files, Weights & Biases, MLflow."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from hypergpu.config.base import Section

TrackerName = Literal["tensorboard", "wandb", "mlflow"]


class TrackingConfig(Section):
    """Round metrics to the experiment trackers people already use (each needs its extra)."""

    backends: list[TrackerName] = Field(
        default_factory=list, description="trackers fed every round's metrics: tensorboard (the tracking extra), "
        "wandb, mlflow (their own extras); empty: none")
    dir: str = Field("runs/tracking", min_length=1, description="TensorBoard event files go to DIR/tensorboard/RUN, "
                     "W&B's local files to DIR, MLflow's file store to DIR/mlruns unless mlflow_uri is set")
    project: str = Field("hypergpu", min_length=1, description="the W&B project and the MLflow experiment")
    run_name: str | None = Field(None, min_length=1, description="the run's name in every tracker "
                                 "(unset: hypergpu-YYYYmmdd-HHMMSS)")
    mlflow_uri: str | None = Field(None, min_length=1, description="MLflow tracking URI (unset: "
                                   "$MLFLOW_TRACKING_URI, else a file store under dir)")
    per_node: bool = Field(True, description="also log each node's loss, compute seconds and update bytes")
