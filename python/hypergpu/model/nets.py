"""The built-in networks and :func:`build_model`.

Any ``torch.nn.Module`` works with the rest of HyperGPU; these two are the
defaults a config can name. ``model = "custom"`` imports a factory
``package.module:name`` called as ``factory(input_shape, num_classes)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import nn

from hypergpu.config.schema import TrainingConfig
from hypergpu.errors import ConfigError


class MLP(nn.Module):
    """Flatten, then ReLU hidden layers, then logits."""

    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128, 64)):
        super().__init__()
        width = 1
        for d in input_shape:
            width *= int(d)
        layers: list[nn.Module] = [nn.Flatten()]
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """Three 3x3 convolutions (batch-normalised) and two dense layers, for any (C, H, W) input.

    Adaptive pooling to 4x4 makes the head independent of the image size,
    so one definition serves 8x8 digits, 28x28 MNIST and 32x32 CIFAR-10.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int):
        super().__init__()
        channels = int(input_shape[0])
        self.features = nn.Sequential(
            nn.Conv2d(channels, 32, 3, padding=1),
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(64, 64, 3, padding=1),
            nn.BatchNorm2d(64),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
        )
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 16, 128),
            nn.ReLU(),
            nn.Dropout(0.25),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build_model(
    training: TrainingConfig, input_shape: Sequence[int], num_classes: int
) -> nn.Module:
    """The model ``training.model`` names, initialised from ``training.seed``."""
    shape = tuple(int(d) for d in input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        if training.model == "mlp":
            return MLP(shape, num_classes, training.hidden_sizes)
        if training.model == "cnn":
            if len(shape) != 3:
                raise ConfigError(
                    f"training.model: 'cnn' needs image samples (C, H, W), got shape {shape}; use 'mlp'"
                )
            if min(shape[1:]) < 2:
                raise ConfigError(f"training.model: 'cnn' needs images of at least 2x2, got {shape}")
            return CNN(shape, num_classes)
        return _custom(training.custom_model or "", shape, num_classes)


def _custom(spec: str, shape: tuple[int, ...], num_classes: int) -> nn.Module:
    module_name, _, attr = spec.partition(":")
    try:
        factory = importlib.import_module(module_name)
        for part in attr.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"training.custom_model: cannot import {spec!r}: {exc}") from None
    model = factory(shape, num_classes)  # type: ignore[operator]
    if not isinstance(model, nn.Module):
        raise ConfigError(
            f"training.custom_model: {spec!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
