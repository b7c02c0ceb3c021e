"""Train a model on a node's shards for one round and return the update.

A round trains on the exact samples the coordinator named (``work``: rows
of ``(shard, index)``, so shards follow the work) or, without them, on a
seeded shuffle of every shard the node holds. The loss is the task's
(:mod:`hypergpu.model.task`): classification or causal language modelling.
The update is ``params_after - params_received`` (float32, the model's flat
layout): the coordinator *adds* a weighted average of these to the global
parameters. A ``speed_factor`` below 1 emulates a slower GPU by sleeping
``compute * (1/speed_factor - 1)`` after each step, so a node at 0.5 takes
twice as long as its hardware would.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from hypergpu.config.schema import TrainingConfig
from hypergpu.data.samples import ArraySamples, ShardSet
from hypergpu.data.shards import Shard
from hypergpu.errors import DataError, InvalidArgumentError, NonFiniteError
from hypergpu.model.layout import ParamLayout
from hypergpu.model.nets import build_model
from hypergpu.model.task import Classification, Task
from hypergpu.node.metrics import RollingMetrics
from hypergpu.node.overlap import Folder


class RoundResult(NamedTuple):
    update: np.ndarray  # float32, params_after - params_received
    samples_seen: int
    metrics: dict[str, float]


def resolve_device(device: str) -> torch.device:
    """``auto`` picks CUDA when present, else the CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidArgumentError("device 'cuda' requested but no CUDA device is available")
    if device not in ("cpu", "cuda"):
        raise InvalidArgumentError(f"device must be 'auto', 'cpu' or 'cuda', got {device!r}")
    return torch.device(device)


class LocalTrainer:
    """A node's local trainer: one model, the shards it holds, and one inner optimizer whose
    state (e.g. Adam's moments) carries over from round to round, as DiLoCo's inner optimizer does."""

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        shard: Shard | Sequence[Shard] | ShardSet | None,
        training: TrainingConfig,
        *,
        task: Task | None = None,
        device: str = "auto",
        speed_factor: float = 1.0,
        seed: int | None = None,
        metrics_window: int = 100,
        threads: int | None = None,
    ):
        if threads is not None:
            # Process-wide: several node processes on one host each want few
            # intra-op threads, or they oversubscribe the cores badly.
            torch.set_num_threads(threads)
        self.device = resolve_device(device)
        module = model if isinstance(model, nn.Module) else model()
        self.model = module.to(self.device)
        self.layout = ParamLayout.from_model(self.model)
        self.training = training
        self.optimizer: torch.optim.Optimizer | None = None  # made at the first round
        self.task = task or Classification()
        self.metrics = RollingMetrics(metrics_window)
        self.set_speed_factor(speed_factor)
        self._gen = torch.Generator().manual_seed(training.seed if seed is None else seed)
        self._perm: torch.Tensor | None = None
        self._pos = 0
        self.data = shard if isinstance(shard, ShardSet) else ShardSet()
        self._pairs: np.ndarray | None = None  # every (shard, index) held, for rounds without work
        if shard is not None and not isinstance(shard, ShardSet):
            self.set_shard(shard)

    # --- between rounds -------------------------------------------------------

    def set_shard(self, shard: Shard | Sequence[Shard]) -> None:
        """Hold ``shard`` (or several) from the next round on; verifies checksums."""
        shards = [shard] if isinstance(shard, Shard) else list(shard)
        for s in shards:
            s.verify()
            if len(s) == 0:
                raise DataError(f"shard {s.index} is empty")
            self.data.add(s.index, ArraySamples(s.x, s.y))
        self.data_changed()

    def data_changed(self) -> None:
        """The shards held changed: rounds without work reshuffle over all of them."""
        self._pairs, self._perm, self._pos = None, None, 0

    def set_speed_factor(self, speed_factor: float) -> None:
        if not (0 < speed_factor <= 1) or math.isnan(speed_factor):
            raise InvalidArgumentError(f"speed_factor must be in (0, 1], got {speed_factor}")
        self.speed_factor = speed_factor

    # --- one round ------------------------------------------------------------

    def train_round(
        self,
        flat_params: np.ndarray | None,
        *,
        steps: int | None = None,
        epochs: int | None = None,
        batch_size: int | None = None,
        accumulation: int = 1,
        work: np.ndarray | None = None,
        folder: Folder | None = None,
        late_after: int | None = None,
    ) -> RoundResult:
        """Load ``flat_params``, train, and return the update and the round's figures. With a
        ``folder`` instead (overlap, :mod:`hypergpu.node.overlap`) the round goes on from the model
        as it is, folding global parameters in between steps; the update is the steps' own.

        ``work`` (rows of ``(shard, index)``) names the round's samples in training order and sets
        the step count to cover them once. Else ``steps`` optimizer steps, or ``epochs`` passes over
        the shard (default: the config's ``local_steps``, or its ``epochs`` when that is 0; an epoch
        is ``ceil(len(shard) / effective batch)`` steps). Each step sees ``batch_size * accumulation``
        samples in ``accumulation`` micro-batches whose gradients are summed.

        ``late_after`` (with a ``folder``): this work's round. Once it closed the update is late
        whatever it does: the work stops (after a step) and its steps go out. A catch-up the folder
        asks for (an earlier update came late) ends it sooner (:func:`catch_up_steps`).
        """
        batch = self.training.batch_size if batch_size is None else batch_size
        steps = self._count_steps(steps, epochs, batch, accumulation, work)
        received = self._start(flat_params, folder)
        optimizer = self.inner_optimizer()
        self.model.train()
        totals: dict[str, float] = dict.fromkeys(("forward_s", "backward_s", "step_s", "throttle_s"), 0.0)
        loss_sum, correct, seen, predictions, done, started = 0.0, 0, 0, 0, 0, time.perf_counter()
        planned = steps
        while done < steps:
            if folder is not None and done > 0:
                if late_after is not None and folder.closed_seen >= late_after:
                    break
                steps = catch_up_steps(steps, planned, done, time.perf_counter() - started, folder.take_catch_up())
            if folder is not None and folder.ready:
                received += self._fold_in(folder)  # the start moves with the fold: the update stays the steps' own
            n = batch * accumulation
            rows = work[done * n : (done + 1) * n] if work is not None else self._next_rows(n)
            timings, step_loss, step_correct, step_predictions = self._step(optimizer, rows, accumulation)
            totals["throttle_s"] += self._throttle(timings, step_loss)
            for key, value in timings.items():
                totals[key] += value
            loss_sum, seen = loss_sum + step_loss * len(rows), seen + len(rows)
            correct, predictions = correct + step_correct, predictions + step_predictions
            done += 1
        self.metrics.record("accuracy", correct / predictions)
        if not np.isfinite(update := self.layout.flatten(self.model) - received).all():
            raise NonFiniteError("the round produced a non-finite update")
        figures = {
            "loss": loss_sum / seen, "accuracy": correct / predictions, "steps": float(done),
            "samples": float(seen), "batch_size": float(batch), "accumulation": float(accumulation),
            "compute_s": totals["forward_s"] + totals["backward_s"] + totals["step_s"],
            "wall_s": time.perf_counter() - started, **totals,
        }
        return RoundResult(update, seen, figures)

    # --- internals --------------------------------------------------------------

    def inner_optimizer(self) -> torch.optim.Optimizer:
        """The inner optimizer, made once: parameters are loaded in place, so its
        state stays attached to them from round to round (and is what a node checkpoints)."""
        if self.optimizer is None:
            self.optimizer = make_optimizer(self.training, self.model.parameters())
        return self.optimizer

    def _count_steps(self, steps: int | None, epochs: int | None, batch: int, accumulation: int,
                     work: np.ndarray | None) -> int:
        """The round's optimizer steps (checked); counting by epochs restarts the shuffle."""
        if work is not None:
            if len(work) == 0:
                raise DataError("the round's work names no samples")
            steps, epochs = math.ceil(len(work) / (batch * accumulation)), None
        if len(self.data) == 0:
            raise DataError("no shard assigned to this trainer")
        if steps is not None and epochs is not None:
            raise InvalidArgumentError("pass steps or epochs, not both")
        for name, count in (("batch_size", batch), ("accumulation", accumulation)):
            if count < 1:
                raise InvalidArgumentError(f"{name} must be >= 1, got {count}")
        if steps is None and epochs is None:
            if self.training.local_steps > 0:
                steps = self.training.local_steps
            else:
                epochs = self.training.epochs
        if epochs is not None:
            if epochs < 1:
                raise InvalidArgumentError(f"epochs must be >= 1, got {epochs}")
            steps = math.ceil(len(self.data) / (batch * accumulation)) * epochs
            self._perm, self._pos = None, 0  # whole passes from a fresh shuffle
        assert steps is not None
        if steps < 1:
            raise InvalidArgumentError(f"steps must be >= 1, got {steps}")
        return steps

    def _throttle(self, timings: dict[str, float], step_loss: float) -> float:
        """Record one step's figures and sleep as a slower GPU would; returns the seconds slept."""
        compute = sum(timings.values())
        throttle = compute * (1.0 / self.speed_factor - 1.0)
        if throttle > 0:
            time.sleep(throttle)
        self.metrics.record("loss", step_loss)
        for key in ("forward_s", "backward_s", "step_s"):
            self.metrics.record(key, timings[key])
        self.metrics.record("compute_s", compute)
        self.metrics.record("throttle_s", throttle)
        return throttle

    def _start(self, flat_params: np.ndarray | None, folder: Folder | None) -> np.ndarray:
        """Where the round's update is measured from: the parameters loaded, or the model as it is."""
        if self.device.type == "cpu":
            # On the thread that trains (the CPU's float mode is per thread). A GPT's steps here grew
            # 2.2x slower over its first 300 steps as its training made subnormal floats, and stayed
            # flat with them flushed to zero.
            torch.set_flush_denormal(self.training.flush_denormal)
        if folder is not None:
            return self.layout.flatten(self.model) + self._fold_in(folder)
        if flat_params is None:
            raise InvalidArgumentError("train_round needs the parameters to start from, or a folder")
        return self._load(flat_params)

    def fold(self, folder: Folder) -> None:
        """Fold whatever global parameters have arrived into the model now (between rounds)."""
        self._fold_in(folder)

    def _fold_in(self, folder: Folder) -> np.ndarray:
        """Fold newly arrived global parameters into the model; returns how far it moved."""
        if not folder.ready:
            return np.zeros(self.layout.total, np.float32)
        local = self.layout.flatten(self.model)
        folded = folder.fold(local)
        if not np.isfinite(folded).all():
            raise NonFiniteError("received parameters hold NaN or Inf")
        self.layout.load_into(self.model, folded)
        return folded - local

    def _load(self, flat_params: np.ndarray) -> np.ndarray:
        self.layout.check(flat_params, "received parameters")
        if not np.isfinite(flat_params).all():
            raise NonFiniteError("received parameters hold NaN or Inf")
        received = np.array(flat_params, dtype=np.float32, copy=True)
        self.layout.load_into(self.model, received)
        return received

    def _step(
        self, optimizer: torch.optim.Optimizer, rows: np.ndarray, accumulation: int
    ) -> tuple[dict[str, float], float, int, int]:
        timings = {"forward_s": 0.0, "backward_s": 0.0, "step_s": 0.0}
        optimizer.zero_grad(set_to_none=True)
        loss_total, correct, predictions = 0.0, 0, 0
        for micro in np.array_split(rows, min(accumulation, len(rows))):
            x, y = self.data.batch_of(micro)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            t0 = self._clock()
            out = forward(self.model, x, self.training)
            # Each micro-batch's mean loss is weighted by its share of the step,
            # so the summed gradients equal those of the whole batch.
            loss = self.task.loss(out, y) * (len(micro) / len(rows))
            t1 = self._clock()
            loss.backward()
            t2 = self._clock()
            timings["forward_s"] += t1 - t0
            timings["backward_s"] += t2 - t1
            loss_total += float(loss.detach())
            hits, n = self.task.correct(out, y)
            correct += hits
            predictions += n
        if not math.isfinite(loss_total):
            raise NonFiniteError(f"training diverged: loss is {loss_total}")
        t0 = self._clock()
        optimizer.step()
        timings["step_s"] = self._clock() - t0
        return timings, loss_total, correct, predictions

    def _next_rows(self, count: int) -> np.ndarray:
        """The next ``count`` held samples of a seeded shuffle, always a full batch.

        A batch that runs past the end of a pass continues into the next
        shuffle: short batches would make batch-norm statistics noisy (or
        fail outright on one sample).
        """
        if self._pairs is None:
            self._pairs = self.data.all_pairs()
        n = len(self._pairs)
        parts = []
        while count > 0:
            if self._perm is None or self._pos >= n:
                self._perm = torch.randperm(n, generator=self._gen)
                self._pos = 0
            part = self._perm[self._pos : self._pos + count]
            self._pos += len(part)
            count -= len(part)
            parts.append(part.numpy())
        return self._pairs[np.concatenate(parts)]

    def _clock(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()


def build_node_model(training: TrainingConfig, input_shape: Sequence[int], num_classes: int,
                     factory: Callable[[tuple[int, ...], int], nn.Module] | None = None,
                     seed: int | None = None) -> nn.Module:
    """The model a node trains, as the run's config and seed build it (``factory``: the user's own)."""
    if seed is not None:
        # Dropout draws from torch's global generator, which a fresh process seeds at
        # random: without this, two runs with the same seeds train differently.
        torch.manual_seed(seed)
    if factory is not None:
        return factory(tuple(input_shape), num_classes)
    return build_model(training, input_shape, num_classes)


#: A catch-up cut takes one step more than the lateness it makes up: a margin for jitter.
CATCH_UP_MARGIN_STEPS = 1


def catch_up_steps(steps: int, planned: int, done: int, elapsed_s: float, late_s: float) -> int:
    """The work's step count after a catch-up cut of ``late_s`` seconds, at the pace of the
    ``done`` steps so far. It keeps half the ``planned`` work at least: a node whose link
    cannot keep up at all is for the planner to slow down, not for its work to vanish."""
    if late_s <= 0 or done <= 0:
        return steps
    cut = math.ceil(late_s / (elapsed_s / done)) + CATCH_UP_MARGIN_STEPS
    return min(steps, max(steps - cut, math.ceil(planned / 2), done))


def warm_up_torch() -> None:
    """Pays torch's one-time costs before a node joins a run: the first optimizer a process
    builds imports torch's compiler stack (over a second on one core; seen as 7.5 s of a
    node's first round when ten nodes shared two cores), which would otherwise hold up the
    node's first round."""
    param = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([param])
    param.grad = torch.ones(1)
    optimizer.step()


def forward(model: nn.Module, x: torch.Tensor, training: TrainingConfig) -> torch.Tensor:
    """A training step's forward pass in ``training.precision``; the output is float32.

    Under bf16 it runs under autocast: the matmuls and attention in bfloat16 (about 1.6x
    faster per step on a CPU with bf16 instructions for the WAN bench's GPT), while the
    parameters, their gradients, the optimizer state and so every update stay float32, and
    the loss is taken on the float32 output.
    """
    if training.precision != "bf16":
        return model(x)
    with torch.autocast(x.device.type, dtype=torch.bfloat16):
        out = model(x)
    return out.float()


def make_optimizer(training: TrainingConfig, params: Iterable[torch.Tensor]) -> torch.optim.Optimizer:
    """The optimizer the config names."""
    if training.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=training.lr, momentum=training.momentum, weight_decay=training.weight_decay
        )
    cls = torch.optim.Adam if training.optimizer == "adam" else torch.optim.AdamW
    return cls(params, lr=training.lr, weight_decay=training.weight_decay)
