"""Overlap and DiLoCo on a language model over kernel-shaped links (issue 14, benchmark).

Hosts are network namespaces this bench creates (``netns_hosts``): the
coordinator's host unshaped and, twice over, ten node hosts whose links the
kernel shapes (tc tbf for bandwidth both ways, nftables random drop for loss)
at 3 x 100 Mbit/s, 4 x 20, 2 x 5 and 1 x 2 Mbit/s with 2 % loss: one set for
the HyperGPU arms, which run one after the other over it, and one for DDP,
which runs alongside them. The same GPT (6.29M parameters in ``FULL``: one
raw float32 update is 25.2 MB, 10.1 s at 20 Mbit/s) trains on the standard
library's source in three arms, each from the same seeded initial model and
in the same precision (``training.precision = "bf16"``: the forward pass
under bf16 autocast, float32 parameters, optimizer state and updates; on
this machine's CPU a step of ``FULL``'s GPT takes 0.31 s against fp32's 0.49 s):

(a) ``ddp``: synchronous data parallel, torch DDP over gloo, one rank per
    host of its own set (``benches/ddp_worker.py``; the TCP store on rank
    0's host, 100 Mbit/s), the same global batch per step (``batch`` blocks
    per node), AdamW at the same rate. It starts with the bench and trains
    until its clock passes ``DDP_FACTOR`` x (c)'s time to the target (at
    (c)'s first evaluation at or below it), which the bench tells it once
    (c) is done (at least ``ddp_min_steps`` steps; at most the token
    budget): if it has not reached the target by then, its clock alone
    bounds (c)'s speed-up over it from below. A step in flight when the
    clock passes the budget is cut off (it would have ended later). No added
    latency: the kernel here has no netem and gloo runs over plain TCP, so
    this arm gets a ~0 ms round trip where the others get 100 ms (in its
    favour). Its ranks spend their steps waiting on the 2 Mbit/s link; the
    CPU they take from the HyperGPU arms is measured and reported
    (``ddp_cpu_s``, ``ddp_mean_cores_used``).
(b) ``diloco``: HyperGPU, the plain peer recipe: ``adapt.enabled = false``,
    every node every round with the same H (``local_steps``) and fp16 both
    ways, no overlap (the round waits for everyone; Nesterov outer step).
(c) ``adaptive``: HyperGPU, ``adapt.enabled = true`` (per-node batch, H,
    codec, participation and the fragments an update is sent in, from the
    measured links; update codecs raw, fp16, int8 and int4, no top-k: see
    ``ADAPTIVE_CODECS``; up to 4 fragments per link) and
    ``training.overlap = true``.

HyperGPU arms: the coordinator runs in its namespace (this file run as
``python bench_diloco_wan.py coordinator SPEC OUT``, binding the
namespace's address) and ten ``hypergpu node`` processes run in the node
namespaces (``ip netns exec``), joining by that address, each with
``--profile custom --latency-ms 50``: the transport adds 50 ms each way on
top of the kernel's shaping. Each arm's clock starts once every node has
joined (DDP: once every rank passed the first barrier) and it stops at its
time budget (the round running then finishes) or the token budget.

The target held-out loss: the size's ``target`` when both HyperGPU arms
reach it, else the best loss both reached (the higher of their best
held-out losses), so time-to-target is defined for both; the rule used is
reported. ``FULL``'s is fixed in advance at 2.95, which both arms reached
in every full run before it was set ((b) in its second or third round):
with the best loss both reached as the target, the target moved with the
number of rounds (b) fitted in its budget, and so did the ratio. The
speed-up over (b) at the best loss both reached is reported beside it. Held-out evaluation is the bench's instrument, so it is kept off
every arm's clock: DDP's rank 0 evaluations are left out of (a)'s, and the
HyperGPU coordinators do not evaluate in the loop (``training.eval_interval``
past the last round): each round's model is kept when the round closes and
evaluated after the arm's clock stopped, its loss dated at that close. (In
the loop, under (c)'s load, one evaluation took ~16 s of the 2 cores the ten
nodes share and ~3 s under (b)'s, with subnormal floats kept; a coordinator
on its own machine would not take that from the nodes.) Scoring each
update's held-out effect, which serves rewards (off here), is off too
(``rewards.effect_batch = 0``) for the same reason. An arm's time to the target is interpolated between
the evaluation before the curve crossed it and the one after (HyperGPU
arms evaluate once a round, minutes apart; the first evaluation at or
below it is reported too). Speed-ups are ratios of times to that target
within this run; an arm that never reached it counts with its whole training time (the
speed-up over it is then a lower bound).

DDP takes only a few steps of this GPT within its budget (each step
all-reduces the whole gradient over the 2 Mbit/s link): once (c) is done,
while DDP finishes, its steps are replayed in one process without the
links (``ddp_worker.py SPEC replay``: the same initial model, the same
global batches in the same order, the same AdamW; the mean of the ranks'
gradients is the gradient of the global batch), evaluating after every
step, over the tokens (c) trained, then on until the target or
``REPLAY_FACTOR`` x (c)'s training time in DDP steps. The steps it needs times DDP's measured seconds per step is DDP's
estimated time to the target (or, not reached, a lower bound on it). Also reported: each arm's curve,
held-out loss at equal tokens (interpolated; every curve starts at the
untrained model's loss, which DDP's rank 0 evaluates), (c)'s loss against
DDP's replayed path at equal tokens (the issue's "within 2 % of (a)" where
(a) gets there), bytes per node (at
the interface: headers and retransmissions included; HyperGPU arms also the
coordinator's payload counts), per-node compute utilisation, H and codecs
(c) chose. Nothing is asserted on times: the figures go to ``extra_info``
and a table is printed.

Sizes: ``FULL`` (benchmark enabled; 28 minutes measured on this 2-core
machine: DDP 10 x (c)'s time to its first evaluation at or below the
target, 137-151 s in three runs, in steps of ~235 s, and alongside it (b)
~480 s of training, (c) ~300 s, each with ~40 s of start-up, and the
replay's ~140 steps), ``MID`` (``HYPERGPU_WAN_SIZE=mid``: the same hosts and
links, a 1.4M-parameter GPT and shorter budgets), and ``SMOKE`` (under
``--benchmark-disable``: three node hosts of 100, 20 and 2 Mbit/s with 2 %
loss, twice, a tiny GPT, two rounds per HyperGPU arm and DDP's token
budget of steps, still in real namespaces; skipped with the reason where
they cannot be made).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import secrets
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import netns_hosts  # noqa: E402
from netns_hosts import Host, Link  # noqa: E402

MBIT = 1_000_000
WAN_LINKS = ([Link(100 * MBIT)] * 3 + [Link(20 * MBIT)] * 4 + [Link(5 * MBIT)] * 2
             + [Link(2 * MBIT, loss=0.02)])
SMOKE_LINKS = [Link(100 * MBIT), Link(20 * MBIT), Link(2 * MBIT, loss=0.02)]

FULL: dict[str, Any] = dict(
    name="full", links=WAN_LINKS, layers=5, embd=320, heads=4, block=128, batch=8, local_steps=20,
    eval_samples=128, ddp_min_steps=1, ddp_eval_every=1, rounds=1000,
    # (c) trains less: far past the target already, and the DDP replay covers its tokens while DDP finishes
    budget_s=dict(diloco=480, adaptive=300),
    token_budget=12_000_000, target=2.95,
)
MID: dict[str, Any] = dict(
    name="mid", links=WAN_LINKS, layers=3, embd=192, heads=4, block=128, batch=8, local_steps=20,
    eval_samples=128, ddp_min_steps=2, ddp_eval_every=1, rounds=1000,
    budget_s=dict(diloco=240, adaptive=240),
    token_budget=6_000_000, target=None,
)
SMOKE: dict[str, Any] = dict(
    name="smoke", links=SMOKE_LINKS, layers=1, embd=32, heads=2, block=32, batch=8, local_steps=3,
    eval_samples=16, ddp_min_steps=3, ddp_eval_every=3, rounds=2,
    budget_s=dict(diloco=60, adaptive=60),
    token_budget=20_000, target=None,
)
SIZES = {"full": FULL, "mid": MID, "smoke": SMOKE}

ARM_NAMES = ("ddp", "diloco", "adaptive")
#: (a) trains for this many times (c)'s time to the target (at its first evaluation at or below
#: it): if it has not got there by then, its clock alone shows (c) this many times faster.
DDP_FACTOR = 10.0
#: Past the tokens it covers, the DDP replay looks for the target up to this many times (c)'s
#: training time in DDP steps.
REPLAY_FACTOR = 12.0
LATENCY_MS = 50.0  # one way, added by each node's transport
DDP_PORT = 29517
NODE_LEAVE_S = 30.0
#: Every process on a node host (HyperGPU nodes, DDP ranks) runs at this lower CPU priority
#: than the coordinator: its host is its own machine in the setting the issue names, but here
#: it shares the 2 cores with ten training processes. At equal priority it got ~a sixth of a
#: core, and (c)'s round close and next sends (aggregating ten updates, the outer step, encoding
#: the next parameters: ~2 s of CPU a round) ran at that share while the nodes trained on.
#: (b)'s nodes sit idle while its rounds close, and DDP has no coordinator.
NODE_NICE = ("nice", "-n", "10")
pytestmark = pytest.mark.timeout(3600)
PYTHONPATH = os.pathsep.join(p for p in (str(HERE.parent / "python"), os.environ.get("PYTHONPATH")) if p)


def overrides(size: dict[str, Any], tmp: Path, coordinator_ip: str) -> list[str]:
    """The HyperGPU config every arm shares (the DDP ranks read the same)."""
    return [
        "training.model='gpt'",
        f"training.gpt.n_layer={size['layers']}",
        f"training.gpt.n_head={size['heads']}",
        f"training.gpt.n_embd={size['embd']}",
        f"training.gpt.block_size={size['block']}",
        "training.optimizer='adamw'",
        "training.lr=0.002",
        "training.weight_decay=0.01",
        # Every arm's forward pass in bf16 (node/trainer.py, autocast; DDP's ranks and replay too).
        "training.precision='bf16'",
        f"training.batch_size={size['batch']}",
        f"training.local_steps={size['local_steps']}",
        f"training.rounds={size['rounds']}",
        # Held-out evaluation is out of the HyperGPU arms' loops (each round's model is kept and
        # evaluated once the arm's clock stopped: see the module doc); DDP reads its own interval.
        "training.eval_interval=1000000",
        "data.dataset='stdlib'",
        "data.test_fraction=0.1",
        f"data.eval_samples={size['eval_samples']}",
        f"data.cache_dir='{tmp}/cache'",
        f"nodes.count={len(size['links'])}",
        "nodes.device='cpu'",
        f"coordinator.host='{coordinator_ip}'",
        "coordinator.port=0",
        "coordinator.checkpoint_every=0",
        f"coordinator.checkpoint_dir='{tmp}/ckpt'",
        # A synchronous round waits for everyone (the plain recipe); the adaptive
        # planner sets its own deadline from the quorum's slowest expected node.
        "coordinator.round_timeout_s=900",
        "coordinator.quorum=0.7",
        "coordinator.heartbeat_interval_s=2.0",
        f"adapt.min_batch={min(8, size['batch'])}",
        "rewards.enabled=false",
        # Nor are updates scored for rewards by their held-out effect (11 forward passes of 32 blocks a
        # round): like evaluation it is the coordinator's work, which here shares the nodes' 2 cores.
        "rewards.effect_batch=0",
    ]


#: The adaptive arm's update codecs: the blockwise ones, no top-k. Top-k costs far more
#: accuracy per round (adapt/compression.py), and a planner that underestimates a link
#: (e.g. when the shaper's queue drops packets and CPU is short) would send it from fast
#: hosts too (a run at size mid did, and its held-out loss rose after the second round).
ADAPTIVE_CODECS = ["raw", "fp16", "int8", "int4"]

ARMS: dict[str, list[str]] = {
    "diloco": ["adapt.enabled=false", "training.overlap=false"],
    "adaptive": ["adapt.enabled=true", "training.overlap=true", f"adapt.codecs={json.dumps(ADAPTIVE_CODECS)}",
                 "training.link_fragments=4"],
}


# --- the coordinator, inside its namespace ----------------------------------------------


def coordinator_main(spec_path: str, out_path: str) -> None:
    """Runs one HyperGPU arm's coordinator; writes its figures to ``out_path``."""
    import logging

    from hypergpu.adapt import AdaptivePlanner
    from hypergpu.config import load_config
    from hypergpu.events import EventBus
    from hypergpu.round import Planner, StaticPlanner

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    spec = json.loads(Path(spec_path).read_text())
    cfg = load_config(None, spec["overrides"])
    events = EventBus()
    planner: Planner
    if cfg.adapt.enabled:
        planner = AdaptivePlanner(cfg, publish=events.publish)
    else:
        planner = StaticPlanner(cfg, codec=spec["codec"], down_codec=spec["codec"])
    out = asyncio.run(_drive(cfg, planner, events, spec))
    Path(out_path).write_text(json.dumps(out, default=str))


async def _drive(cfg: Any, planner: Any, events: Any, spec: dict[str, Any]) -> dict[str, Any]:
    from hypergpu.adapt import AdaptivePlanner
    from hypergpu.coordinator import Coordinator
    from hypergpu.launch import local_run
    from hypergpu.round import RoundRecord

    rounds: list[dict[str, Any]] = []
    models: list[Any] = []
    started: list[float] = []
    tokens = [0]
    block = cfg.training.gpt.block_size
    budget, token_budget = float(spec["budget_s"]), int(spec["token_budget"])

    def follow(coord: Coordinator, record: RoundRecord) -> None:
        t = time.perf_counter() - started[0]
        tokens[0] += record.samples * block if record.applied else 0
        # A round's model exists from its close: dated on this monotonic clock (not by the record's
        # wall-clock closed_at: this machine's wall clock was seen to jump ~20 s within an arm), less
        # an evaluation in the loop (only the configured last round's, which the smoke size reaches).
        closed = t - record.eval_s if record.eval_s is not None else t
        rounds.append({**record.as_dict(), "t_s": closed, "told_s": t, "tokens": tokens[0]})
        models.append(coord.model.flat_parameters())  # the model this round left, evaluated after the clock
        # Stop at the budget: once half the last round again would pass it (the expected overrun is then
        # about half a round), or at the token budget.
        if t + 0.5 * record.duration_s >= budget or tokens[0] >= token_budget:
            coord.request_stop()

    async with local_run(cfg, events=events, planner=planner, observers=[follow], chain=False,
                         spawn_nodes=False, token=spec["token"]) as run:
        coord = run.coordinator
        Path(spec["join_file"]).write_text(run.join)
        waiter = asyncio.ensure_future(run.train(join_timeout_s=float(spec["join_timeout_s"])))
        while len(coord.registry.alive()) < cfg.nodes.count and not waiter.done() and coord.round == 0:
            await asyncio.sleep(0.01)
        started.append(time.perf_counter())
        summary = await waiter
    for r, flat in zip(rounds, models):  # the clock has stopped: nothing trains beside these any more
        began = time.perf_counter()
        coord.model.set_flat(flat)
        result = coord.model.evaluate(coord.data.test, task=coord.task, indices=coord.data.eval_indices)
        r.update(test_loss=result.loss, eval_s=time.perf_counter() - began)
    status = planner.status() if isinstance(planner, AdaptivePlanner) else None
    return {
        "rounds": rounds,
        "summary": summary.as_dict(),
        "params": int(coord.model.layout.total),
        "decisions": list(planner.decisions) if isinstance(planner, AdaptivePlanner) else [],
        "overhead": planner.overhead if isinstance(planner, AdaptivePlanner) else None,
        "knobs": status["knobs"] if status else None,
        "links": status["links"] if status else None,
        "join": run.join,
    }


# --- the arms, from the bench ----------------------------------------------------------


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": PYTHONPATH, **extra}


def _ns_bytes(host: Host) -> tuple[int, int]:
    """(received, sent) bytes at the host's interface."""
    text = subprocess.run(host.exec("cat", "/proc/net/dev"), capture_output=True, text=True, timeout=30).stdout
    for line in text.splitlines()[2:]:
        name, _, rest = line.partition(":")
        if name.strip() == host.dev:
            f = rest.split()
            return int(f[0]), int(f[8])
    return 0, 0


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _stop(procs: list[subprocess.Popen[bytes]], wait_s: float) -> list[int | None]:
    deadline = time.monotonic() + wait_s
    codes: list[int | None] = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            codes.append(None)
    return codes


def run_hypergpu_arm(arm: str, coord_host: Host, node_hosts: list[Host], size: dict[str, Any],
                     tmp: Path) -> dict[str, Any]:
    work = tmp / arm
    work.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(18)
    spec = {
        "overrides": [*overrides(size, tmp, coord_host.ip), *ARMS[arm]],
        "codec": "fp16", "token": token, "budget_s": size["budget_s"][arm], "token_budget": size["token_budget"],
        "join_file": str(work / "join"), "join_timeout_s": 300,
    }
    (work / "spec.json").write_text(json.dumps(spec))
    (work / "join").unlink(missing_ok=True)  # a join file left by an earlier run would name a dead port
    before = {h.netns: _ns_bytes(h) for h in node_hosts}
    t0 = time.perf_counter()
    with open(work / "coordinator.log", "wb") as log:
        driver = subprocess.Popen(
            coord_host.exec(sys.executable, str(Path(__file__).resolve()), "coordinator",
                            str(work / "spec.json"), str(work / "out.json")),
            env=_env(), stdout=log, stderr=subprocess.STDOUT)
    nodes: list[subprocess.Popen[bytes]] = []
    try:
        join_file = work / "join"
        while not join_file.exists():
            if driver.poll() is not None or time.perf_counter() - t0 > 300:
                raise RuntimeError(f"{arm}: the coordinator never listened:\n{_tail(work / 'coordinator.log')}")
            time.sleep(0.1)
        time.sleep(0.1)  # the file's text is written in one call; let it land
        join = join_file.read_text().strip()
        for i, host in enumerate(node_hosts):
            cmd = host.exec(
                *NODE_NICE, sys.executable, "-m", "hypergpu.cli", "node", "--join", join, "--name", f"node-{i}",
                "--index", str(i), "--profile", "custom", "--latency-ms", str(LATENCY_MS),
                "--device", "cpu", "--threads", "1", "--seed", str(1000 * (i + 1)), "--heartbeat", "2.0",
                # each host its own key, the same in every arm (names stay bound to it across the arms)
                "--key-file", str(tmp / "node-keys" / f"node-{i}.key"))
            with open(work / f"node-{i}.log", "wb") as log:
                nodes.append(subprocess.Popen(cmd, env=_env(HYPERGPU_TOKEN=token), stdout=log,
                                              stderr=subprocess.STDOUT))
        limit = 300 + 2.5 * size["budget_s"][arm]
        try:
            code = driver.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{arm}: not done after {limit:.0f} s:\n{_tail(work / 'coordinator.log')}") from None
        if code != 0 or not (work / "out.json").exists():
            raise RuntimeError(f"{arm}: the coordinator exited {code}:\n{_tail(work / 'coordinator.log')}")
        node_codes = _stop(nodes, NODE_LEAVE_S)
    finally:
        _stop([driver, *nodes], 0.1)
    out: dict[str, Any] = json.loads((work / "out.json").read_text())
    after = {h.netns: _ns_bytes(h) for h in node_hosts}
    out["link_bytes"] = [{"received": after[h.netns][0] - before[h.netns][0],
                          "sent": after[h.netns][1] - before[h.netns][1]} for h in node_hosts]
    out["node_exit_codes"] = node_codes
    out["arm_wall_s"] = time.perf_counter() - t0
    return out


def _cpu_s(pid: int) -> float | None:
    """CPU seconds (user + system, every thread) the live process ``pid`` has used."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class DdpArm:
    """(a) on its own ten hosts, shaped as the HyperGPU arms' are, alongside them: started first,
    told its budget once (c)'s time to the target is known (``ddp_budget``), stopped when its
    clock passes it. Its ranks mostly wait on the links; the CPU they use is sampled each second
    (``cpu_s``) and reported."""

    def __init__(self, hosts: list[Host], size: dict[str, Any], tmp: Path, tokens_per_step: int) -> None:
        self.hosts, self.work = hosts, tmp / "ddp"
        self.work.mkdir(parents=True, exist_ok=True)
        for stale in ("budget", "rank-0.json"):
            (self.work / stale).unlink(missing_ok=True)
        spec = {
            "overrides": overrides(size, tmp, hosts[0].ip), "world": len(hosts),
            "master": f"{hosts[0].ip}:{DDP_PORT}", "budget_file": str(self.work / "budget"), "timeout_s": 7200,
            "min_steps": size["ddp_min_steps"], "max_steps": max(1, size["token_budget"] // tokens_per_step),
            "eval_every": size["ddp_eval_every"], "out_dir": str(self.work), "threads": 1,
        }
        (self.work / "spec.json").write_text(json.dumps(spec))
        self.before = [_ns_bytes(h) for h in hosts]
        self.t0 = time.perf_counter()
        self.procs: list[subprocess.Popen[bytes]] = []
        for r, host in enumerate(hosts):
            with open(self.work / f"rank-{r}.log", "wb") as log:
                self.procs.append(subprocess.Popen(
                    host.exec(*NODE_NICE, sys.executable, str(HERE / "ddp_worker.py"), str(self.work / "spec.json"),
                              str(r)),
                    env=_env(GLOO_SOCKET_IFNAME=host.dev, OMP_NUM_THREADS="1"), stdout=log, stderr=subprocess.STDOUT))
        self.cpu = [0.0] * len(hosts)
        self.done = threading.Event()
        self.sampler = threading.Thread(target=self._sample, daemon=True)
        self.sampler.start()

    def _sample(self) -> None:
        while not self.done.wait(1.0):
            for r, p in enumerate(self.procs):
                used = _cpu_s(p.pid) if p.poll() is None else None
                self.cpu[r] = max(self.cpu[r], used or 0.0)

    def progress(self) -> dict[str, Any] | None:
        """Rank 0's figures so far (None: none written yet)."""
        path = self.work / "rank-0.json"
        return dict(json.loads(path.read_text())) if path.exists() else None

    def _check(self) -> None:
        """Raises with its log if a rank failed (once rank 0 stopped, the others' errors are expected)."""
        if self.procs[0].poll() == 0:
            return
        failed = [(r, c) for r, p in enumerate(self.procs) if (c := p.poll()) is not None and c != 0]
        if failed:
            r = failed[0][0]
            raise RuntimeError(f"ddp: ranks exited {failed}:\n{_tail(self.work / f'rank-{r}.log')}")

    def s_per_step(self) -> float:
        """DDP's mean seconds per step so far, once it has taken one."""
        while not (p := self.progress()) or not p["step_s"]:
            self._check()
            if time.perf_counter() - self.t0 > 3600:
                raise RuntimeError(f"ddp: no step in an hour:\n{_tail(self.work / 'rank-0.log')}")
            time.sleep(1.0)
        return statistics.fmean(p["step_s"])

    def set_budget(self, budget_s: float) -> None:
        """Rank 0 reads it before each step and while one runs."""
        self.budget_s = budget_s
        (self.work / "budget").write_text(str(budget_s))

    def finish(self) -> dict[str, Any]:
        """Waits for rank 0 to stop at its budget (or the token budget), then stops the others."""
        budget_s, rank0 = self.budget_s, self.procs[0]
        deadline = time.perf_counter() + budget_s + 1800  # past the budget: a step's length at most, and more
        while rank0.poll() is None:
            self._check()
            if time.perf_counter() > deadline:
                raise RuntimeError(f"ddp: not done {budget_s + 1800:.0f} s on:\n{_tail(self.work / 'rank-0.log')}")
            time.sleep(0.5)
        out = self.progress()
        if rank0.returncode != 0 or out is None:
            raise RuntimeError(f"ddp: rank 0 exited {rank0.returncode}:\n{_tail(self.work / 'rank-0.log')}")
        after = [_ns_bytes(h) for h in self.hosts]
        time.sleep(1.5)  # a last CPU sample of the ranks still waiting on rank 0
        self.stop()
        out["exit_codes"] = [p.returncode for p in self.procs]
        out["link_bytes"] = [{"received": a[0] - b[0], "sent": a[1] - b[1]} for a, b in zip(after, self.before)]
        out["budget_s"] = budget_s
        out["arm_wall_s"] = time.perf_counter() - self.t0
        out["cpu_s"] = sum(self.cpu[1:]) + max(self.cpu[0], out["cpu_s"])
        return out

    def stop(self) -> None:
        self.done.set()
        _stop(self.procs, 0.1)


def run_ddp_replay(size: dict[str, Any], tmp: Path, arms: dict[str, dict[str, Any]],
                   s_per_step: float) -> dict[str, Any]:
    """DDP's steps taken again in one process without the links (``ddp_worker.py SPEC replay``),
    from the same initial model on the same batches: the steps holding the tokens (c) trained
    (its loss against DDP's at equal tokens at each of its evaluations), then on to the target,
    up to ``REPLAY_FACTOR`` times (c)'s training time in DDP's measured steps (``s_per_step``):
    how many steps DDP needs."""
    target, _ = target_of(size, arm_curves(arms))
    tokens_c = arms["adaptive"]["rounds"][-1]["tokens"]
    work = tmp / "ddp"
    spec = json.loads((work / "spec.json").read_text())
    spec.update(target=target, cover_steps=math.ceil(tokens_c / info_tokens_per_step(size)),
                max_steps=math.ceil(REPLAY_FACTOR * arms["adaptive"]["rounds"][-1]["t_s"] / s_per_step),
                eval_every=1, threads=os.cpu_count() or 1)
    (work / "replay-spec.json").write_text(json.dumps(spec))
    with open(work / "replay.log", "wb") as log:
        code = subprocess.run([sys.executable, str(HERE / "ddp_worker.py"), str(work / "replay-spec.json"), "replay"],
                              env=_env(), stdout=log, stderr=subprocess.STDOUT, timeout=1800).returncode
    if code != 0:
        raise RuntimeError(f"ddp replay exited {code}:\n{_tail(work / 'replay.log')}")
    return dict(json.loads((work / "replay.json").read_text()))


# --- figures ---------------------------------------------------------------------------


def curve(arm: dict[str, Any], start: tuple[int, float] | None) -> list[tuple[int, float, float]]:
    """(tokens, held-out loss, seconds) points, the untrained model's first."""
    pts = [(start[0], start[1], 0.0)] if start else []
    if "rounds" in arm:
        pts += [(r["tokens"], r["test_loss"], r["t_s"]) for r in arm["rounds"] if r.get("test_loss") is not None]
    else:
        pts += [(e["tokens"], e["loss"], e["t_s"]) for e in arm["evals"] if e["step"] > 0]
    return pts


def time_to(points: list[tuple[int, float, float]], target: float, *, between: bool = True) -> float | None:
    """When the curve reached ``target``: linearly interpolated between the last evaluation
    above it and the first at or below it (``between``), else that first evaluation's time.
    Evaluations come once a round (minutes apart): the first one at or below the target
    overstates the time by up to a round, for either arm."""
    for (_, l0, t0), (_, l1, t1) in zip([(0, float("inf"), 0.0), *points], points):
        if l1 <= target:
            return t1 if not between or l0 == float("inf") or l0 == l1 else t0 + (t1 - t0) * (l0 - target) / (l0 - l1)
    return None


def loss_at(points: list[tuple[int, float, float]], tokens: int) -> float | None:
    """Held-out loss at ``tokens``, linearly interpolated between two evaluations of a
    trained model; None outside them (a line from the untrained model's loss to the
    first evaluation would overstate the loss of a curve that falls steeply there)."""
    trained = [p for p in points if p[0] > 0]
    for (t0, l0, _), (t1, l1, _) in zip(trained, trained[1:]):
        if t0 <= tokens <= t1:
            return l0 if t1 == t0 else l0 + (l1 - l0) * (tokens - t0) / (t1 - t0)
    return trained[-1][1] if trained and trained[-1][0] == tokens else None


def _node_figures(arm: dict[str, Any], links: list[Link]) -> dict[str, Any]:
    lb = arm["link_bytes"]
    out: dict[str, Any] = {
        "link_mb_sent": [round(b["sent"] / 1e6, 2) for b in lb],
        "link_mb_received": [round(b["received"] / 1e6, 2) for b in lb],
        "link_mb_per_node_mean": statistics.fmean((b["sent"] + b["received"]) / 1e6 for b in lb),
    }
    if "summary" in arm:
        nodes = sorted(arm["summary"]["nodes"], key=lambda n: n["node_id"])
        out["payload_mb_up"] = [round(n["bytes_received"] / 1e6, 2) for n in nodes]
        out["payload_mb_down"] = [round(n["bytes_sent"] / 1e6, 2) for n in nodes]
        util = [n["utilisation"] for n in nodes]
        out["utilisation"] = util
        fast = [u for u, link in zip(util, links) if link.rate_bit and link.rate_bit >= 20 * MBIT and u is not None]
        out["utilisation_min_ge20mbit"] = min(fast) if fast else None
    return out


def _choices(arm: dict[str, Any]) -> dict[str, Any]:
    """The H, batch, codecs and fragments the rounds assigned, per node."""
    per: dict[str, dict[str, list[Any]]] = {}
    for r in arm["rounds"]:
        for n, a in r["assignments"].items():
            d = per.setdefault(n, {"H": [], "batch": [], "codec": [], "fragments": []})
            d["H"].append(a["local_steps"])
            d["fragments"].append(a.get("fragments", 1))
            d["batch"].append(a["batch_size"] * a["accumulation"])
            d["codec"].append(a["codec"])
    hs = [h for d in per.values() for h in d["H"]]
    return {
        "mean_H": statistics.fmean(hs) if hs else None,
        "per_node": {n: {"rounds": len(d["H"]), "H_mean": round(statistics.fmean(d["H"]), 1),
                         "batch_last": d["batch"][-1], "codecs": sorted(set(d["codec"])),
                         "fragments": sorted(set(d["fragments"]))}
                     for n, d in sorted(per.items(), key=lambda kv: int(kv[0]))},
        "excluded_rounds": sum(len(r["excluded"]) for r in arm["rounds"]),
    }


def _mean_eval_s(arm: dict[str, Any]) -> float | None:
    """The mean seconds an arm's rounds took to evaluate (None: none evaluated)."""
    took = [r["eval_s"] for r in arm["rounds"] if r.get("eval_s") is not None]
    return statistics.fmean(took) if took else None


def round_log(arm: dict[str, Any]) -> list[str]:
    """One line per round: when it closed, how long it took, its held-out loss (and how long
    that evaluation took), and per answering node its batch x H (/ the fragments its update
    went in), codec, compute and idle seconds and weight (late updates marked so)."""
    lines = []
    for r in arm["rounds"]:
        loss = f"{r['test_loss']:.4f}" if r.get("test_loss") is not None else "-"
        cells = []
        for late, answers in ((False, r["nodes"]), (True, r["late"])):
            for n, a in sorted(answers.items(), key=lambda kv: int(kv[0])):
                job = r["assignments"].get(n)
                work = f"{job['batch_size'] * job['accumulation']}x{job['local_steps']}" if job and not late else "?"
                work += f"/{job['fragments']}" if job and not late and job.get("fragments", 1) > 1 else ""
                cells.append(f"{n}{'(late r' + str(a['round']) + ')' if late else ''}:{work} {a['codec']} "
                             f"c{a['compute_s']:.0f} i{a['idle_s']:.0f} w{a['weight']:.2f}")
        out = ", ".join(f"{n} ({why})" for n, why in sorted(r["excluded"].items(), key=lambda kv: int(kv[0])))
        loss += f" e{r['eval_s']:.1f}" if r.get("eval_s") is not None else ""
        lines.append(f"r{r['round']} t{r['t_s']:.0f} d{r['duration_s']:.0f} loss {loss}"
                     f"{' out ' + out if out else ''} | {'; '.join(cells)}")
    return lines


def arm_curves(arms: dict[str, dict[str, Any]]) -> dict[str, list[tuple[int, float, float]]]:
    """Every arm's curve, from the untrained model's loss where DDP's rank 0 has evaluated it."""
    start = untrained(arms)
    return {name: curve(arm, start) for name, arm in arms.items() if name in ARM_NAMES}


def untrained(arms: dict[str, dict[str, Any]]) -> tuple[int, float] | None:
    """(tokens, held-out loss) of the untrained model, as DDP's rank 0 evaluated it (None: not yet)."""
    evals = arms["ddp"]["evals"] if "ddp" in arms else []
    return next(((e["tokens"], e["loss"]) for e in evals if e["step"] == 0), None)


def ddp_budget(size: dict[str, Any], arms: dict[str, dict[str, Any]]) -> float:
    """(a)'s budget: ``DDP_FACTOR`` times (c)'s time to the target at its first evaluation at or
    below it (the target is one of the losses both HyperGPU arms reached, so (c) has reached it)."""
    curves = arm_curves(arms)
    t_c = time_to(curves["adaptive"], target_of(size, curves)[0], between=False)
    assert t_c is not None
    return DDP_FACTOR * t_c


def target_of(size: dict[str, Any], curves: dict[str, list[tuple[int, float, float]]]) -> tuple[float, str]:
    """The target held-out loss and the rule that set it (see the module doc)."""
    best = {name: min(loss for _, loss, _ in pts) for name, pts in curves.items()}
    fixed = size.get("target")
    if fixed is not None and best["diloco"] <= fixed and best["adaptive"] <= fixed:
        return float(fixed), "fixed"
    return max(best["diloco"], best["adaptive"]), "best loss both HyperGPU arms reached"


def _ddp_estimate(arms: dict[str, dict[str, Any]], t_c: float | None) -> dict[str, Any]:
    """DDP's time to the target from the replay's step count and DDP's measured seconds per step."""
    replay, ddp = arms.get("ddp_replay"), arms["ddp"]
    if replay is None or not ddp["step_s"] or not t_c:
        return {}
    s_per_step = statistics.fmean(ddp["step_s"])
    steps = replay["steps_to_target"]
    seconds = (steps if steps is not None else replay["steps"]) * s_per_step
    measured = {e["step"]: e["loss"] for e in ddp["evals"]}
    return {
        # The replay follows DDP's path: its held-out loss at the steps DDP evaluated.
        "ddp_replay_max_loss_diff_vs_ddp": max(
            (abs(e["loss"] - measured[e["step"]]) for e in replay["evals"] if e["step"] in measured), default=None),
        "ddp_replay_steps": replay["steps"], "ddp_replay_steps_to_target": steps,
        "ddp_replay_curve": [(e["step"], round(e["loss"], 4)) for e in replay["evals"]],
        "ddp_estimated_time_to_target_s": seconds if steps is not None else None,
        # Not reached within the replay's steps: DDP needs more than that many steps.
        "speedup_adaptive_vs_ddp_estimated": seconds / t_c,
        "speedup_adaptive_vs_ddp_estimated_is_lower_bound": steps is None,
    }


def vs_ddp_replay(size: dict[str, Any], arms: dict[str, dict[str, Any]],
                  points: list[tuple[int, float, float]]) -> list[tuple[int, float, float]]:
    """(tokens, this curve's held-out loss, DDP's at the same tokens) at each of the curve's
    evaluations that DDP's replayed steps reach (interpolated between two of them)."""
    replay = arms.get("ddp_replay")
    per = info_tokens_per_step(size)
    ddp = [(e["step"] * per, e["loss"], 0.0) for e in replay["evals"]] if replay else []
    return [(tok, loss, round(at, 4)) for tok, loss, _ in points
            if tok > 0 and (at := loss_at(ddp, tok)) is not None]


def figures(size: dict[str, Any], arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ddp, b, c = arms["ddp"], arms["diloco"], arms["adaptive"]
    start = untrained(arms)
    curves = arm_curves(arms)
    best = {name: min(loss for _, loss, _ in pts) for name, pts in curves.items()}
    target, rule = target_of(size, curves)
    times = {name: time_to(pts, target) for name, pts in curves.items()}
    at_eval = {name: time_to(pts, target, between=False) for name, pts in curves.items()}
    clock = {"ddp": ddp["train_s"], "diloco": b["rounds"][-1]["t_s"], "adaptive": c["rounds"][-1]["t_s"]}
    t_c = times["adaptive"]

    def speedup(over: str, t: dict[str, float | None] = times) -> float | None:
        # An arm that never got there counts with its whole training time: a lower bound.
        return (t[over] or clock[over]) / t["adaptive"] if t["adaptive"] else None

    tokens = {"ddp": ddp["tokens"], "diloco": b["rounds"][-1]["tokens"], "adaptive": c["rounds"][-1]["tokens"]}
    s_per_step = statistics.fmean(ddp["step_s"]) if ddp["step_s"] else None
    tokens_c = next((tok for tok, loss, _ in curves["adaptive"] if loss <= target), None)
    equal = min(tokens.values())
    equal_hg = min(tokens["diloco"], tokens["adaptive"])
    at_equal = {name: loss_at(pts, equal) for name, pts in curves.items()}
    at_ddp = {name: loss_at(pts, tokens["ddp"]) for name, pts in curves.items()}
    ddp_final = ddp["evals"][-1]["loss"]
    vs_c_ddp = vs_ddp_replay(size, arms, curves["adaptive"])
    links = size["links"]
    info: dict[str, Any] = {
        "size": size["name"],
        "links": [link.describe() for link in links],
        "params": c["params"],
        "raw_update_s_at_20mbit": c["params"] * 4 * 8 / (20 * MBIT),
        "global_batch_tokens": info_tokens_per_step(size),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "target_loss": target,
        "target_rule": rule,
        "initial_loss": start[1] if start else None,
        **{f"{n}_time_to_target_s": times[n] for n in ARM_NAMES},
        **{f"{n}_time_to_target_at_eval_s": at_eval[n] for n in ARM_NAMES},
        **{f"{n}_reached": times[n] is not None for n in ARM_NAMES},
        **{f"{n}_train_s": clock[n] for n in ARM_NAMES},
        **{f"{n}_tokens": tokens[n] for n in ARM_NAMES},
        **{f"{n}_best_loss": best[n] for n in ARM_NAMES},
        **{f"{n}_final_loss": curves[n][-1][1] for n in ARM_NAMES},
        "speedup_adaptive_vs_ddp": speedup("ddp"),
        "speedup_adaptive_vs_ddp_is_lower_bound": times["ddp"] is None,
        "speedup_adaptive_vs_diloco": speedup("diloco"),
        "speedup_adaptive_vs_diloco_is_lower_bound": times["diloco"] is None,
        "speedup_adaptive_vs_diloco_at_eval": speedup("diloco", at_eval),
        # at the lowest loss both HyperGPU arms reached (the target when the size fixes none)
        "speedup_adaptive_vs_diloco_at_best_both_reached": _ratio_at(curves, max(best["diloco"], best["adaptive"])),
        **_ddp_estimate(arms, t_c),
        "equal_tokens": equal,
        **{f"{n}_loss_at_equal_tokens": at_equal[n] for n in ARM_NAMES},
        "hypergpu_equal_tokens": equal_hg,
        **{f"{n}_loss_at_hypergpu_equal_tokens": loss_at(curves[n], equal_hg) for n in ("diloco", "adaptive")},
        # (a)'s final-loss criterion where (a) gets there: at equal tokens, against its replayed path
        "adaptive_vs_ddp_replay_at_equal_tokens": vs_c_ddp,
        "adaptive_gap_vs_ddp_replay_max": max((c / a - 1 for _, c, a in vs_c_ddp), default=None),
        # (c)'s final loss against DDP's at the same tokens (None: the replay fell short of them)
        "adaptive_gap_vs_ddp_replay_final": next(
            (c / a - 1 for tok, c, a in vs_c_ddp if tok == tokens["adaptive"]), None),
        "ddp_final_loss_at_its_tokens": ddp_final,
        "adaptive_loss_at_ddp_tokens": at_ddp["adaptive"],
        "adaptive_gap_vs_ddp_at_ddp_tokens": (at_ddp["adaptive"] / ddp_final - 1) if at_ddp["adaptive"] else None,
        "ddp_budget_s": ddp["budget_s"],
        "ddp_stopped_by_budget": ddp["stopped_by_budget"],
        # (a) ran alongside (b) and (c) on hosts of its own: the CPU its ranks took from the 2 cores
        "ddp_cpu_s": ddp["cpu_s"],
        "ddp_mean_cores_used": ddp["cpu_s"] / ddp["arm_wall_s"],
        "ddp_steps": ddp["steps"],
        "ddp_s_per_step": s_per_step,
        # Not measured: DDP's measured seconds per step times the steps holding the tokens (c)
        # trained to reach the target (DDP may need fewer tokens for the same loss, or more).
        "ddp_projected_s_for_adaptive_tokens_to_target": (
            tokens_c / info_tokens_per_step(size) * s_per_step if tokens_c and s_per_step else None),
        "ddp_step_s": [round(s, 2) for s in ddp["step_s"]],
        "diloco_rounds": len(b["rounds"]),
        "adaptive_rounds": len(c["rounds"]),
        "diloco_mean_round_s": statistics.fmean(r["duration_s"] for r in b["rounds"]),
        "adaptive_mean_round_s": statistics.fmean(r["duration_s"] for r in c["rounds"]),
        # the held-out evaluation of one round's model, after the arm's clock stopped
        "diloco_mean_eval_s": _mean_eval_s(b),
        "adaptive_mean_eval_s": _mean_eval_s(c),
        "diloco_H": size["local_steps"],
        "adaptive_choices": _choices(c),
        "adaptive_planner_overhead": c["overhead"],
        "adaptive_refusals": c["summary"].get("refusals"),
        # What the planner believed of each link at the end (against the kernel's rates above).
        "adaptive_planner_links": {
            n: {"est_mbit_s": round(v["throughput_Bps"] * 8 / 1e6, 2),
                "rtt_ms": None if v["rtt_ms"] is None else round(v["rtt_ms"], 1),
                "loss": None if v["loss"] is None else round(v["loss"], 4), "quality": v["quality"]}
            for n, v in (c.get("links") or {}).items()},
        "adaptive_decisions": [
            f"r{d['round']} node {d['node']}: {d['old']} -> {d['new']} ({d['reason']})"
            for d in c["decisions"] if d["knob"] in ("codec", "local_steps", "rollback", "selection")][:80],
        **{f"{n}_{k}": v for n in ARM_NAMES for k, v in _node_figures(arms[n], links).items()},
        **{f"{n}_arm_wall_s": arms[n]["arm_wall_s"] for n in ARM_NAMES},
        "curves": {n: [(t, round(loss, 4), round(s, 1)) for t, loss, s in pts] for n, pts in curves.items()},
    }
    return info


def _ratio_at(curves: dict[str, list[tuple[int, float, float]]], loss: float) -> float | None:
    """(b)'s time to ``loss`` over (c)'s, both interpolated."""
    b, c = time_to(curves["diloco"], loss), time_to(curves["adaptive"], loss)
    return b / c if b and c else None


def info_tokens_per_step(size: dict[str, Any]) -> int:
    """Tokens in one global batch: ``batch`` blocks on every node host."""
    return int(size["batch"] * len(size["links"]) * size["block"])


def _table(info: dict[str, Any]) -> str:
    rows: list[tuple[str, ...]] = [("", "ddp (a)", "diloco (b)", "adaptive (c)")]

    def fmt(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, bool):
            return "yes" if v else "no"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    for label, key in (("time to target s", "time_to_target_s"),
                       ("  (first eval at/below) s", "time_to_target_at_eval_s"),
                       ("train s", "train_s"), ("tokens", "tokens"),
                       ("best loss", "best_loss"), ("final loss", "final_loss"),
                       ("loss @ equal tokens", "loss_at_equal_tokens"),
                       ("loss @ (b)/(c) equal tokens", "loss_at_hypergpu_equal_tokens"),
                       ("link MB/node (mean)", "link_mb_per_node_mean"),
                       ("min util >=20Mbit", "utilisation_min_ge20mbit"), ("arm wall s", "arm_wall_s")):
        rows.append((label, *(fmt(info.get(f"{n}_{key}")) for n in ("ddp", "diloco", "adaptive"))))
    width = [max(len(r[i]) for r in rows) for i in range(4)]
    return "\n".join("  " + "  ".join(c.ljust(width[i]) for i, c in enumerate(r)) for r in rows)


def run_all(size: dict[str, Any], tmp: Path) -> dict[str, Any]:
    from hypergpu.config import load_config
    from hypergpu.data.run_data import prepare_run_data

    n = len(size["links"])
    # Host 0: the coordinator's, unshaped; then the HyperGPU arms' node hosts; then DDP's, shaped alike.
    links = [Link(), *size["links"], *size["links"]]
    with netns_hosts.hosts(links) as topo:
        missing = netns_hosts.reachable(topo)
        if missing:
            raise RuntimeError(f"hosts unreachable from the coordinator's: {missing}")
        coord, node_hosts, ddp_hosts = topo.hosts[0], topo.hosts[1:n + 1], topo.hosts[n + 1:]
        # Prepare (and cache) the corpus once, off every arm's clock.
        prepare_run_data(load_config(None, overrides(size, tmp, coord.ip)))
        ddp = DdpArm(ddp_hosts, size, tmp, info_tokens_per_step(size))
        try:
            arms: dict[str, dict[str, Any]] = {}
            arms["diloco"] = run_hypergpu_arm("diloco", coord, node_hosts, size, tmp)
            arms["adaptive"] = run_hypergpu_arm("adaptive", coord, node_hosts, size, tmp)
            ddp.set_budget(ddp_budget(size, arms))
            # Off the links, while DDP finishes: the replay's CPU only slows DDP's compute, which
            # is a sliver of its steps.
            arms["ddp_replay"] = run_ddp_replay(size, tmp, arms, ddp.s_per_step())
            arms["ddp"] = ddp.finish()
        finally:
            ddp.stop()
        drops = topo.dropped()
    info = figures(size, arms)
    info["kernel_loss_drops"] = sum(drops.values())
    info["round_log"] = {name: round_log(arms[name]) for name in ("diloco", "adaptive")}
    return info


def test_overlap_and_diloco_against_ddp_on_kernel_shaped_links(benchmark, tmp_path) -> None:
    reason = netns_hosts.why_unavailable()
    if reason:
        pytest.skip(reason)
    if benchmark.disabled:
        size = SMOKE
    else:
        size = SIZES[os.environ.get("HYPERGPU_WAN_SIZE", "full")]
    out: dict[str, Any] = {}

    def all_arms() -> None:
        out.update(run_all(size, tmp_path))

    try:
        benchmark.pedantic(all_arms, rounds=1, iterations=1)
    except netns_hosts.NetnsUnavailable as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    benchmark.extra_info.update(out)
    print(f"\nissue 14 benchmark, size {size['name']}: {len(size['links'])} node hosts "
          f"({', '.join(out['links'])}), {out['params']:,} parameters, target loss {out['target_loss']:.4f} "
          f"({out['target_rule']}), load average {out['load_avg_1m_at_end']:.2f} at the end")
    print(_table(out))
    for key, value in out.items():
        if key not in ("curves", "round_log"):
            print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    for name, pts in out["curves"].items():
        print(f"  curve {name}: {pts}")
    for name, lines in out["round_log"].items():
        print(f"  rounds {name}:" + "".join(f"\n    {line}" for line in lines))
    assert out["ddp_steps"] >= 1 and out["diloco_rounds"] >= 1 and out["adaptive_rounds"] >= 1
    # DDP trained its whole budget (DDP_FACTOR x (c)'s time to the target) unless its token budget came first
    per = info_tokens_per_step(size)
    assert out["ddp_train_s"] >= out["ddp_budget_s"] or out["ddp_tokens"] == size["token_budget"] // per * per, out
    assert all(c == 0 for c in out.get("node_exit_codes", []) if c is not None)


def test_ddp_budget_is_its_factor_times_adaptive_time_to_target() -> None:
    """With no target fixed, (b) bottoms out at 2.9, so that is the target; (c) first evaluates
    at or below it at 150 s, and DDP's budget is DDP_FACTOR x that. With FULL's fixed 2.95, which
    both reached, (c) got there at 100 s."""
    arms = {"diloco": {"rounds": [{"test_loss": 3.2, "t_s": 100.0, "tokens": 1},
                                  {"test_loss": 2.9, "t_s": 400.0, "tokens": 2}]},
            "adaptive": {"rounds": [{"test_loss": 3.0, "t_s": 50.0, "tokens": 1},
                                    {"test_loss": 2.95, "t_s": 100.0, "tokens": 2},
                                    {"test_loss": 2.85, "t_s": 150.0, "tokens": 3}]}}
    assert DDP_FACTOR == 10.0
    assert ddp_budget({**FULL, "target": None}, arms) == 10.0 * 150.0
    assert FULL["target"] == 2.95 and ddp_budget(FULL, arms) == 10.0 * 100.0
    arms["adaptive"]["rounds"] = arms["adaptive"]["rounds"][:2]  # (c) short of 2.9: the target is its 2.95
    assert ddp_budget(FULL, arms) == 10.0 * 100.0
    arms["adaptive"]["rounds"] = []
    with pytest.raises(ValueError):  # (c) evaluated nothing: there is no target to time
        ddp_budget(FULL, arms)


def test_adaptive_against_ddp_replay_at_equal_tokens() -> None:
    """Only evaluations within the replay's steps count, DDP's loss interpolated between steps."""
    per = info_tokens_per_step(FULL)
    arms = {"ddp_replay": {"evals": [{"step": 0, "loss": 5.0}, {"step": 1, "loss": 4.0}, {"step": 3, "loss": 3.0}]}}
    points = [(0, 5.0, 0.0), (2 * per, 3.3, 10.0), (5 * per, 2.9, 20.0)]
    assert vs_ddp_replay(FULL, arms, points) == [(2 * per, 3.3, 3.5)]
    assert vs_ddp_replay(FULL, {}, points) == []


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "coordinator":
        coordinator_main(sys.argv[2], sys.argv[3])
    else:
        sys.exit(f"usage: {sys.argv[0]} coordinator SPEC OUT (the bench runs this inside the coordinator's namespace)")
