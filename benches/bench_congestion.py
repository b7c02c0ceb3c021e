"""The transport's congestion controllers on kernel-shaped links, measured in the same run.

Two hosts in network namespaces (``netns_hosts``): a receiver, unshaped, and a
sender behind a 20 Mbit/s kernel link (tbf), once with 2 % random loss (nft)
and once without; the sender's transport adds 50 ms of one-way latency. The
sender sends one frame at a time with each controller on both ends
(``TransportConfig.congestion``) and the receiver times each frame.

Baseline: Cubic, quinn's own default, in the same run. Ratios land in
``extra_info``: BBR's goodput over Cubic's on the lossy link (why BBR is the
default) and on the clean one (what the default costs where nothing is lost).
Under ``--benchmark-disable`` one small frame per case, as a smoke.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import netns_hosts  # noqa: E402
from netns_hosts import Link  # noqa: E402

MBIT = 1_000_000
RATE = 20 * MBIT
LATENCY_MS = 50.0
CONTROLLERS = ("cubic", "bbr")
#: Frame sizes: Cubic needs ~25 s for 3 MB at 2 % loss (about 1 Mbit/s).
FULL_BYTES, SMOKE_BYTES = 3_000_000, 200_000
FRAMES = 2
TOKEN = "bench-congestion"


async def _receive(ip: str, join_file: str, congestion: str, frames: int) -> list[float]:
    from hypergpu.transport import Server, TransportConfig

    server = await Server.listen(ip, 0, token=TOKEN, config=TransportConfig(idle_timeout=60.0, congestion=congestion))
    Path(join_file).write_text(server.join_string)
    peer = await server.accept(timeout=60)
    seconds = []
    for _ in range(frames):
        # The sender announces each frame with a small one, so the clock starts with its first byte.
        await peer.recv(timeout=60)
        began = time.monotonic()
        await peer.recv(timeout=600)
        seconds.append(time.monotonic() - began)
    await server.close()
    return seconds


async def _send(join_file: str, congestion: str, nbytes: int, frames: int) -> None:
    from hypergpu.transport import LinkShape, TransportConfig, connect
    from hypergpu.wire import encode_frame

    config = TransportConfig(idle_timeout=60.0, congestion=congestion)
    link = await connect(Path(join_file).read_text(), token=TOKEN, name="sender",
                         shape=LinkShape(latency_ms=LATENCY_MS), config=config)
    frame = encode_frame("update", os.urandom(nbytes))
    for _ in range(frames):
        await link.send(encode_frame("update", b"next"), timeout=60)
        await link.send(frame, timeout=600, acked=True)
    await asyncio.sleep(1.0)  # the receiver closes first


def _case(topo: netns_hosts.Topology, congestion: str, nbytes: int, work: Path) -> list[float]:
    """Seconds per frame of ``nbytes`` from host 1 to host 0 with ``congestion`` on both ends."""
    receiver, sender = topo.hosts
    join_file, out_file = work / f"join-{congestion}", work / f"out-{congestion}.json"
    join_file.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE.parent / "python"), os.environ.get("PYTHONPATH", "")])}
    me = str(Path(__file__).resolve())
    recv = subprocess.Popen(receiver.exec(sys.executable, me, "receive", receiver.ip, str(join_file), congestion,
                                          str(FRAMES), str(out_file)), env=env)
    try:
        deadline = time.monotonic() + 60
        while not (join_file.exists() and join_file.read_text()):
            if recv.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the {congestion} receiver never listened (exit {recv.poll()})")
            time.sleep(0.05)
        send = subprocess.run(sender.exec(sys.executable, me, "send", str(join_file), congestion, str(nbytes),
                                          str(FRAMES)), env=env, timeout=FRAMES * 600 + 60)
        if recv.wait(timeout=60) or send.returncode:
            raise RuntimeError(f"{congestion}: receiver exit {recv.returncode}, sender exit {send.returncode}")
    finally:
        if recv.poll() is None:
            recv.kill()
    return [float(s) for s in json.loads(out_file.read_text())]


def measure(nbytes: int, work: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"frame_bytes": nbytes, "rate_mbit_s": RATE / MBIT, "one_way_latency_ms": LATENCY_MS}
    for name, loss in (("lossy", 0.02), ("clean", 0.0)):
        with netns_hosts.hosts([Link(), Link(RATE, loss=loss)], subnet="10.78.0") as topo:
            for congestion in CONTROLLERS:
                seconds = _case(topo, congestion, nbytes, work)
                out[f"{name}_{congestion}_s"] = [round(s, 2) for s in seconds]
                # The best frame: the first pays the controller's start-up.
                out[f"{name}_{congestion}_mbit_s"] = round(nbytes * 8 / min(seconds) / MBIT, 2)
        out[f"{name}_bbr_over_cubic"] = round(out[f"{name}_bbr_mbit_s"] / out[f"{name}_cubic_mbit_s"], 2)
    return out


def test_bbr_against_cubic_on_kernel_shaped_links(benchmark, tmp_path) -> None:
    reason = netns_hosts.why_unavailable()
    if reason:
        pytest.skip(reason)
    nbytes = SMOKE_BYTES if benchmark.disabled else FULL_BYTES
    out: dict[str, Any] = {}
    try:
        benchmark.pedantic(lambda: out.update(measure(nbytes, tmp_path)), rounds=1, iterations=1)
    except netns_hosts.NetnsUnavailable as exc:
        pytest.skip(f"cannot create network namespaces here: {exc}")
    benchmark.extra_info.update(out)
    print(f"\ncongestion controllers, {nbytes / 1e6:g} MB frames over {RATE / MBIT:g} Mbit/s, "
          f"{LATENCY_MS:g} ms one way: {json.dumps(out)}")
    for name in ("lossy", "clean"):
        for congestion in CONTROLLERS:
            assert len(out[f"{name}_{congestion}_s"]) == FRAMES  # every frame arrived and was timed


if __name__ == "__main__":
    role = sys.argv[1]
    if role == "receive":
        ip, join_file, congestion, frames, out_file = sys.argv[2:7]
        Path(out_file).write_text(json.dumps(asyncio.run(_receive(ip, join_file, congestion, int(frames)))))
    elif role == "send":
        join_file, congestion, nbytes, frames = sys.argv[2:6]
        asyncio.run(_send(join_file, congestion, int(nbytes), int(frames)))
