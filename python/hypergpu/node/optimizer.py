"""Bring your own model and training loop: a wrapped optimizer joins the rounds.

::

    opt = hypergpu.DistributedOptimizer(torch.optim.Adam(model.parameters()), model,
                                        join=join, token=token, name="gpu-7")
    while not opt.finished:
        for x, y in opt.dataloader():          # the coordinator's shard (or your own data)
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step(loss=loss)                # a round boundary every `local_steps` steps
            opt.zero_grad()
            if opt.finished:
                break
    opt.close()

The wrapper keeps the node's link on a background thread running its own asyncio loop, so
the user's loop stays synchronous. Construction connects, says hello, checks that the model's
flat layout matches the coordinator's (:class:`~hypergpu.errors.ShapeMismatchError` otherwise)
and waits for the first round's parameters (named by digest if the model holds them already),
which it loads into the model. Each :meth:`DistributedOptimizer.step` runs the wrapped
optimizer's step; after the round's ``local_steps`` of them it sends ``params_after -
params_received`` (encoded with the codec the round assigned) and blocks until the next
round's parameters arrive and are loaded: ``step()`` is where the round boundary happens.

Data: the loop brings its own (the hello says ``follows_work=False``, so the
coordinator names no samples for it). For an array dataset the welcome still
carries this node's shard (:meth:`DistributedOptimizer.dataloader`); for a
token corpus, batch it yourself (``examples/gpt_custom_loop.py``).

Samples: pass ``step(batch_size=n)``; otherwise the wrapper counts the
leading dimension of the first input of every forward pass the model ran
in training mode with gradients enabled since the previous step (gradient
accumulation is counted whole). The coordinator weights updates by it, up
to the work it assigned (steps x batch x accumulation); a claim beyond is
refused. For a language model a sample is one block of ``block_size``
tokens: an input of shape (B, T) counts B samples.

Loss: ``step(loss=...)`` (or the closure's result) is reported as the round's
sample-weighted mean: a tensor or array of any shape (its mean) on any device,
or a number; non-finite values are left out; tensors are read only at the
round boundary, so reporting never makes a CUDA loop wait for its device.

CUDA: the flat parameters cross to the host only at a round boundary, in
one copy each way through a pinned host buffer (:class:`HostStaging`).
:meth:`DistributedOptimizer.from_env` joins as ``$HYPERGPU_JOIN`` and
``$HYPERGPU_TOKEN`` say (the name from ``$HYPERGPU_NODE_NAME``).

Identity: the wrapper signs its hello with the node's key (``key``: a
:class:`~hypergpu.identity.NodeKey` or a key file, created on first use;
default :func:`~hypergpu.identity.default_key_file`, i.e. ``$HYPERGPU_KEY_FILE``
or ``~/.config/hypergpu/node.key``); rewards go to its address, or to
``payout`` when given.

Local steps per round: the wrapper's ``local_steps`` when given, else the
round's assignment, else (assignment of 0) ``epochs`` passes over the
shard at the assigned batch size. The wrapped optimizer keeps its state.

On ``bye`` or ``stop``, :attr:`~DistributedOptimizer.finished` turns True; the
model keeps its last local parameters and later ``step()`` calls are plain.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hypergpu.config.schema import TrainingConfig
from hypergpu.data.shards import Shard
from hypergpu.errors import DataError, InvalidArgumentError, NonFiniteError
from hypergpu.identity import NodeKey
from hypergpu.model.layout import ParamLayout
from hypergpu.model.staging import HostStaging, model_device
from hypergpu.node.background import BackgroundLink
from hypergpu.node.losses import loss_value, mean_loss
from hypergpu.node.protocol import NodeReport, hello
from hypergpu.node.update_encoder import UpdateEncoder
from hypergpu.node.session import Backoff, Session
from hypergpu.protocol import Assignment, UpdateMeta
from hypergpu.transport import LinkShape, TransportConfig

__all__ = ["DistributedOptimizer"]


class DistributedOptimizer:
    """Wraps a torch optimizer so that ``step()`` takes part in the coordinator's rounds."""

    # The current round's counts (see _start_round).
    _round_started: float
    _round_steps: int
    _round_samples: int
    _round_losses: list[tuple[torch.Tensor | float, int]]  # (loss, samples) of each step
    _forward_samples: int  # samples the forward passes saw since the last step

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        model: nn.Module,
        *,
        join: str,
        token: str,
        name: str | None = None,
        index: int | None = None,
        shape: LinkShape | None = None,
        local_steps: int | None = None,
        backoff: Backoff | None = None,
        heartbeat_s: float = 1.0,
        connect_timeout_s: float = 60.0,
        round_timeout_s: float = 300.0,
        idle_timeout_s: float = 600.0,
        seed: int | None = None,
        key: NodeKey | str | os.PathLike[str] | None = None,
        payout: str | None = None,
        transport: TransportConfig | None = None,
    ):
        if local_steps is not None and local_steps < 1:
            raise InvalidArgumentError(f"local_steps must be >= 1, got {local_steps}")
        for label, value in (("connect_timeout_s", connect_timeout_s), ("round_timeout_s", round_timeout_s)):
            if not value > 0:
                raise InvalidArgumentError(f"{label} must be > 0, got {value}")
        self.optimizer = optimizer
        self.model = model
        self.layout = ParamLayout.from_model(model)
        self.name = name or f"{os.uname().nodename}-{os.getpid()}"
        self.local_steps_override = local_steps
        self.round_timeout_s = round_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.seed = seed
        self.report = NodeReport(node_id=None)
        device = model_device(model, self.layout)
        self._staging = HostStaging(self.layout, device)
        # The user's loop trains on its own data: the coordinator must not name samples for it.
        me = hello(name=self.name, index=index, device=device.type, follows_work=False, payout=payout)
        session = Session(join, token=token, name=self.name, hello=me, key=NodeKey.of(key, self.name), shape=shape,
                          backoff=backoff, heartbeat_s=heartbeat_s, report=self.report, transport=transport)
        self._link = BackgroundLink(session, self.layout, idle_timeout_s=idle_timeout_s, seed=seed or 0,
                                    initial=lambda _welcome: self.layout.flatten(model))  # round 1 may name it by digest
        self._encoder = UpdateEncoder()
        self._closed = False
        self.round = 0
        self._assignment: Assignment | None = None
        self._version: int | None = None
        self._received: np.ndarray | None = None
        self._start_round(0.0)
        self._hook = model.register_forward_pre_hook(self._count_forward)
        try:
            self._welcome = self._link.start(connect_timeout_s)
            self._load_next_round()
        except BaseException:
            self.close()
            raise

    # --- what the caller sees -------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the coordinator said the training is over (``bye`` or ``stop``)."""
        return self._link.finished

    @property
    def node_id(self) -> int | None:
        return self.report.node_id

    @property
    def training(self) -> TrainingConfig:
        """The coordinator's training settings (from the welcome)."""
        return self._welcome.training

    @property
    def shard(self) -> Shard:
        """The data the coordinator assigned this node now (several shards merged)."""
        shards = self._link.shards
        if not shards:
            if self._welcome.data_source is not None:
                raise DataError(
                    f"{self.name}: this run's nodes read their data themselves (a token corpus, or "
                    "node-local shards), so none comes as an array shard; bring your own batches "
                    "(e.g. hypergpu.data.corpus.load_corpus and TokenWindows)"
                )
            raise DataError(f"{self.name}: the coordinator assigned no data to this node")
        return Shard.concat(shards)

    @property
    def shard_version(self) -> int:
        """Counts the shard assignments received (the welcome's, then each change)."""
        return self._link.shard_version

    @property
    def links_lost(self) -> int:
        """Times the link broke and was re-established."""
        return self._link.links_lost

    @property
    def rounds_skipped(self) -> int:
        """Rounds that were over before this node finished the one before."""
        return self._link.rounds_skipped

    @property
    def batch_size(self) -> int:
        """The batch size this round's assignment asks for."""
        return self._assignment.batch_size if self._assignment is not None else self.training.batch_size

    @property
    def local_steps(self) -> int:
        """Optimizer steps in the current round (see the module docs for the order of precedence)."""
        if self.local_steps_override is not None:
            return self.local_steps_override
        assigned = self._assignment.local_steps if self._assignment is not None else 0
        if assigned > 0:
            return assigned
        return math.ceil(len(self.shard) / self.batch_size) * self.training.epochs

    @property
    def accepted(self) -> int:
        """Updates the coordinator took into a round (``report.acks["applied"]``: that went into the model)."""
        return self.report.acks["accepted"]

    @property
    def refused(self) -> int:
        """Updates the coordinator refused (any reason; see ``report.acks``)."""
        return sum(n for reason, n in self.report.acks.items() if reason not in ("accepted", "applied", "not-applied"))

    def dataset(self) -> TensorDataset:
        """The assigned shard as a ``TensorDataset`` of (x, y) CPU tensors."""
        shard = self.shard
        return TensorDataset(torch.from_numpy(shard.x), torch.from_numpy(shard.y))

    def dataloader(self, batch_size: int | None = None, *, shuffle: bool = True, drop_last: bool = True,
                   **kwargs: Any) -> DataLoader[tuple[torch.Tensor, ...]]:
        """A DataLoader over :meth:`dataset` (default: the assigned batch size).

        It snapshots the shard; make a new one per epoch to follow shard
        changes (:attr:`shard_version` counts them). Full batches only by
        default, so batch-norm never sees a batch of one.
        """
        data = self.dataset()
        size = batch_size or self.batch_size
        generator = torch.Generator().manual_seed(self.seed) if self.seed is not None else None
        return DataLoader(data, batch_size=size, shuffle=shuffle, drop_last=drop_last and len(data) > size,
                          generator=generator, **kwargs)

    # --- the optimizer face ---------------------------------------------------

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state)

    def step(
        self,
        closure: Callable[[], Any] | None = None,
        *,
        batch_size: int | None = None,
        loss: torch.Tensor | float | None = None,
    ) -> Any:
        """One step of the wrapped optimizer; at the round's last one, exchange with the coordinator.

        ``batch_size``: samples this step trained on (default: counted from
        the forward passes; sequences for a language model). ``loss``:
        reported to the coordinator, a tensor or a number (default: what
        ``closure`` returned, if it is one). Blocks at a round boundary
        until the next round's parameters are loaded; raises
        :class:`~hypergpu.errors.TimeoutError` when none come within
        ``round_timeout_s`` and the link's error when it cannot be kept up.
        """
        if self._link.failure is not None:
            raise self._link.failure
        explicit = loss_value(loss) if loss is not None else None
        if loss is not None and explicit is None:
            raise InvalidArgumentError(
                f"{self.name}: step(loss=...) takes a tensor or a number, got {type(loss).__name__}"
            )
        result = self.optimizer.step(closure) if closure is not None else self.optimizer.step()
        counted, self._forward_samples = self._forward_samples, 0
        if self.finished or self._received is None:
            return result
        samples = counted if batch_size is None else int(batch_size)
        if samples < 1:
            raise InvalidArgumentError(
                f"{self.name}: cannot tell how many samples this step trained on "
                f"(got {samples}); pass step(batch_size=...)"
            )
        self._round_steps += 1
        self._round_samples += samples
        reported = explicit if explicit is not None else loss_value(result)
        if reported is not None:
            self._round_losses.append((reported, samples))
        if self._round_steps >= self.local_steps:
            self._finish_round()
        return result

    @classmethod
    def from_env(cls, optimizer: torch.optim.Optimizer, model: nn.Module, **kwargs: Any) -> DistributedOptimizer:
        """Join as ``$HYPERGPU_JOIN`` and ``$HYPERGPU_TOKEN`` say (named ``$HYPERGPU_NODE_NAME``
        if set), as torchrun hands ranks their rendezvous; ``kwargs`` as for the constructor."""
        missing = [v for v in ("HYPERGPU_JOIN", "HYPERGPU_TOKEN") if not os.environ.get(v)]
        if missing:
            raise InvalidArgumentError(f"DistributedOptimizer.from_env: {' and '.join(missing)} not set")
        kwargs.setdefault("name", os.environ.get("HYPERGPU_NODE_NAME") or None)
        return cls(optimizer, model, join=os.environ["HYPERGPU_JOIN"], token=os.environ["HYPERGPU_TOKEN"], **kwargs)

    def close(self) -> None:
        """Leave: say bye (unless the coordinator already did), close the link, stop its thread."""
        if self._closed:
            return
        self._closed = True
        self._hook.remove()
        self._link.close()

    def __enter__(self) -> DistributedOptimizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- rounds (the caller's thread) -----------------------------------------

    def _count_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training and torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):
            self._forward_samples += int(args[0].shape[0]) if args[0].dim() else 1

    def _finish_round(self) -> None:
        assert self._received is not None and self._assignment is not None
        if self.finished:
            return  # the run ended while this round trained: nobody takes the update
        # A fresh array: the staged parameters are a view of the host buffer.
        update = self._staging.gather(self.model) - self._received
        if not np.isfinite(update).all():
            raise NonFiniteError(f"{self.name}: round {self.round} produced a non-finite update")
        elapsed = time.perf_counter() - self._round_started
        meta = UpdateMeta(
            samples=self._claimable(self._round_samples),
            loss=mean_loss(self._round_losses),
            steps=self._round_steps,
            # The caller's loop between the parameters' arrival and now.
            compute_s=elapsed,
            wall_s=elapsed,
            version=self._version,
        )
        self._take_back()
        # Held until acknowledged applied; not sent if a new coordinator life lost the round already.
        if self._link.send_update(self._encoder, update, self._assignment, meta, self.round, self.round_timeout_s):
            self.report.rounds += 1
            self.report.samples += self._round_samples
        self._received = None
        self._load_next_round()

    def _load_next_round(self) -> None:
        """Block until the next round's parameters (then load them into the model) or the end."""
        opened = self._link.next_round(self.round_timeout_s, after=self.round)
        if opened is None:
            return
        params = opened.params  # a fresh array the link handed over
        self.layout.check(params, "received parameters")
        if not np.isfinite(params).all():
            raise NonFiniteError(f"{self.name}: round {opened.round}'s parameters hold NaN or Inf")
        self._received = params
        self._staging.scatter(self.model, params)
        self.round = opened.round
        self._assignment = opened.assignment
        self._version = opened.version
        self._take_back()  # a round lost with a coordinator is trained again from the state before it
        self._link.began(opened.round, copy.deepcopy(self.optimizer.state_dict()))
        self._start_round(time.perf_counter())

    def _claimable(self, samples: int) -> int:
        """At most the assigned work: a larger claim is refused whole, and work beyond it (a round
        lost with a coordinator, trained again and folded into this one) earns nothing anyway."""
        a = self._assignment
        return samples if a is None or a.local_steps <= 0 else min(samples, a.batch_size * a.local_steps * a.accumulation)

    def _take_back(self) -> None:
        """Fold back what acks and welcomes took back (:mod:`hypergpu.node.settle`): the residual
        changes of updates never applied, and the optimizer's state before a round that was lost."""
        self._link.taken_back().take_back(lambda _key: self._encoder, self.optimizer)

    def _start_round(self, now: float) -> None:
        """Zero the round's counts (steps, samples, losses) from ``now`` on."""
        self._round_started = now
        self._round_steps = self._round_samples = 0
        self._round_losses = []
        self._forward_samples = 0
