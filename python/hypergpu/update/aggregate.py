"""Aggregate model updates: weighted mean, incremental accumulation, robust rules.

Every function takes a list of updates, each a NumPy array or a CPU torch
tensor of float32, float16 or bfloat16, all of one shape and dtype and
C-contiguous. They are lent to the Rust core without copying, the work runs
in parallel with the interpreter released, and results come back as
float32 NumPy arrays of the updates' shape.

Updates holding NaN or infinity raise :class:`~hypergpu.errors.NonFiniteError`
(``update_index`` names the first of them); with ``on_nonfinite="skip"``
they are left out instead and listed in the result's ``skipped``.
"""

from __future__ import annotations

import operator
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from hypergpu import _core
from hypergpu._buffers import as_array, as_arrays
from hypergpu.errors import InvalidArgumentError, WeightsError

__all__ = [
    "AggregateResult",
    "RobustResult",
    "KrumResult",
    "Accumulator",
    "weighted_mean",
    "median",
    "trimmed_mean",
    "krum",
    "cosines",
]

OnNonFinite = Literal["raise", "skip"]


@dataclass(frozen=True)
class AggregateResult:
    """What :func:`weighted_mean` computed."""

    mean: np.ndarray
    """The weighted mean, float32, in the updates' shape."""
    norms: np.ndarray
    """Each update's L2 norm before clipping (float64; NaN where non-finite)."""
    skipped: tuple[int, ...]
    """Updates left out for holding non-finite values."""
    clipped: tuple[int, ...]
    """Updates scaled down to ``clip_norm``."""
    weights: np.ndarray
    """The normalised weight each update received (0 where skipped)."""


@dataclass(frozen=True)
class RobustResult:
    """What :func:`median` or :func:`trimmed_mean` computed."""

    value: np.ndarray
    skipped: tuple[int, ...]


@dataclass(frozen=True)
class KrumResult:
    """What :func:`krum` computed."""

    value: np.ndarray
    """The selected update (``m == 1``) or the mean of the ``m`` selected."""
    selected: tuple[int, ...]
    """Indices of the selected updates, best score first."""
    scores: np.ndarray
    """Each update's Krum score (lower is more central; NaN where skipped)."""
    skipped: tuple[int, ...]


def _skip(on_nonfinite: str) -> bool:
    if on_nonfinite not in ("raise", "skip"):
        raise InvalidArgumentError(f'on_nonfinite must be "raise" or "skip", got {on_nonfinite!r}')
    return on_nonfinite == "skip"


def _updates(updates: Iterable[Any]) -> list[np.ndarray]:
    return as_arrays(list(updates))


def _number(name: str, value: Any, error: type[Exception] = InvalidArgumentError) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number, got {value!r}") from None


def _count(name: str, value: Any) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be an integer, got {value!r}") from None
    if not 0 <= n <= sys.maxsize:
        raise InvalidArgumentError(f"{name} must be between 0 and {sys.maxsize}, got {n}")
    return n


def _weights(weights: Sequence[float] | np.ndarray | None) -> list[float] | None:
    if weights is None:
        return None
    try:
        w = np.asarray(weights, dtype=np.float64)
    except (TypeError, ValueError):
        raise WeightsError(f"weights must be a sequence of numbers, got {weights!r}") from None
    if w.ndim != 1:
        raise WeightsError(f"weights must be one-dimensional, got shape {w.shape}")
    return w.tolist()


def weighted_mean(
    updates: Iterable[Any],
    weights: Sequence[float] | np.ndarray | None = None,
    clip_norm: float | None = None,
    on_nonfinite: OnNonFinite = "raise",
) -> AggregateResult:
    """Weighted mean of ``updates`` with each update's L2 norm, in one pass.

    ``weights`` (default: all equal) must be finite, non-negative and not all
    zero; they are normalised to sum to one over the updates kept. With
    ``clip_norm``, an update whose norm exceeds it is scaled down to that
    norm before averaging.
    """
    skip = _skip(on_nonfinite)
    clip = None if clip_norm is None else _number("clip_norm", clip_norm)
    mean, norms, skipped, clipped, applied = _core.weighted_mean(
        _updates(updates), _weights(weights), clip, skip
    )
    return AggregateResult(mean, norms, tuple(skipped), tuple(clipped), applied)


def median(updates: Iterable[Any], on_nonfinite: OnNonFinite = "raise") -> RobustResult:
    """Coordinate-wise median (mean of the middle two for an even count)."""
    value, skipped = _core.coordinate_median(_updates(updates), _skip(on_nonfinite))
    return RobustResult(value, tuple(skipped))


def trimmed_mean(
    updates: Iterable[Any], trim: float = 0.1, on_nonfinite: OnNonFinite = "raise"
) -> RobustResult:
    """Coordinate-wise mean after dropping the ``floor(trim * n)`` largest and
    smallest values at each coordinate; ``trim`` is in ``[0, 0.5)``."""
    skip = _skip(on_nonfinite)
    value, skipped = _core.trimmed_mean(_updates(updates), _number("trim", trim), skip)
    return RobustResult(value, tuple(skipped))


def krum(
    updates: Iterable[Any], f: int, m: int = 1, on_nonfinite: OnNonFinite = "raise"
) -> KrumResult:
    """Krum: select the update closest to its ``n - f - 2`` nearest neighbours,
    tolerating ``f`` arbitrary updates (needs ``n >= 2f + 3``). With ``m > 1``
    (multi-Krum) the ``m`` best-scored updates are averaged."""
    skip = _skip(on_nonfinite)
    f, m = _count("f", f), _count("m", m)
    value, selected, scores, skipped = _core.krum(_updates(updates), f, m, skip)
    return KrumResult(value, tuple(selected), scores, tuple(skipped))


def cosines(updates: Iterable[Any], reference: Any) -> np.ndarray:
    """Each update's cosine similarity with ``reference`` (e.g. the round's
    mean), float64 in [-1, 1]; NaN for an all-zero or non-finite update.
    One read of every update, in parallel, without copies."""
    return _core.cosines(_updates(updates), as_array(reference))


class Accumulator:
    """Folds updates into a running weighted mean as they arrive.

    Gives the same result as :func:`weighted_mean` over the same updates,
    weights and clipping. :meth:`add` is atomic: an update it rejects (wrong
    shape or dtype, non-finite values, bad weight) leaves the accumulator as
    it was. The dtype is fixed by the first update accepted. Safe to share
    between threads.
    """

    def __init__(self, shape: int | Sequence[int]):
        dims = (shape,) if isinstance(shape, int) else tuple(shape)
        self._core = _core.UpdateAccumulator([_count("shape entry", d) for d in dims])

    def add(self, update: Any, weight: float = 1.0, clip_norm: float | None = None) -> float:
        """Fold in ``update``; returns its L2 norm before clipping."""
        w = _number("weight", weight, WeightsError)
        clip = None if clip_norm is None else _number("clip_norm", clip_norm)
        return self._core.add(as_array(update, self._core.count), w, clip)

    def finalize(self) -> np.ndarray:
        """The weighted mean so far (float32); more updates may follow."""
        return self._core.finalize()

    def reset(self) -> None:
        """Forget every update."""
        self._core.reset()

    @property
    def count(self) -> int:
        return self._core.count

    @property
    def total_weight(self) -> float:
        return self._core.total_weight

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._core.shape)

    @property
    def dtype(self) -> str | None:
        """``"f32"``, ``"f16"`` or ``"bf16"`` once an update was accepted."""
        return self._core.dtype

    def __repr__(self) -> str:
        return f"Accumulator(shape={self.shape}, count={self.count}, total_weight={self.total_weight})"
