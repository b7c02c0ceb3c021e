"""Soak: memory and round rate over a long run, and how fast a stop ends it.

A run of tiny, fast rounds (an MLP with 16 hidden units on digits, one local
step of batch 8, no evaluation) with everything that keeps per-round state
switched on: the control plane serving (a WebSocket client follows ``/ws``
and a poller reads the status, the new metric points, the node and chain
views every second, as the dashboard does), checkpoints every 5 rounds, and
chain epochs every 5 rounds settled on the embedded chain. Every
``SAMPLE_EVERY`` rounds it samples the resident memory (RSS) of the
coordinator (this process) and of every node process; with tracing on, also
the bytes the coordinator's Python heap gained since tracing started
(tracemalloc, started late in the warm-up so most of it runs at full speed). After the
warm-up it fits a line to each series: the slope, in bytes per round, is
what a leak costs. The top tracemalloc growth sites say where growth comes
from; untraced too, the live objects the collector tracks are counted by
type at the warm-up's end and at the end, and the types that gained are
reported. At the last round the run is stopped as SIGTERM stops it
(``TrainingService.shutdown_soon``), and the time to its end is reported, as
is the part of it spent waiting for the chain queue to drain (bounded by
``rewards.flush_timeout_s``), and the rounds per minute at the start and at
the end.

The full run (``make bench``): ``HYPERGPU_SOAK_ROUNDS`` rounds (default
20,000) for each node count in ``HYPERGPU_SOAK_NODES`` (default "2,10"),
the default windows, half the rounds as warm-up (enough to fill every
window), RSS only unless ``HYPERGPU_SOAK_TRACE=1``. It also runs as a
script: ``PYTHONPATH=python python benches/bench_soak.py``. Under
``--benchmark-disable`` a short version runs (2 nodes, small windows so they
fill during the warm-up, tracing after it) and fails on a clear leak: the
coordinator's Python heap growing by ``SMOKE_MAX_SLOPE`` bytes per round or
more.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import statistics
import sys
import threading
import time
import tracemalloc
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from hypergpu.api.app import create_app
from hypergpu.api.server import ApiServer
from hypergpu.api.service import TrainingService
from hypergpu.config import load_config
from hypergpu.config.schema import HyperGPUConfig

pytestmark = pytest.mark.timeout(8 * 3600)

SAMPLE_EVERY = 50
SMOKE_ROUNDS = 400
SMOKE_WARMUP = 200
# Traced from here, the small windows (and the API's 120-round latency window) have turned over by the warm-up's end.
SMOKE_TRACE_FROM = 60
SMOKE_SAMPLE_EVERY = 20
#: A clear leak in the smoke run: the Python heap growing by 2 KB a round (the
#: leaks found for issue 17 grew it by 1-14 KB a round; noise is a few hundred bytes).
SMOKE_MAX_SLOPE = 2048
#: ``HYPERGPU_SOAK_ADAPT=1``: the adaptive planner plans the rounds (its work kept as small as the static one's).
ADAPT = ("adapt.enabled=true", "adapt.min_local_steps=1", "adapt.max_local_steps=2", "adapt.min_batch=8",
         "adapt.max_batch=16")
#: Windows small enough to fill within the smoke's warm-up: what grows after it is a leak.
SMALL_WINDOWS = ("coordinator.metric_history=50", "coordinator.event_window=100", "api.metrics_window=50",
                 "rewards.history_epochs=3")
#: The smoke's epochs are longer: the embedded chain's work, traced, would take most of its time.
SMOKE_SETTINGS = (*SMALL_WINDOWS, "rewards.epoch_rounds=25")


@dataclass
class Sample:
    round: int
    t: float
    coordinator_rss: int
    node_rss: dict[int, int]  # pid -> bytes
    heap: int  # bytes tracemalloc traces, the embedded chain's left out (0 when not tracing)
    chain_heap: int  # bytes tracemalloc traces allocated by the embedded chain's packages
    chain_queue: int  # chain writes not yet sent
    blocks: int = 0  # memory blocks the interpreter holds (sys.getallocatedblocks: free to read, untraced too)


@dataclass
class SoakResult:
    nodes: int
    rounds: int
    warmup: int
    samples: list[Sample] = field(default_factory=list)
    growth_sites: list[str] = field(default_factory=list)
    growth_by_package: dict[str, int] = field(default_factory=dict)  # bytes, warm-up end -> end
    growth_by_type: dict[str, int] = field(default_factory=dict)  # live objects the collector tracks, same span
    ws_events: int = 0
    ws_reconnects: int = 0
    polls: int = 0
    stop_s: float | None = None  # stop request -> the run ended, chain flush included
    settle_s: float | None = None  # of which: waiting for the chain queue to drain
    ended_at_round: int = 0

    def _after_warmup(self) -> list[Sample]:
        return [s for s in self.samples if s.round >= self.warmup]

    @staticmethod
    def slope(series: Sequence[tuple[int, float]]) -> float | None:
        """Least-squares bytes per round."""
        if len(series) < 3:
            return None
        return statistics.linear_regression([float(x) for x, _ in series], [float(y) for _, y in series]).slope

    def coordinator_slope(self) -> float | None:
        return self.slope([(s.round, s.coordinator_rss) for s in self._after_warmup()])

    def blocks_slope(self) -> float | None:
        return self.slope([(s.round, s.blocks) for s in self._after_warmup()])

    def heap_slope(self) -> float | None:
        return self.slope([(s.round, s.heap) for s in self._after_warmup() if s.heap])

    def chain_heap_slope(self) -> float | None:
        return self.slope([(s.round, s.chain_heap) for s in self._after_warmup() if s.heap])

    def node_slopes(self) -> list[float]:
        after = self._after_warmup()
        pids = set.intersection(*(set(s.node_rss) for s in after)) if after else set()
        out = [self.slope([(s.round, s.node_rss[p]) for s in after]) for p in sorted(pids)]
        return [s for s in out if s is not None]

    def rate(self, first: bool, window: int = 5) -> float | None:
        """Rounds per minute over the first (after warm-up) or the last ``window`` sampling intervals."""
        after = self._after_warmup()
        if len(after) < window + 1:
            return None
        pick = after[: window + 1] if first else after[-window - 1:]
        return 60.0 * (pick[-1].round - pick[0].round) / (pick[-1].t - pick[0].t)

    def figures(self) -> dict[str, Any]:
        node_slopes = self.node_slopes()
        return {
            "nodes": self.nodes,
            "rounds": self.ended_at_round,
            "warmup_rounds": self.warmup,
            "coordinator_rss_mb_end": self.samples[-1].coordinator_rss / 1e6 if self.samples else None,
            "coordinator_rss_slope_b_per_round": self.coordinator_slope(),
            "coordinator_heap_slope_b_per_round": self.heap_slope(),
            "coordinator_blocks_slope_per_round": self.blocks_slope(),
            "embedded_chain_heap_slope_b_per_round": self.chain_heap_slope(),
            "node_rss_slope_b_per_round_max": max(node_slopes) if node_slopes else None,
            "node_rss_slope_b_per_round_mean": statistics.fmean(node_slopes) if node_slopes else None,
            "rounds_per_min_start": self.rate(first=True),
            "rounds_per_min_end": self.rate(first=False),
            "chain_queue_at_stop": self.samples[-1].chain_queue if self.samples else None,
            "stop_to_end_s": self.stop_s,
            "chain_flush_s": self.settle_s,
            "ws_events": self.ws_events,
            "ws_reconnects": self.ws_reconnects,
            "api_polls": self.polls,
        }


def soak_config(nodes: int, tmp: Path, *, rounds: int, windows: Sequence[str] = ()) -> HyperGPUConfig:
    """The soak's run; ``windows`` are further settings (window sizes, the adaptive planner)."""
    return load_config(None, [
        f"nodes.count={nodes}",
        "nodes.device='cpu'",
        "training.model='mlp'",
        "training.hidden_sizes=[16]",
        "training.local_steps=1",
        "training.batch_size=8",
        # far more than the soak runs: the soak ends it with a stop, as SIGTERM would
        f"training.rounds={rounds * 10}",
        "training.eval_interval=1000000",
        "training.target_accuracy=null",
        "data.dataset='digits'",
        "data.cache_dir=null",
        "coordinator.round_timeout_s=5.0",
        "coordinator.quorum=1.0",
        "coordinator.checkpoint_every=5",
        f"coordinator.checkpoint_dir='{tmp}/checkpoints'",
        "rewards.enabled=true",
        "rewards.epoch_rounds=5",
        "chain.kind='embedded'",
        f"chain.queue_path='{tmp}/chain/queue.sqlite3'",
        *windows,
    ])


def rss_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, IndexError, ValueError):
        return None


def children_of(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the run's node processes)."""
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may hold spaces: the fields after its closing parenthesis
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            out.append(int(entry.name))
    return out


class Watchers:
    """A WebSocket client on ``/ws`` and a poller of the read views, each on its own thread."""

    def __init__(self, url: str, token: str, poll_s: float = 1.0):
        self.url, self.token, self.poll_s = url, token, poll_s
        self.events = 0
        self.polls = 0
        self.reconnects = 0
        self._last_round = 0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._follow, daemon=True),
                         threading.Thread(target=self._poll, daemon=True)]

    def start(self) -> Watchers:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(10)

    def _follow(self) -> None:
        """Follows the stream as the dashboard does: on a dropped connection it resumes after the last event."""
        headers = {"Authorization": f"Bearer {self.token}"}
        last = 0
        while not self._stop.is_set():
            try:
                with connect(self.url.replace("http", "ws") + f"/ws?after={last}", additional_headers=headers) as ws:
                    while not self._stop.is_set():
                        try:
                            msg = json.loads(ws.recv(timeout=0.5))
                        except TimeoutError:
                            continue
                        if msg.get("type") == "event":
                            last = msg["seq"]
                            self.events += 1
            except (OSError, ConnectionClosed):
                self.reconnects += 1
                self._stop.wait(0.5)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as reply:
            return json.loads(reply.read())

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_s):
            for path in ("/api/status", f"/api/metrics?after={self._last_round}", "/api/nodes", "/api/nodes/0",
                         "/api/blockchain/session"):
                try:
                    body = self._get(path)
                except OSError:
                    continue  # e.g. /api/nodes/0 before the node joined
                if path.startswith("/api/metrics") and body["points"]:
                    self._last_round = body["points"][-1]["round"]
                self.polls += 1


async def soak(nodes: int, rounds: int, tmp: Path, *, warmup: int, every: int = SAMPLE_EVERY,
               trace_from: int | None = None, frames: int = 1, windows: Sequence[str] = (),
               top: int = 12) -> SoakResult:
    """Runs ``rounds`` rounds of ``nodes`` node processes with the API serving and watched, then stops the run.

    With ``trace_from``, tracemalloc runs from that round on. Start it well before the
    warm-up ends: tracing sees only what is allocated after it starts, so the traced bytes
    climb until every window has turned over once, and only then does a flat line mean
    no leak. ``frames`` deep tracebacks name the growth sites (deeper costs more time)."""
    result = SoakResult(nodes=nodes, rounds=rounds, warmup=warmup)
    service = TrainingService(soak_config(nodes, tmp, rounds=rounds, windows=windows))
    app = create_app(service, presets_dir=tmp / "presets")
    server = ApiServer(app, "127.0.0.1", 0)
    await server.start()
    watchers = Watchers(server.url, app.state.token).start()
    me = os.getpid()
    snapshots: list[tracemalloc.Snapshot] = []
    stopped = asyncio.Event()

    counts: list[Counter[str]] = []

    def on_round(record: Any) -> None:
        r = record.round
        if r == trace_from:
            tracemalloc.start(frames)
        if r == warmup:
            counts.append(objects_by_type())
            if tracemalloc.is_tracing():
                snapshots.append(tracemalloc.take_snapshot())
        if r % every == 0:
            heap, chain_heap = traced_heap() if tracemalloc.is_tracing() else (0, 0)
            node_rss = {p: v for p in children_of(me) if (v := rss_of(p)) is not None}
            queued = service.chain.pending_writes() if service.chain is not None else 0
            result.samples.append(Sample(r, time.perf_counter(), rss_of(me) or 0, node_rss, heap, chain_heap, queued,
                                         sys.getallocatedblocks()))
        if r >= rounds and not stopped.is_set():
            counts.append(objects_by_type())
            if tracemalloc.is_tracing():
                snapshots.append(tracemalloc.take_snapshot())
                tracemalloc.stop()
            stopped.set()

    service.round_listeners.append(on_round)
    try:
        await service.start()
        await stopped.wait()
        t0 = time.perf_counter()
        service.shutdown_soon()  # what SIGTERM and Ctrl-C do
        session = await service.wait()
        result.stop_s = time.perf_counter() - t0
        result.ended_at_round = session.result.rounds if session and session.result else 0
        if service.chain is not None and service.chain.settle_times:
            result.settle_s = service.chain.settle_times[-1]
    finally:
        watchers.stop()
        result.ws_events, result.ws_reconnects, result.polls = watchers.events, watchers.reconnects, watchers.polls
        await service.shutdown()
        await server.stop()
        if tracemalloc.is_tracing():
            tracemalloc.stop()
    if len(counts) == 2:
        gained = counts[1]
        gained.subtract(counts[0])
        result.growth_by_type = {k: v for k, v in gained.most_common(top) if v > 0}
    if len(snapshots) == 2:
        result.growth_sites = growth_sites(snapshots[0], snapshots[1], top)
        result.growth_by_package = {k: v for k, v in growth_by_package(snapshots[0], snapshots[1]).items()
                                    if abs(v) >= 10_000}
    return result


#: The embedded chain's packages (an EVM in this process: eth-tester, py-evm and what they use).
CHAIN_PACKAGES = ("eth", "eth_tester", "eth_utils", "eth_hash", "eth_abi", "eth_keys", "eth_account", "eth_typing",
                  "eth_bloom", "trie", "rlp", "Crypto", "web3", "hexbytes", "cytoolz", "toolz", "py_ecc", "ckzg")


def traced_heap() -> tuple[int, int]:
    """(bytes traced outside the embedded chain, bytes the embedded chain's packages hold).

    The embedded chain is an EVM in this process that keeps every block and state it
    made: a chain's history, not the coordinator's state, and out of the coordinator
    with a chain of its own (anvil, a testnet).
    """
    gc.collect()  # garbage in reference cycles waits for the collector: it is not what a run keeps
    snapshot = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    total = sum(s.size for s in snapshot.statistics("filename"))
    chain = snapshot.filter_traces([tracemalloc.Filter(True, f"*/site-packages/{p}/*") for p in CHAIN_PACKAGES])
    in_chain = sum(s.size for s in chain.statistics("filename"))
    return total - in_chain, in_chain


def objects_by_type() -> Counter[str]:
    """Live objects the garbage collector tracks (containers, instances), by type, after a collection:
    cheap enough for an untraced run, and it names what piles up by kind.

    ``gc.get_objects`` also lists a tuple another thread is still building; were that thread to run
    while the list holds it, its resize would fail (a SystemError that killed the settlement thread
    in a soak run). So this thread keeps the interpreter until the list is gone."""
    gc.collect()
    interval = sys.getswitchinterval()
    sys.setswitchinterval(60.0)
    try:
        objects = gc.get_objects()
        by_type = Counter(map(type, objects))
        del objects
    finally:
        sys.setswitchinterval(interval)
    out: Counter[str] = Counter()
    for kind, n in by_type.items():
        out[kind.__qualname__] += n
    return out


def growth_sites(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, top: int) -> list[str]:
    """The allocation sites that grew most, each with its innermost frames (tracemalloc's own left out)."""
    keep = [tracemalloc.Filter(False, tracemalloc.__file__)]
    diff = after.filter_traces(keep).compare_to(before.filter_traces(keep), "traceback")
    out = []
    for stat in [d for d in diff if d.size_diff > 0][:top]:
        frames = " <- ".join(f"{Path(f.filename).name}:{f.lineno}" for f in list(reversed(stat.traceback))[:4])
        out.append(f"{stat.size_diff / 1e3:+.1f} kB ({stat.count_diff:+d} blocks) {frames}")
    return out


def growth_by_package(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> dict[str, int]:
    """Bytes gained between the snapshots by the package that allocated them (innermost frame):
    tells the coordinator's own growth from, e.g., the embedded chain's (eth, trie, rlp)."""
    out: dict[str, int] = {}
    for stat in after.compare_to(before, "filename"):
        parts = Path(stat.traceback[0].filename).parts
        if "site-packages" in parts:
            package = parts[parts.index("site-packages") + 1]
        elif "hypergpu" in parts:
            package = "hypergpu." + parts[parts.index("hypergpu") + 1].removesuffix(".py")
        else:
            package = "python:" + parts[-1]
        out[package] = out.get(package, 0) + stat.size_diff
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def report(result: SoakResult) -> dict[str, Any]:
    info = result.figures()
    print(f"\nsoak, {result.nodes} nodes:")
    for key, value in info.items():
        print(f"  {key}: {value:.4g}" if isinstance(value, float) else f"  {key}: {value}")
    if result.growth_sites:
        print("  top tracemalloc growth sites (end of warm-up -> end):")
        for site in result.growth_sites:
            print(f"    {site}")
    if result.growth_by_type:
        print("  live objects gained by type (end of warm-up -> end): " + ", ".join(
            f"{k} {v:+d}" for k, v in result.growth_by_type.items()))
    if result.growth_by_package:
        span = max(1, result.ended_at_round - result.warmup)
        print("  growth by package (end of warm-up -> end, bytes per round): " + ", ".join(
            f"{k} {v / span:+.0f}" for k, v in result.growth_by_package.items()))
    return info


def full_settings() -> tuple[int, list[int], int, int | None]:
    """(rounds, node counts, warm-up rounds, first traced round) of the full soak, from the environment.

    The warm-up (default: half the run) must outlast the default windows: the event window
    (10,000 events) alone takes some 6,000 rounds of two nodes to fill."""
    rounds = int(os.environ.get("HYPERGPU_SOAK_ROUNDS", "20000"))
    nodes = [int(n) for n in os.environ.get("HYPERGPU_SOAK_NODES", "2,10").split(",") if n.strip()]
    warmup = int(os.environ.get("HYPERGPU_SOAK_WARMUP", str(rounds // 2)))
    trace = os.environ.get("HYPERGPU_SOAK_TRACE", "0") == "1"
    return rounds, nodes, warmup, max(1, warmup // 4) if trace else None


def extra_settings() -> tuple[str, ...]:
    """``HYPERGPU_SOAK_ADAPT=1``: the adaptive planner; ``HYPERGPU_SOAK_SET``: further settings, ';'-separated."""
    extra = ADAPT if os.environ.get("HYPERGPU_SOAK_ADAPT", "0") == "1" else ()
    return (*extra, *(s for s in os.environ.get("HYPERGPU_SOAK_SET", "").split(";") if s.strip()))


def test_soak(benchmark, tmp_path) -> None:
    full = not benchmark.disabled
    results: dict[int, SoakResult] = {}

    def run_all() -> None:
        if full:
            rounds, node_counts, warmup, trace_from = full_settings()
            for n in node_counts:
                results[n] = asyncio.run(soak(n, rounds, tmp_path / f"n{n}", warmup=warmup, trace_from=trace_from,
                                              windows=extra_settings()))
        else:
            results[2] = asyncio.run(soak(2, SMOKE_ROUNDS, tmp_path / "n2", warmup=SMOKE_WARMUP,
                                          every=SMOKE_SAMPLE_EVERY, trace_from=SMOKE_TRACE_FROM,
                                          windows=SMOKE_SETTINGS))

    benchmark.pedantic(run_all, rounds=1, iterations=1)
    for n, result in results.items():
        info = report(result)
        benchmark.extra_info[f"nodes_{n}"] = {**info, "growth_sites": result.growth_sites,
                                               "growth_by_package": result.growth_by_package,
                                               "growth_by_type": result.growth_by_type}
        assert result.ended_at_round >= result.rounds
        if not full:
            slope = result.heap_slope()
            assert slope is not None
            assert slope < SMOKE_MAX_SLOPE, (
                f"the coordinator's Python heap grows {slope:.0f} B/round after the warm-up; growth sites:\n"
                + "\n".join(result.growth_sites))


if __name__ == "__main__":
    import tempfile

    rounds, node_counts, warmup, trace_from = full_settings()
    small = os.environ.get("HYPERGPU_SOAK_SMALL_WINDOWS", "0") == "1"
    every = int(os.environ.get("HYPERGPU_SOAK_EVERY", str(SAMPLE_EVERY)))
    trace_from = int(os.environ.get("HYPERGPU_SOAK_TRACE_FROM", str(trace_from or 0))) or None
    frames = int(os.environ.get("HYPERGPU_SOAK_FRAMES", "1"))
    for n in node_counts:
        with tempfile.TemporaryDirectory() as tmp:
            result = asyncio.run(soak(n, rounds, Path(tmp), warmup=warmup, trace_from=trace_from, every=every,
                                      frames=frames, windows=(*(SMALL_WINDOWS if small else ()), *extra_settings())))
        report(result)
        if os.environ.get("HYPERGPU_SOAK_SAMPLES") == "1":
            for s in result.samples:
                print(f"  sample round {s.round} t {s.t - result.samples[0].t:.1f}s coord {s.coordinator_rss / 1e6:.1f} MB "
                      f"heap {s.heap / 1e3:.0f} kB chain heap {s.chain_heap / 1e3:.0f} kB nodes {[round(v / 1e6, 1) for v in s.node_rss.values()]} MB "
                      f"queue {s.chain_queue} blocks {s.blocks}")
