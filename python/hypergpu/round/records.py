"""What a finished round leaves behind: typed records for every consumer.

The planner, the API service, the chain recorder, Prometheus and the
benchmark harness all read the same :class:`RoundRecord`. JSON appears only
at the edge (:meth:`RoundRecord.as_dict`, used for events and the API), where
node ids become strings as JSON object keys must.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from hypergpu.model.task import Evaluation
from hypergpu.protocol import Assignment
from hypergpu.round.effects import RoundEffects


@dataclass(frozen=True)
class NodeAnswer:
    """What one node's accepted update for the round looked like."""

    node_id: int
    round: int  # the round the update was for (earlier than the record's when it came late)
    samples: int
    loss: float | None
    compute_s: float
    wall_s: float
    # params sent -> update in: compute, waiting and both transfers (None: never sent this round)
    turnaround_s: float | None
    update_bytes: int
    params_bytes: int | None
    codec: str
    weight: float
    # agreement with the round's mean (None until the mean exists, or when undefined)
    cosine: float | None = None
    # what the node waited (for work, or for the parameters its update builds on) since its last update
    idle_s: float = 0.0
    norm: float | None = None  # the update's L2 norm, as sent (before any clipping)
    clipped: bool = False  # the aggregation held its distance from the round's median to clip_norm
    dropped: bool = False  # the aggregation left it out (Krum)
    # the node's own measure of its previous upload: send -> ack of receipt (seconds, bytes)
    upload_s: float | None = None
    upload_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["node_id"]
        return d


@dataclass(frozen=True)
class RoundRecord:
    """One closed round: who was asked, who answered, what was applied."""

    round: int
    applied: bool
    participants: list[int]
    reported: list[int]
    missing: list[int]
    excluded: dict[int, str]
    train_loss: float | None
    samples: int  # trained this round: its current and late updates, less any the rule dropped (Krum)
    duration_s: float
    model_version: int
    assignments: dict[int, Assignment] = field(default_factory=dict)
    answers: dict[int, NodeAnswer] = field(default_factory=dict)
    # stale updates for earlier rounds accepted during this one (stale-weighted)
    late: dict[int, NodeAnswer] = field(default_factory=dict)
    test_loss: float | None = None
    test_accuracy: float | None = None  # a language model's: next-token accuracy
    test_perplexity: float | None = None  # language models only
    test_bits_per_byte: float | None = None  # language models only
    # how the updates became one (coordinator.aggregation) and what that did to them
    aggregation: str = "mean"
    clip_norm: float | None = None  # clipped-mean: the bound (clip_factor x the median distance from the median)
    clipped: int = 0  # updates whose distance from the median was scaled down to clip_norm
    dropped: int = 0  # updates left out (Krum)
    trimmed: int = 0  # values cut from each end of every coordinate (trimmed-mean, median)
    not_applied: str | None = None  # why a round with a quorum was not applied (its aggregate was refused)
    closed_at: float | None = None  # when the round closed (Unix time): its model existed from then on
    eval_s: float | None = None  # how long its held-out evaluation took
    # each scored update's effect on a held-out loss, filled after the round closed (None: not scored)
    effects: RoundEffects | None = field(default=None, compare=False)

    def evaluated(self, result: Evaluation, eval_s: float | None = None) -> RoundRecord:
        """This record with the held-out figures of the model it applied (``eval_s``: what they took)."""
        return replace(self, test_loss=result.loss, test_accuracy=result.accuracy, eval_s=eval_s,
                       test_perplexity=result.perplexity, test_bits_per_byte=result.bits_per_byte)

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (events, API, dashboard): node ids as string keys."""
        return {
            "round": self.round,
            "applied": self.applied,
            "participants": list(self.participants),
            "reported": list(self.reported),
            "missing": list(self.missing),
            "excluded": {str(k): v for k, v in self.excluded.items()},
            "train_loss": self.train_loss,
            "samples": self.samples,
            "duration_s": self.duration_s,
            "model_version": self.model_version,
            "assignments": {str(k): a.as_meta() for k, a in self.assignments.items()},
            "nodes": {str(k): self._answer(k, a) for k, a in self.answers.items()},
            "late": {str(k): a.as_dict() for k, a in self.late.items()},
            "aggregation": self.aggregation,
            "clip_norm": self.clip_norm,
            "clipped": self.clipped,
            "dropped": self.dropped,
            "trimmed": self.trimmed,
            **({"not_applied": self.not_applied} if self.not_applied is not None else {}),
            **({"closed_at": self.closed_at} if self.closed_at is not None else {}),
            **({"eval_s": self.eval_s} if self.eval_s is not None else {}),
            **({"effects": self.effects.as_dict()} if self.effects is not None else {}),
            **({"test_loss": self.test_loss, "test_accuracy": self.test_accuracy}
               if self.test_loss is not None or self.test_accuracy is not None else {}),
            **({"test_perplexity": self.test_perplexity, "test_bits_per_byte": self.test_bits_per_byte}
               if self.test_perplexity is not None else {}),
        }

    def _answer(self, node_id: int, answer: NodeAnswer) -> dict[str, Any]:
        """A node's answer with its effect once measured (``effect``, ``effect_se``,
        ``effect_loss_after``, ``harmful``, ``effect_quality``)."""
        d = answer.as_dict()
        effect = self.effects.get(node_id) if self.effects is not None else None
        if effect is not None:
            d.update(effect=effect.effect, effect_se=effect.se, effect_loss_after=effect.loss_after,
                     harmful=effect.harmful, effect_quality=effect.quality)
        return d
