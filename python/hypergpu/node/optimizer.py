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

The wrapper keeps the node's link on a background thread running its own
asyncio loop, so the user's loop stays synchronous. Construction connects,
says hello, checks that the model's flat layout matches the coordinator's
(:class:`~hypergpu.errors.ShapeMismatchError` otherwise) and waits for the
first round's parameters, which it loads into the model. Each
:meth:`DistributedOptimizer.step` runs the wrapped optimizer's step; after
the round's ``local_steps`` of them it sends ``params_after -
params_received`` (encoded with the codec the round assigned) and blocks
until the next round's parameters arrive and are loaded: ``step()`` is where
the round boundary happens.

Samples: pass ``step(batch_size=n)``; otherwise the wrapper counts the
leading dimension of the first input of every forward pass the model ran
in training mode with gradients enabled since the previous step (gradient
accumulation is counted whole). The coordinator weights updates by it.

Local steps per round: the wrapper's ``local_steps`` when given, else the
round's assignment, else (assignment of 0) ``epochs`` passes over the
shard at the assigned batch size. The wrapped optimizer keeps its own state
(e.g. Adam moments) across rounds.

When the coordinator says ``bye`` (training finished) or ``stop``,
:attr:`~DistributedOptimizer.finished` becomes True and the model keeps its
parameters after its last local steps; further ``step()`` calls are plain
local steps of the wrapped optimizer, so a loop should check ``finished``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hypergpu import protocol
from hypergpu.config.schema import TrainingConfig
from hypergpu.data.shards import Shard
from hypergpu.errors import (
    DataError,
    HyperGPUError,
    InvalidArgumentError,
    NonFiniteError,
    TimeoutError,
    TransportError,
)
from hypergpu.model.layout import ParamLayout
from hypergpu.node.session import (
    Backoff,
    NodeReport,
    Session,
    UpdateEncoder,
    Welcome,
    hello_meta,
    shards_of,
)
from hypergpu.protocol import Message
from hypergpu.transport import LinkShape

__all__ = ["DistributedOptimizer"]

log = logging.getLogger("hypergpu.node")


class DistributedOptimizer:
    """Wraps a torch optimizer so that ``step()`` takes part in the coordinator's rounds."""

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

        device = "cuda" if any(p.is_cuda for p in model.parameters()) else "cpu"
        self._session = Session(
            join,
            token=token,
            name=self.name,
            hello=hello_meta(self.name, index, device, 1.0),
            shape=shape,
            backoff=backoff,
            heartbeat_s=heartbeat_s,
            report=self.report,
            on_welcome=self._on_welcome,
        )
        self._encoder = UpdateEncoder()
        # The link's side: filled by the background thread.
        self._lock = threading.Lock()
        self._welcome: Welcome | None = None
        self._welcomed = threading.Event()
        self._shards: list[Shard] = []
        self.shard_version = 0
        self._inbox: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._failure: BaseException | None = None
        self._driver_task: asyncio.Task[None] | None = None
        self._finished = threading.Event()
        self._closing = False
        # The round's side: used by the caller's thread only.
        self.round = 0
        self.rounds_skipped = 0
        #: Times the link broke and was re-established (hello and welcome again).
        self.links_lost = 0
        self._assignment: dict[str, Any] = {}
        self._received: np.ndarray | None = None
        self._round_started = 0.0
        self._round_steps = 0
        self._round_samples = 0
        self._round_loss = 0.0
        self._round_loss_samples = 0
        self._forward_samples = 0
        self._hook = model.register_forward_pre_hook(self._count_forward)

        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"hypergpu-{self.name}", daemon=True)
        self._thread.start()
        self._driver = asyncio.run_coroutine_threadsafe(self._drive(), self._loop)
        try:
            if not self._welcomed.wait(connect_timeout_s):
                raise TimeoutError(f"{self.name}: no welcome from the coordinator within {connect_timeout_s:g} s")
            if self._failure is not None:
                raise self._failure
            self._await_round(round_timeout_s)
        except BaseException:
            self.close()
            raise

    # --- what the caller sees -------------------------------------------------

    @property
    def finished(self) -> bool:
        """True once the coordinator said the training is over (``bye`` or ``stop``)."""
        return self._finished.is_set()

    @property
    def node_id(self) -> int | None:
        return self.report.node_id

    @property
    def training(self) -> TrainingConfig:
        """The coordinator's training settings (from the welcome)."""
        assert self._welcome is not None
        return self._welcome.training

    @property
    def shard(self) -> Shard:
        """The data the coordinator assigned this node now (several shards merged)."""
        with self._lock:
            shards = list(self._shards)
        if not shards:
            raise DataError(f"{self.name}: the coordinator assigned no data to this node")
        return Shard.concat(shards)

    @property
    def batch_size(self) -> int:
        """The batch size this round's assignment asks for."""
        return int(self._assignment.get("batch_size") or self.training.batch_size)

    @property
    def local_steps(self) -> int:
        """Optimizer steps in the current round (see the module docs for the order of precedence)."""
        if self.local_steps_override is not None:
            return self.local_steps_override
        assigned = int(self._assignment.get("local_steps", 0) or 0)
        if assigned > 0:
            return assigned
        return math.ceil(len(self.shard) / self.batch_size) * self.training.epochs

    @property
    def accepted(self) -> int:
        """Updates the coordinator applied."""
        return self.report.acks["accepted"]

    @property
    def refused(self) -> int:
        """Updates the coordinator refused (any reason; see ``report.acks``)."""
        return sum(n for reason, n in self.report.acks.items() if reason != "accepted")

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
        the forward passes). ``loss``: reported to the coordinator (default:
        what ``closure`` returned, if anything). Blocks at a round boundary
        until the next round's parameters are loaded; raises
        :class:`~hypergpu.errors.TimeoutError` when none come within
        ``round_timeout_s`` and the link's error when it cannot be kept up.
        """
        if self._failure is not None:
            raise self._failure
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
        reported = loss if loss is not None else result
        if reported is not None:
            value = float(reported.detach()) if isinstance(reported, torch.Tensor) else float(reported)
            if math.isfinite(value):
                self._round_loss += value * samples
                self._round_loss_samples += samples
        if self._round_steps >= self.local_steps:
            self._finish_round()
        return result

    def close(self) -> None:
        """Leave: say bye (unless the coordinator already did), close the link, stop the thread."""
        if self._closing:
            return
        self._closing = True
        self._hook.remove()
        if self._loop.is_running():
            done = asyncio.run_coroutine_threadsafe(self._leave(), self._loop)
            with contextlib.suppress(Exception):
                done.result(timeout=10.0)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10.0)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> DistributedOptimizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- rounds (the caller's thread) -----------------------------------------

    def _count_forward(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        if module.training and torch.is_grad_enabled() and args and isinstance(args[0], torch.Tensor):
            self._forward_samples += int(args[0].shape[0]) if args[0].dim() else 1

    def _finish_round(self) -> None:
        assert self._received is not None
        if self.finished:
            return  # the run ended while this round trained: nobody takes the update
        update = self.layout.flatten(self.model) - self._received
        if not np.isfinite(update).all():
            raise NonFiniteError(f"{self.name}: round {self.round} produced a non-finite update")
        elapsed = time.perf_counter() - self._round_started
        meta = {
            "samples": self._round_samples,
            "loss": self._round_loss / self._round_loss_samples if self._round_loss_samples else None,
            "steps": self._round_steps,
            # The caller's loop between the parameters' arrival and now.
            "compute_s": elapsed,
            "wall_s": elapsed,
            "version": self._assignment.get("version"),
        }
        msg = self._encoder.message(update, self._assignment, meta, self.round)
        sending = asyncio.run_coroutine_threadsafe(self._session.send(msg, reconnect=False), self._loop)
        try:
            sending.result(timeout=self.round_timeout_s)
        except TransportError:
            raise
        except BaseException as exc:
            sending.cancel()
            raise TimeoutError(f"{self.name}: could not send round {self.round}'s update: {exc!r}") from exc
        self.report.rounds += 1
        self.report.samples += self._round_samples
        self._received = None
        self._await_round(self.round_timeout_s)

    def _await_round(self, timeout_s: float) -> None:
        """Block until the next round's parameters (loaded into the model) or the end."""
        try:
            kind, value = self._inbox.get(timeout=timeout_s)
        except queue.Empty:
            if self.finished:
                return
            raise TimeoutError(
                f"{self.name}: no parameters for the next round within {timeout_s:g} s "
                f"(after round {self.round}); is the coordinator still running?"
            ) from None
        # Rounds that opened while this node was still busy are skipped: only the newest counts.
        while True:
            try:
                newer = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == "params" and newer[0] == "params":
                self.rounds_skipped += 1
            kind, value = newer
        if kind == "error":
            raise value
        if kind == "end":
            return
        msg: Message = value
        params = np.asarray(msg.sections["params"])
        self.layout.check(params, "received parameters")
        if not np.isfinite(params).all():
            raise NonFiniteError(f"{self.name}: round {msg.round}'s parameters hold NaN or Inf")
        self._received = np.array(params, dtype=np.float32, copy=True)
        self.layout.load_into(self.model, self._received)
        self.round = msg.round
        self._assignment = dict(msg.meta)
        self._round_started = time.perf_counter()
        self._round_steps = self._round_samples = self._round_loss_samples = 0
        self._round_loss = 0.0
        self._forward_samples = 0

    # --- the link (the background thread) -------------------------------------

    async def _drive(self) -> None:
        self._driver_task = asyncio.current_task()
        session = self._session
        heartbeat: asyncio.Future[None] | None = None
        try:
            await session.connect()
            heartbeat = asyncio.ensure_future(session.heartbeats())
            while not self._closing:
                try:
                    msg = await session.recv(timeout=self.idle_timeout_s)
                except TransportError as exc:
                    if self._closing:
                        break
                    log.info("%s: link lost (%s); reconnecting", self.name, exc)
                    await session.connect()
                    self.links_lost += 1
                    continue
                if not self._handle(msg):
                    break
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the caller's thread, raised there
            self._fail(exc)
        finally:
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(BaseException):
                    await heartbeat
            if self._failure is not None:
                await session.close(f"node failed: {self._failure}")

    def _handle(self, msg: Message) -> bool:
        """Act on one message; False ends the session."""
        if msg.kind == "welcome":
            self._on_welcome(msg)
        elif msg.kind == "params":
            self._inbox.put(("params", msg))
        elif msg.kind == "ack":
            self.report.record_ack(msg)
        elif msg.kind == "control":
            kind = msg.meta.get("type")
            if kind == "shard":
                self._set_shards(shards_of(msg))
            elif kind == "shape":
                self._session.set_shape(str(msg.meta["profile"]), seed=self.seed or 0)
            elif kind == "stop":
                self._end()
                return False
        elif msg.kind == "bye":
            self._end()
            return False
        return True

    def _on_welcome(self, msg: Message) -> None:
        welcome = Welcome.parse(msg)
        try:
            welcome.check_layout(self.layout.digest, self.name, self.layout.total)
        except HyperGPUError as exc:
            self._fail(exc)
            raise
        self._welcome = welcome
        self.report.node_id = welcome.node_id
        if welcome.shards:
            self._set_shards(welcome.shards)
        self._welcomed.set()

    def _set_shards(self, shards: list[Shard]) -> None:
        with self._lock:
            self._shards = shards
            self.shard_version += 1

    def _end(self) -> None:
        self._finished.set()
        self._inbox.put(("end", None))

    def _fail(self, exc: BaseException) -> None:
        if self._failure is None:
            self._failure = exc
        self._inbox.put(("error", exc))
        self._welcomed.set()

    async def _leave(self) -> None:
        if not self.finished and self._session.link is not None:
            with contextlib.suppress(HyperGPUError):
                await self._session.link.send(protocol.encode(Message("bye", {"reason": "leaving"})))
        await self._session.close("node leaving")
        task = self._driver_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task


