"""How an update's verified effect is measured (``rewards.effect_*``).

``RewardsConfig`` takes these fields from :class:`EffectSettings` so their
descriptions — what a scoring costs and what counts as noise — are written
once, next to each other. ``hypergpu.coordinator.effects`` measures the effect
and ``hypergpu.rewards.effect`` judges it.
"""

from __future__ import annotations

from pydantic import Field

from hypergpu.config.base import Section

#: ``effect_batch`` unset: samples of a labelled dataset, blocks of a token corpus. 32 blocks of a
#: 842k-parameter GPT (block 128) took 0.42 s a forward pass on one busy core; 256 took 2.9 s.
DEFAULT_EFFECT_SAMPLES, DEFAULT_EFFECT_BLOCKS = 256, 32


class EffectSettings(Section):
    """The held-out effect scoring of updates (a base of ``RewardsConfig``)."""

    effect_batch: int | None = Field(
        None, ge=0, le=1_000_000,
        description="held-out samples (blocks, for a language model) each round's updates are scored on, drawn "
        "afresh each round from the samples no node trains on; None: 256 samples, or 32 blocks for a language "
        "model (a block's loss already averages its tokens); 0 turns effect scoring off (quality is then neutral). "
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
