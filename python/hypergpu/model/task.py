"""The task a run trains: what the loss is, how the model is judged, when to stop.

Two tasks are built in. :class:`Classification` scores logits ``(B, C)``
against labels ``(B,)``: cross-entropy and accuracy. :class:`LanguageModel`
scores next-token logits ``(B, T, V)`` against the shifted tokens ``(B, T)``:
cross-entropy per token, next-token accuracy, perplexity and bits per byte.
Coordinator, nodes, the wrapped optimizer, the API and the dashboard all go
through :func:`task_for` so the loss and the figures mean the same
everywhere.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from hypergpu.config.schema import HyperGPUConfig, TrainingConfig
from hypergpu.data.samples import SampleSource
from hypergpu.errors import DataError

TaskName = Literal["classification", "lm"]


@dataclass(frozen=True)
class Evaluation:
    """A model's figures on held-out samples (``samples`` of them; for a language
    model a sample is a block of tokens and ``tokens`` counts the predictions)."""

    loss: float
    accuracy: float
    samples: int
    tokens: int
    perplexity: float | None = None
    bits_per_byte: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


class Task(ABC):
    """Loss and figures of one kind of supervised training."""

    name: TaskName
    #: what the dashboard plots the held-out curve in
    metric: str

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss of a batch."""

    def sample_losses(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Each sample's own loss, ``(B,)`` (a block's mean over its tokens for a language
        model): what an update's effect and its noise are measured on."""
        return F.cross_entropy(output, target, reduction="none")

    def correct(self, output: torch.Tensor, target: torch.Tensor) -> tuple[int, int]:
        """(right predictions, predictions) in a batch."""
        pred = output.detach().argmax(dim=-1)
        return int((pred == target).sum()), target.numel()

    def finish(self, loss: float, accuracy: float, samples: int, tokens: int) -> Evaluation:
        return Evaluation(loss, accuracy, samples, tokens)

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, source: SampleSource, *, indices: np.ndarray | None = None,
        batch_size: int = 256,
    ) -> Evaluation:
        """Figures of ``model`` on ``source`` (all of it, or the samples ``indices``)."""
        idx = np.arange(len(source)) if indices is None else np.asarray(indices)
        if idx.size == 0:
            raise DataError("cannot evaluate on an empty dataset")
        device = next(model.parameters()).device
        was_training = model.training
        model.eval()
        loss_sum, right, count = 0.0, 0, 0
        try:
            for start in range(0, idx.size, batch_size):
                x, y = source.batch(idx[start : start + batch_size])
                x, y = x.to(device), y.to(device)
                out = model(x)
                hits, n = self.correct(out, y)
                loss_sum += float(self.loss(out, y)) * n
                right += hits
                count += n
        finally:
            model.train(was_training)
        return self.finish(loss_sum / count, right / count, int(idx.size), count)

    def reached(self, result: Evaluation, training: TrainingConfig) -> bool:
        """Whether ``result`` meets the configured stop target (never, without one)."""
        if training.target_loss is not None and result.loss <= training.target_loss:
            return True
        return training.target_accuracy is not None and result.accuracy >= training.target_accuracy


class Classification(Task):
    name: TaskName = "classification"
    metric = "accuracy"

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output, target)


class LanguageModel(Task):
    """Causal language modelling; ``bytes_per_token`` turns nats per token into bits per byte."""

    name: TaskName = "lm"
    metric = "loss"

    def __init__(self, bytes_per_token: float = 1.0):
        self.bytes_per_token = bytes_per_token

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))

    def sample_losses(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        per_token = F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1), reduction="none")
        return per_token.reshape(target.shape[0], -1).mean(dim=1)

    def finish(self, loss: float, accuracy: float, samples: int, tokens: int) -> Evaluation:
        return Evaluation(
            loss, accuracy, samples, tokens,
            perplexity=math.exp(min(loss, 700.0)),
            bits_per_byte=loss / math.log(2) / self.bytes_per_token,
        )


def task_for(config: HyperGPUConfig | TaskName, *, bytes_per_token: float = 1.0) -> Task:
    """The task a config trains (or the task of that name)."""
    name = config if isinstance(config, str) else config.task
    return LanguageModel(bytes_per_token) if name == "lm" else Classification()
