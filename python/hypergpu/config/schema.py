"""The configuration model: one pydantic model, one section per concern.

Every field has a default that runs on a laptop, unknown keys are refused
(``extra="forbid"``) and ranges are declared on the fields so the JSON
schema and the error messages both state them.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from hypergpu.config.admission import AdmissionConfig
from hypergpu.config.aggregation import Aggregation, ClipFactor, KrumF, TrimFraction
from hypergpu.config.api import ApiConfig
from hypergpu.config.base import Host, Port
from hypergpu.config.base import Section as _Section
from hypergpu.config.chain import ChainConfig
from hypergpu.config.effects import EffectSettings
from hypergpu.config.network import NetworkConfig
from hypergpu.config.nodes import NodesConfig
from hypergpu.config.tracking import TrackingConfig

ModelKind = Literal["mlp", "cnn", "resnet", "gpt", "custom"]
TaskKind = Literal["auto", "classification", "lm"]
OptimizerKind = Literal["sgd", "adam", "adamw"]
Precision = Literal["fp32", "bf16"]
DatasetName = Literal["digits", "mnist", "fashion-mnist", "cifar10", "synthetic", "stdlib", "text", "tokens"]
LatePolicy = Literal["drop", "stale-weighted"]


UpdateCodec = Literal["raw", "fp16", "int8", "int4", "topk"]
# No int4 for parameters coming down: a node trains from what it decodes, so
# their error counts at once instead of being fed back like an update's.
ParamCodec = Literal["raw", "fp16", "int8"]


def _all_update_codecs() -> list[UpdateCodec]:
    return ["raw", "fp16", "int8", "int4", "topk"]


def _all_param_codecs() -> list[ParamCodec]:
    return ["raw", "fp16", "int8"]


#: Datasets read from files under ``data.path``.
FILE_DATASETS = frozenset({"mnist", "cifar10", "text", "tokens"})
#: Token corpora: the language-model task's datasets (never held as float32 arrays).
CORPUS_DATASETS = frozenset({"stdlib", "text", "tokens"})
#: Where Debian's ``dataset-fashion-mnist`` package puts its IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")



class GPTConfig(_Section):
    """Shape of ``model = "gpt"``: a decoder-only, pre-norm transformer."""

    n_layer: int = Field(4, ge=1, le=256)
    n_head: int = Field(4, ge=1, le=256)
    n_embd: int = Field(128, ge=8, le=65536, description="must be a multiple of n_head")
    block_size: int = Field(128, ge=2, le=65536, description="context length in tokens")
    dropout: float = Field(0.0, ge=0, lt=1)
    vocab_size: int | None = Field(
        None, ge=2, le=1_000_000, description="unset: the corpus's (256 for byte-level tokens)"
    )

    @model_validator(mode="after")
    def _heads_divide(self) -> GPTConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not a multiple of n_head {self.n_head}")
        return self


class TrainingConfig(_Section):
    """What is trained and how each node trains locally."""

    task: TaskKind = Field(
        "auto", description="classification or lm (causal language modelling); auto: from the dataset"
    )
    model: ModelKind = "cnn"
    gpt: GPTConfig = Field(default_factory=GPTConfig)
    custom_model: str | None = Field(
        None,
        min_length=3,
        pattern=r"^[\w.]+:[\w.]+$",
        description="'package.module:factory' returning an nn.Module; "
        "called as factory(input_shape, num_classes). Required when model = 'custom'.",
    )
    hidden_sizes: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default_factory=lambda: [128, 64], min_length=1, description="MLP hidden layer widths"
    )
    optimizer: OptimizerKind = "adam"
    precision: Precision = Field("fp32", description="the built-in nodes' forward pass: bf16 runs it under "
                                 "torch.autocast (parameters, gradients, optimizer state, updates stay float32)")
    lr: float = Field(1e-3, gt=0, le=10, description="learning rate of the local optimizer")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(0.0, ge=0, le=1)
    batch_size: int = Field(32, ge=1, le=65536)
    epochs: int = Field(
        1, ge=1, le=10_000, description="local passes over the shard per round when local_steps = 0"
    )
    rounds: int = Field(20, ge=1, le=1_000_000, description="global training rounds")
    local_steps: int = Field(
        20, ge=0, le=1_000_000, description="optimizer steps per node per round (0: use epochs)"
    )
    outer_optimizer: Literal["auto", "sgd", "nesterov"] = Field(
        "auto",
        description="how the coordinator applies the round's averaged update (the negative pseudo-gradient): "
        "nesterov is DiLoCo's outer step; sgd at outer_lr 1 is plain averaging; "
        "auto: nesterov whenever nodes take more than one local step, else sgd",
    )
    outer_lr: float | None = Field(
        None, gt=0, le=10, description="the outer optimizer's learning rate (unset: 0.7 for nesterov, 1 for sgd)"
    )
    outer_momentum: float = Field(0.9, ge=0, lt=1, description="the Nesterov outer optimizer's momentum")
    outer_momentum_warmup: bool = Field(
        False, description="the k-th outer step's momentum is min(outer_momentum, 1 - 1/k) (0, 0.5, 0.67, ...); "
        "false: the full momentum from the first step (DiLoCo's published recipe)")
    fragments: int = Field(
        1, ge=1, le=64, description="Streaming DiLoCo: the parameters cut into this many fragments at tensor "
        "boundaries; round r syncs fragment (r-1) mod fragments, so each link's peak bytes per round drop by ~this "
        "factor while every fragment is still synced once every `fragments` rounds (1: the whole model every round)",
    )
    link_fragments: int = Field(
        1, ge=1, le=64, description="per link (Streaming DiLoCo, adapt planner): the most fragments one node's "
        "update may be cut into; a node whose upload would overrun its budget sends 1/F of its progress per round, "
        "fragments in turn, F a power of two the planner picks per link up to this (a power of two itself); each "
        "parameter's outer step averages the nodes that sent it that round (1: every node sends the whole model)",
    )
    overlap: bool = Field(
        False,
        description="nodes start the next round's work as soon as an update is sent and fold the new "
        "parameters in when they arrive (a one-round-delayed outer step): compute never waits on the network",
    )
    eval_interval: int = Field(1, ge=1, le=1_000_000, description="rounds between evaluations")
    flush_denormal: bool = Field(True, description="CPU: subnormal floats (under ~1.2e-38) count as zero in the built-in "
                                 "nodes' training and the coordinator's evaluation (a model in training makes ever more, "
                                 "and a CPU computes on them many times slower; a loop of one's own sets its own)")
    seed: int = Field(0, ge=0, le=2**32 - 1)
    target_accuracy: float | None = Field(
        None, gt=0, le=1, description="stop once the test accuracy reaches this (classification)"
    )
    target_loss: float | None = Field(
        None, gt=0, le=1000, description="stop once the held-out loss falls to this (any task)"
    )

    @model_validator(mode="after")
    def _custom_needs_factory(self) -> TrainingConfig:
        if self.model == "custom" and self.custom_model is None:
            raise ValueError("custom_model is required when model = 'custom'")
        return self

    @model_validator(mode="after")
    def _one_fragment_schedule(self) -> TrainingConfig:
        if self.link_fragments & (self.link_fragments - 1):
            raise ValueError(f"link_fragments must be a power of two, got {self.link_fragments}")
        if self.link_fragments > 1 and self.fragments > 1:
            raise ValueError("link_fragments (per link) and fragments (the whole run's schedule) exclude each "
                             "other: set one of them to 1")
        return self


class DataConfig(_Section):
    """Where the training data comes from and how it is prepared."""

    dataset: DatasetName = "digits"
    path: Path | None = Field(
        None,
        description="mnist / fashion-mnist / cifar10 / text: a directory of files; "
        "tokens: a nanoGPT-style .bin of uint16 tokens (fashion-mnist defaults to Debian's package)",
    )
    tokenizer: Path | None = Field(
        None, description="a `tokenizers` vocabulary file (JSON) for text corpora; unset: bytes (256)"
    )
    shards: int | None = Field(
        None, ge=1, le=1_000_000, description="training-set shards (unset: one per node)"
    )
    eval_samples: int | None = Field(
        None, ge=1, le=100_000_000,
        description="held-out samples evaluated each time (an even stride over them); unset: all "
        "for classification, 256 blocks for language models",
    )
    source_url: str | None = Field(
        None, min_length=8,
        description="where nodes read corpus shards themselves, e.g. file:///shared/{file}; "
        "unset: the coordinator's prepared file (local runs) or each node's own copy",
    )
    synthetic_samples: int = Field(2000, ge=10, le=100_000_000)
    synthetic_features: int = Field(32, ge=1, le=1_000_000)
    synthetic_classes: int = Field(10, ge=2, le=10_000)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    cache_dir: Path | None = Field(
        Path(".hypergpu/cache"), description="prepared-shard cache; unset to disable caching"
    )

    @model_validator(mode="after")
    def _files_need_path(self) -> DataConfig:
        if self.dataset == "fashion-mnist" and self.path is None:
            self.__dict__["path"] = DEBIAN_FASHION_MNIST  # no re-validation loop
        if self.dataset in FILE_DATASETS and self.path is None:
            raise ValueError(f"path is required for dataset '{self.dataset}'")
        if self.path is not None and str(self.path).strip() in ("", "."):
            raise ValueError("path must name a directory, got an empty path")
        return self


class CoordinatorConfig(_Section):
    """The round loop, fault handling and checkpoints."""

    host: Host = "127.0.0.1"
    port: Port = 7070
    advertise: str | None = Field(
        None, pattern=r"^(\[[0-9a-fA-F:.]+\]|[\w.-]+|[0-9a-fA-F:]+)(:\d{1,5})?$",
        description="host or host:port written into the join string, for nodes on other machines "
        "(unset: the address bound; bound to 0.0.0.0, one join string per interface address)",
    )
    round_timeout_s: float = Field(30.0, gt=0, le=86_400)
    quorum: float = Field(
        0.75, gt=0, le=1, description="fraction of the round's nodes needed to aggregate"
    )
    late_updates: LatePolicy = "stale-weighted"
    staleness_decay: float = Field(
        0.5, gt=0, le=1, description="weight factor per round of staleness (stale-weighted)"
    )
    max_staleness: int = Field(
        2, ge=0, le=1000, description="most rounds an update may lag: the rounds it is late, or the model "
        "versions it missed before it began (with overlap one more); older ones are refused"
    )
    quorum_grace: float = Field(
        0.1, ge=0, le=100, description="with training.overlap: once a round's quorum has answered, the rest "
        "are waited for at most this fraction of the time the quorum took (at least 2 s; the plan's deadline "
        "still caps it), since every node's next work runs from older parameters until this round's close "
        "reaches it; later updates count in the next round, stale-weighted",
    )
    aggregation: Aggregation = "clipped-mean"  # the rules and what each holds: config/aggregation.py
    clip_factor: ClipFactor = 1.5
    trim_fraction: TrimFraction = 0.2
    krum_f: KrumF = 2
    heartbeat_interval_s: float = Field(1.0, gt=0, le=3600)
    admission: AdmissionConfig = Field(default_factory=AdmissionConfig)  # joining nodes: config/admission.py
    max_consecutive_failures: int = Field(3, ge=1, le=1000)
    checkpoint_dir: Path = Path("runs/checkpoints")
    checkpoint_every: int = Field(
        1, ge=0, le=1_000_000, description="rounds; 0 disables (written behind the round, off its critical path)")
    keep_checkpoints: int = Field(3, ge=1, le=10_000)
    metric_history: int = Field(1000, ge=1, le=10_000_000, description="round records the coordinator keeps "
                                "in memory (its status, the API's recent rounds per node)")
    deterministic: bool = Field(
        False, description="fold a round's updates in node-id order at its close, so a run killed and resumed "
        "ends with the same parameters as an uninterrupted one (same seed and participants)")
    max_nodes: int | None = Field(
        None, ge=1, le=1_000_000, description="most nodes in the run at once; a node beyond it is refused with "
        "a clear error (unset: no cap; nodes.count is only how many a local run starts)")
    event_window: int = Field(10_000, ge=1, le=10_000_000, description="events kept for watchers that resume "
                              "(/ws ?after=); older ones are dropped")


class AdaptConfig(_Section):
    """Network-aware adaptation: who takes part and how each node works, per link."""

    enabled: bool = False
    policy: Literal["conservative", "reactive", "aggressive"] = "reactive"
    strategy: Literal["all", "threshold", "top_n", "adaptive"] = "adaptive"
    quality_threshold: Literal["excellent", "good", "fair", "poor", "critical"] = "fair"
    top_n: int = Field(8, ge=1, le=4096)
    min_batch: int = Field(8, ge=1, le=65536)
    max_batch: int = Field(256, ge=1, le=65536, description="largest micro-batch a node holds at once")
    powers_of_two: bool = True
    min_local_steps: int = Field(5, ge=1, le=1_000_000)
    max_local_steps: int = Field(50, ge=1, le=1_000_000)
    codecs: list[UpdateCodec] = Field(default_factory=_all_update_codecs, min_length=1)
    max_local_epochs: float = Field(
        3.0, gt=0, le=1000,
        description="most passes over its own shard a node makes per round (more local work overfits the shard)",
    )
    param_codecs: list[ParamCodec] = Field(
        default_factory=_all_param_codecs, min_length=1,
        description="codecs for parameters sent down as deltas; ['raw'] always sends them whole",
    )
    fairness_rounds: int = Field(10, ge=1, le=1_000_000, description="K: most rounds a node may sit out in a row")
    quarantine_rounds: int = Field(3, ge=1, le=1_000_000)
    probation_rounds: int = Field(2, ge=1, le=1_000_000)
    history: int = Field(500, ge=1, le=1_000_000, description="points kept per time series")

    @model_validator(mode="after")
    def _bounds_ordered(self) -> AdaptConfig:
        if self.min_batch > self.max_batch:
            raise ValueError(f"min_batch {self.min_batch} exceeds max_batch {self.max_batch}")
        if self.min_local_steps > self.max_local_steps:
            raise ValueError(f"min_local_steps {self.min_local_steps} exceeds max_local_steps {self.max_local_steps}")
        return self


class RewardsConfig(EffectSettings):
    """Contribution scoring and on-chain settlement (the chain itself is ``chain``); the
    ``effect_*`` fields (held-out effect scoring) are config/effects.py's."""

    enabled: bool = Field(True, description="record contributions and pay rewards on the chain")
    epoch_rounds: int = Field(5, ge=1, le=1_000_000, description="rounds per scored and settled epoch")
    pool_wei: int = Field(
        10**18, gt=0, lt=2**256, description="session reward pool in wei, funded at start, split over the epochs"
    )
    policy: Literal["proportional", "performance", "tiered", "minimum"] = "performance"
    settlement: Literal["per-node", "merkle"] = Field(
        "per-node", description="credit each node per epoch, or post one Merkle root per epoch"
    )
    flush_timeout_s: float = Field(60.0, ge=0, le=3600, description="how long the end of a run waits for the chain")
    history_epochs: int = Field(
        256, ge=1, le=1_000_000, description="scored epochs (and their reward trees) kept in memory; every one "
        "is in the session's score book on disk, and the totals count them all",
    )


class HyperGPUConfig(_Section):
    """The whole configuration of a HyperGPU run."""

    training: TrainingConfig = Field(default_factory=TrainingConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    network: NetworkConfig = Field(default_factory=NetworkConfig)
    nodes: NodesConfig = Field(default_factory=NodesConfig)
    coordinator: CoordinatorConfig = Field(default_factory=CoordinatorConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    adapt: AdaptConfig = Field(default_factory=AdaptConfig)
    chain: ChainConfig = Field(default_factory=ChainConfig)
    rewards: RewardsConfig = Field(default_factory=RewardsConfig)
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)

    @property
    def task(self) -> Literal["classification", "lm"]:
        """The task the run trains: ``training.task``, or the dataset's when that is auto."""
        if self.training.task != "auto":
            return self.training.task
        return "lm" if self.data.dataset in CORPUS_DATASETS else "classification"

    @model_validator(mode="after")
    def _task_fits(self) -> HyperGPUConfig:
        lm_data = self.data.dataset in CORPUS_DATASETS
        task = self.task
        if (task == "lm") != lm_data:
            kind = "a token corpus (stdlib, text, tokens)" if task == "lm" else "a labelled dataset"
            raise ValueError(f"training.task {task!r} needs {kind}, not data.dataset {self.data.dataset!r}")
        if self.training.model == "gpt" and task != "lm":
            raise ValueError("training.model 'gpt' is a language model: use a corpus dataset")
        if task == "lm" and self.training.model in ("mlp", "cnn", "resnet"):
            raise ValueError(f"training.model {self.training.model!r} cannot model language: use 'gpt' or 'custom'")
        if self.training.target_accuracy is not None and task == "lm":
            raise ValueError("training.target_accuracy is for classification; use training.target_loss")
        return self

    @model_validator(mode="after")
    def _link_fragments_are_planned(self) -> HyperGPUConfig:
        if self.training.link_fragments > 1 and not self.adapt.enabled:
            raise ValueError("training.link_fragments: the adapt planner picks each link's fragments; "
                             "set adapt.enabled = true (or training.fragments for one schedule for all)")
        return self

    @model_validator(mode="after")
    def _node_ids_exist(self) -> HyperGPUConfig:
        count = self.nodes.count
        named = [
            ("network.node_profiles", n) for n in self.network.node_profiles
        ] + [("nodes.speed_factors", n) for n in self.nodes.speed_factors]
        named += [(f"network.events.{i}.node", e.node) for i, e in enumerate(self.network.events)]
        for where, node in named:
            if node >= count:
                raise ValueError(f"{where}: node {node} does not exist (nodes.count = {count})")
        return self

    def config_hash(self) -> str:
        """sha256 of the canonical JSON form; equal configs hash equal."""
        return _hash_json(self.model_dump(mode="json"))

    def run_hash(self) -> str:
        """sha256 of what decides the training trajectory (training + data sections).

        Checkpoints are tagged with this, so a run may resume after ports,
        timeouts or network profiles changed, or to train for more rounds,
        but not after the model or data did.
        """
        # How long to train does not change what was trained so far.
        when_to_stop = {"rounds", "target_accuracy", "target_loss", "eval_interval"}
        return _hash_json(
            self.model_dump(mode="json", include={"training", "data"}, exclude={"training": when_to_stop})
        )


def data_hash(data: DataConfig, seed: int, num_shards: int) -> str:
    """Key of prepared shards: everything that changes their content."""
    fields = data.model_dump(mode="json", exclude={"cache_dir"})
    return _hash_json({"data": fields, "seed": seed, "num_shards": num_shards})


def _hash_json(obj: object) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
