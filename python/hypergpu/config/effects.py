"""How an update's verified effect is measured (``rewards.effect_*``).

``RewardsConfig`` takes these fields from :class:`EffectSettings` so their
descriptions — what a scoring costs and what counts as noise — are written
once, next to each other. ``hypergpu.coordinator.effects`` measures the effect
and ``hypergpu.rewards.effect`` judges it.
"""

from __future__ import annotations

from pydantic import Field

from hypergpu.config.base import Section


class EffectSettings(Section):
    """The held-out effect scoring of updates (a base of ``RewardsConfig``)."""

    effect_batch: int = Field(
        256, ge=0, le=1_000_000,
        description="held-out samples (blocks, for a language model) each round's updates are scored on, drawn "
        "afresh each round from the samples no node trains on; 0 turns effect scoring off (quality is then neutral). "
        "A round costs (1 + scored updates) forward passes over them, off the round's path",
    )
    effect_nodes: int | None = Field(
        None, ge=1, le=1_000_000,
        description="score at most this many of a round's updates, drawn at random each round (None: all); "
        "for large models. An update not drawn is neither rewarded nor punished for its effect, so a harmful "
        "node loses on average this share of its harmful rounds' credit",
    )
    effect_noise_z: float = Field(
        2.0, ge=0, le=100,
        description="an update is harmful when it makes the held-out loss worse by more than this many standard "
        "errors of the per-sample loss difference plus effect_margin; only an improvement beyond that much "
        "noise raises quality",
    )
    effect_margin: float = Field(
        0.005, ge=0, le=1e6,
        description="an allowance added to the noise, as a fraction of the held-out loss before the update "
        "(0.005: half a percent): a tiny update moves every sample's loss alike, so its effect can be many "
        "standard errors from zero and still be nothing",
    )
    effect_scale: float = Field(
        0.05, gt=0, le=1e6,
        description="an improvement of this much loss beyond noise raises the round's quality from 1.0 to ~1.38 "
        "(1 + 0.5 tanh(gain / scale), at most 1.5)",
    )
