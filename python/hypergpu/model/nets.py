"""The built-in networks and :func:`build_model`.

Any ``torch.nn.Module`` works with the rest of HyperGPU; these are the
ones a config can name: ``mlp``, ``cnn`` and ``resnet`` classify samples
of ``input_shape`` into ``num_classes``; ``gpt`` (:mod:`hypergpu.model.gpt`)
is a language model, built with ``input_shape=(block_size,)`` and
``num_classes`` = the vocabulary size. ``model = "custom"`` imports a
factory ``package.module:name`` called as ``factory(input_shape, num_classes)``.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

import torch
from torch import nn

from hypergpu.config.schema import GPTConfig, TrainingConfig
from hypergpu.errors import ConfigError
from hypergpu.model.gpt import GPT


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


class BasicBlock(nn.Module):
    """Two batch-normalised 3x3 convolutions added to a shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            # the sum needs both sides in the same shape: project with a strided 1x1
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small CIFAR-style ResNet (ResNet-8 by default) for any (C, H, W) input with H, W >= 8.

    A 16-channel stem, then stages of 16, 32 and 64 channels (the last two
    halve the resolution), global average pooling and a linear head.
    """

    def __init__(self, input_shape: Sequence[int], num_classes: int, blocks_per_stage: int = 1):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(int(input_shape[0]), 16, 3, padding=1, bias=False),
            nn.BatchNorm2d(16),
            nn.ReLU(),
        )
        layers: list[nn.Module] = []
        channels = 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(channels, width, stride if i == 0 else 1))
                channels = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def build_model(
    training: TrainingConfig, input_shape: Sequence[int], num_classes: int
) -> nn.Module:
    """The model ``training.model`` names, initialised from ``training.seed``.

    For ``gpt``, ``input_shape`` is ``(block_size,)`` and ``num_classes`` the vocabulary size.
    """
    shape = tuple(int(d) for d in input_shape)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(training.seed)
        if training.model == "mlp":
            return MLP(shape, num_classes, training.hidden_sizes)
        if training.model == "cnn":
            _check_images("cnn", shape, min_side=2)
            return CNN(shape, num_classes)
        if training.model == "resnet":
            _check_images("resnet", shape, min_side=8)
            return ResNet(shape, num_classes)
        if training.model == "gpt":
            _check_gpt(training.gpt, shape, num_classes)
            return GPT(training.gpt, vocab_size=num_classes)
        return _custom(training.custom_model or "", shape, num_classes)


def _check_images(kind: str, shape: tuple[int, ...], min_side: int) -> None:
    if len(shape) != 3:
        raise ConfigError(
            f"training.model: '{kind}' needs image samples (C, H, W), got shape {shape}; use 'mlp'"
        )
    if min(shape[1:]) < min_side:
        raise ConfigError(
            f"training.model: '{kind}' needs images of at least {min_side}x{min_side}, got {shape}"
        )


def _check_gpt(cfg: GPTConfig, shape: tuple[int, ...], vocab_size: int) -> None:
    if cfg.vocab_size is not None and cfg.vocab_size != vocab_size:
        raise ConfigError(
            f"training.gpt.vocab_size is {cfg.vocab_size} but the tokens need {vocab_size}; "
            "leave it unset to take the corpus's"
        )
    if shape != (cfg.block_size,):
        raise ConfigError(
            f"training.model: 'gpt' takes blocks of training.gpt.block_size = {cfg.block_size} "
            f"tokens, got sample shape {shape}"
        )


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
