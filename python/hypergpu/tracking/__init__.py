"""Round metrics to experiment trackers: TensorBoard, Weights & Biases, MLflow.

A :class:`Tracker` takes the run's configuration once, then named scalars per
step, then is finished — one class per backend (``tracking.backends``), each
importing its library only when chosen (a missing one raises
:class:`~hypergpu.errors.MissingExtraError` naming its extra).
:class:`RoundTracking` is the round observer that feeds them every finished
round's :class:`~hypergpu.round.RoundRecord` (:func:`round_metrics`).
"""

from hypergpu.tracking.backends import MLflowTracker, TensorBoardTracker, WandbTracker
from hypergpu.tracking.observer import RoundTracking, Tracker, open_trackers, round_metrics

__all__ = ["MLflowTracker", "RoundTracking", "TensorBoardTracker", "Tracker", "WandbTracker", "open_trackers",
           "round_metrics"]
