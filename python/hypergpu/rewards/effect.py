"""Judging an update by its verified effect on a held-out loss.

As validators in incentivised training do (Templar's gradient scoring: the
loss before and after a peer's update is applied alone), each scored update is
applied alone to the round's base parameters and both models are evaluated on
the same held-out batch, one that no node trains on. Per sample ``j``,
``d_j = loss_before_j - loss_after_j``; then

* ``effect = mean(d)`` (> 0: the update helped) and ``se = std(d) / sqrt(n)``,
  the standard error of that mean — the noise of the batch the update is
  judged against (paired, so what the batch itself contributes cancels);
* ``noise = noise_z * se + margin * mean(loss_before)``: the batch's noise
  plus a relative allowance. The paired standard error alone is not enough:
  a tiny update moves every sample's loss the same tiny way (curvature), so
  its effect can be many standard errors from zero while changing nothing
  that matters — 1e-7 per coordinate of noise moved a badly trained model's
  loss of 33.7 by -4e-5, 18 standard errors (measured in the end-to-end test);
* **harmful** when ``effect < -noise``, or when the loss after is not finite:
  the loss got worse beyond noise, and the update earns nothing that round
  (quality 0);
* otherwise ``quality = 1 + 0.5 * tanh(max(0, effect - noise) / scale)``:
  1.0 for an update whose effect is within noise (neither rewarded nor
  punished), rising towards 1.5 for an improvement beyond it.

:mod:`hypergpu.rewards.tally` turns the rounds' qualities into an epoch's
quality multiplier, and leaves a harmful round's work out of the credit; a
node with a harmful round earns for the epoch only if its effects summed over
the epoch are positive beyond their noise (``noise``, kept on each effect,
combined in quadrature), so help that only undoes its own harm earns nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from hypergpu.errors import InvalidArgumentError
from hypergpu.round.effects import NodeEffect

#: A round's quality when its update was judged harmful.
HARMFUL_QUALITY = 0.0
#: The most an improvement beyond noise raises a round's quality to.
EFFECT_QUALITY_MAX = 1.5


@dataclass(frozen=True)
class EffectPolicy:
    """What counts as noise and how much an improvement is worth (``rewards.effect_*``)."""

    noise_z: float = 2.0  # standard errors of the per-sample difference
    margin: float = 0.005  # a fraction of the loss before
    scale: float = 0.05  # loss units

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_z) and self.noise_z >= 0 and math.isfinite(self.margin)
                and self.margin >= 0 and math.isfinite(self.scale) and self.scale > 0):
            raise InvalidArgumentError(
                f"effect policy needs noise_z >= 0, margin >= 0 and scale > 0, all finite; got {self}")


def judge(before: np.ndarray, after: np.ndarray, policy: EffectPolicy | None = None) -> NodeEffect:
    """The effect of one update from the per-sample held-out losses before and after it."""
    policy = policy or EffectPolicy()
    before = np.asarray(before, dtype=np.float64).reshape(-1)
    after = np.asarray(after, dtype=np.float64).reshape(-1)
    if before.shape != after.shape or before.size == 0:
        raise InvalidArgumentError(
            f"per-sample losses before ({before.size}) and after ({after.size}) must be the same, non-empty batch")
    if not np.isfinite(before).all():
        raise InvalidArgumentError("the base parameters' held-out losses are not finite: nothing to judge against")
    if not np.isfinite(after).all():
        return NodeEffect(effect=None, se=None, loss_after=None, harmful=True, quality=HARMFUL_QUALITY)
    diff = before - after
    effect = float(diff.mean())
    se = float(diff.std(ddof=1) / math.sqrt(diff.size)) if diff.size > 1 else 0.0
    noise = policy.noise_z * se + policy.margin * abs(float(before.mean()))
    harmful = effect < -noise
    quality = HARMFUL_QUALITY if harmful else 1.0 + 0.5 * math.tanh(max(0.0, effect - noise) / policy.scale)
    return NodeEffect(effect=effect, se=se, loss_after=float(after.mean()), harmful=harmful,
                      quality=min(quality, EFFECT_QUALITY_MAX), noise=noise)
