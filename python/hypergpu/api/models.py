"""Request and response bodies of the control plane (they make the OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hypergpu.config.schema import HyperGPUConfig

SessionState = Literal["idle", "starting", "running", "paused", "stopping", "finished", "stopped", "failed"]
#: What a run trains; it decides the held-out figures: accuracy, or loss, perplexity and bits per byte.
TaskName = Literal["classification", "lm"]
PresetName = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$", description="letters, digits, '_' and '-' (1-64)")


class Health(BaseModel):
    status: Literal["ok", "starting"]
    version: str


class Status(BaseModel):
    state: SessionState
    session: int | None
    label: str | None
    task: TaskName
    round: int
    rounds: int
    epoch: int = Field(description="passes over the whole training set, across all nodes")
    progress: float = Field(ge=0, le=1)
    eta_s: float | None
    elapsed_s: float
    train_loss: float | None
    test_loss: float | None
    test_accuracy: float | None = Field(description="a language model's: next-token accuracy")
    test_perplexity: float | None = Field(description="language models only")
    test_bits_per_byte: float | None = Field(description="language models only")
    samples: int
    nodes_alive: int
    nodes_total: int
    model_version: int | None
    paused: bool
    chain_enabled: bool


class Node(BaseModel):
    node_id: int
    name: str
    device: str
    speed_factor: float
    status: Literal["active", "suspect", "dead", "left"]
    consecutive_failures: int
    rounds_ok: int
    rounds_missed: int
    updates_accepted: int
    refusals: dict[str, int]
    samples: int
    compute_s: float
    utilisation: float | None = Field(
        description="compute utilisation: time training / wall time its updates covered (the rest waited on the network)")
    bytes_sent: int
    bytes_received: int
    last_loss: float | None
    address: str | None = Field(None, description="the node's key: the address its signed hello proved")
    payout: str | None = Field(None, description="where its rewards go (the address its hello signed)")
    success_rate: float | None = Field(description="rounds answered / rounds finished")
    rtt_ms: float | None = Field(description="smoothed round-trip time of the node's QUIC link")
    lost_packets: int | None
    connected: bool
    excluded: str | None = Field(description="why an operator excluded it, if they did")
    assignment: dict[str, Any] | None = Field(description="batch size, local steps, codec of its last round")
    quality: float | None = Field(description="0..1: success rate discounted by link latency")
    profile: str | None = Field(description="configured link profile")
    effects_scored: int = Field(0, description="its updates scored by their effect on the held-out loss")
    effects_harmful: int = Field(0, description="of those, updates that made the loss worse beyond noise")
    effect_mean: float | None = Field(
        None, description="mean effect of its scored updates: held-out loss before - after (> 0 helped)")
    effect_last: float | None = Field(None, description="its latest scored update's effect (None: broke the model)")
    effect_last_round: int | None = Field(None, description="the round of that update")
    effect_last_harmful: bool | None = Field(None, description="whether that update was judged harmful")


class LatencyPoint(BaseModel):
    round: int
    rtt_ms: float


class NodeDetail(Node):
    latency_history: list[LatencyPoint]
    decisions: list[dict[str, Any]]
    rounds: list[dict[str, Any]] = Field(description="the node's figures in each recent round")


class MetricPoint(BaseModel):
    round: int
    time: float
    applied: bool | None
    train_loss: float | None
    test_loss: float | None
    test_accuracy: float | None = Field(description="a language model's: next-token accuracy")
    test_perplexity: float | None = Field(description="language models only")
    test_bits_per_byte: float | None = Field(description="language models only")
    samples: int
    duration_s: float | None
    participants: int
    reported: int


class Metrics(BaseModel):
    session: int | None
    label: str | None
    task: TaskName  # the units of the held-out figures: accuracy, or a language model's loss
    points: list[MetricPoint]


class Session(BaseModel):
    id: int
    label: str
    task: TaskName
    state: SessionState
    started_at: float
    finished_at: float | None
    rounds: int
    nodes: int
    dataset: str
    model: str
    error: str | None
    summary: dict[str, Any] | None


class StartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    config: HyperGPUConfig | None = Field(None, description="the run's configuration; default: the held one")
    resume: bool = Field(False, description="continue from the newest valid checkpoint (and send queued chain writes)")


class ExcludeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field("excluded by operator", min_length=1, max_length=200)


class Action(BaseModel):
    ok: bool = True
    state: SessionState
    session: int | None
    message: str


class Preset(BaseModel):
    name: str
    saved_at: float


class ChainView(BaseModel):
    """Whatever the chain recorder reports; ``enabled: false`` (with the reason) when there is none."""

    model_config = ConfigDict(extra="allow")

    enabled: bool
    reason: str | None = None


class SettableFields(BaseModel):
    """What a configuration sent to the API may change: each a dotted path (a field, or a section
    and every field in it) but those in ``startup_only``. The rest stays as the server started."""

    settable: list[str]
    startup_only: list[str]
