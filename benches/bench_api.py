"""Event latency to a WebSocket client: the control plane's /ws vs a bare server.

Each probe is published in the server's event loop and timed until the
client holds it (``time.time()`` on both ends: same machine). The baseline
sends the same JSON from a bare ``websockets`` server in the same process,
so the ratio is what FastAPI, the EventBus and the resume logic cost.
Distributions (p50/p95/max, ms) and the ratio land in ``extra_info``.
Under ``--benchmark-disable`` it runs once, with fewer probes.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.sync.client import ClientConnection, connect

from hypergpu.api.background import BackgroundApi
from hypergpu.config import load_config

PROBES = 300


def distribution(delays: list[float]) -> dict[str, float]:
    d = sorted(delays)
    return {"n": len(d), "p50_ms": d[len(d) // 2] * 1e3, "p95_ms": d[int(len(d) * 0.95)] * 1e3, "max_ms": d[-1] * 1e3}


def probe(ws: ClientConnection, publish: Callable[[int], None], n: int) -> list[float]:
    delays = []
    for i in range(n):
        publish(i)
        msg = json.loads(ws.recv(timeout=5))
        delays.append(time.time() - msg["time"])
        time.sleep(0.002)
    return delays


class BareServer:
    """A plain websockets server whose loop can be told to send a probe."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.client: ServerConnection | None = None
        self.ready = threading.Event()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self.main(),), daemon=True)

    async def main(self) -> None:
        async def handler(ws: ServerConnection) -> None:
            self.client = ws
            await ws.wait_closed()

        async with serve(handler, "127.0.0.1", 0) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self.ready.set()
            while not self.stop.is_set():
                await asyncio.sleep(0.05)

    def publish(self, i: int) -> None:
        async def send() -> None:
            assert self.client is not None
            await self.client.send(json.dumps({"seq": i, "kind": "alert", "time": time.time(), "data": {"i": i}}))

        asyncio.run_coroutine_threadsafe(send(), self.loop)


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[BackgroundApi, BareServer]]:
    cfg = load_config(None, ["nodes.count=1", "data.cache_dir=null"])
    api = BackgroundApi(cfg, presets_dir=tmp_path_factory.mktemp("presets")).start()
    bare = BareServer()
    bare.thread.start()
    bare.ready.wait(10)
    yield api, bare
    bare.stop.set()
    bare.thread.join(5)
    bare.loop.close()
    api.stop()


def test_ws_event_latency_vs_bare_websockets(benchmark, servers):
    api, bare = servers
    n = 100 if benchmark.disabled else PROBES
    bus = api.service.events

    def publish_api(i: int) -> None:
        api.call_soon(lambda: bus.publish("alert", level="info", message=f"probe {i}"))

    with connect(api.url.replace("http", "ws") + f"/ws?after={bus.last_seq}",
                 additional_headers={"Authorization": f"Bearer {api.token}"}) as ws_api, \
            connect(f"ws://127.0.0.1:{bare.port}") as ws_bare:
        json.loads(ws_api.recv(timeout=5))  # hello
        deadline = time.monotonic() + 5
        while bare.client is None and time.monotonic() < deadline:
            time.sleep(0.01)
        benchmark.pedantic(lambda: probe(ws_api, publish_api, 1), rounds=20, iterations=1, warmup_rounds=2)
        ours = distribution(probe(ws_api, publish_api, n))
        base = distribution(probe(ws_bare, bare.publish, n))
    benchmark.extra_info.update(
        {"api": ours, "bare_websockets": base, "p50_ratio": ours["p50_ms"] / max(base["p50_ms"], 1e-6)}
    )
    print(f"\n/ws: n={ours['n']} p50 {ours['p50_ms']:.2f} ms, p95 {ours['p95_ms']:.2f} ms, max {ours['max_ms']:.2f} ms; "
          f"bare websockets: p50 {base['p50_ms']:.2f} ms, p95 {base['p95_ms']:.2f} ms, max {base['max_ms']:.2f} ms; "
          f"p50 ratio {benchmark.extra_info['p50_ratio']:.2f}")
