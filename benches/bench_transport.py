"""Transport speed against plain TCP on loopback, measured in the same run.

* goodput of one large message over the (unshaped) QUIC transport vs the
  same bytes over a TCP socket (asyncio streams);
* round-trip latency of small messages, QUIC vs TCP.

Ratios land in ``extra_info``. Under ``--benchmark-disable`` each runs once,
quickly, as a smoke test.
"""

from __future__ import annotations

import asyncio
import statistics
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from hypergpu.transport import Connection, Server, TransportConfig, connect
from hypergpu.wire import encode_frame

LARGE = 32 << 20
SMALL = 256
PINGS = 200


@dataclass
class Links:
    loop: asyncio.AbstractEventLoop
    server: Server
    node: Connection
    peer: Connection
    tcp_server: asyncio.Server
    tcp_reader: asyncio.StreamReader
    tcp_writer: asyncio.StreamWriter
    tcp_peer_reader: asyncio.StreamReader
    tcp_peer_writer: asyncio.StreamWriter

    def run(self, coro):
        return self.loop.run_until_complete(coro)


@pytest.fixture(scope="module")
def links() -> Iterator[Links]:
    loop = asyncio.new_event_loop()

    async def setup() -> Links:
        config = TransportConfig(max_message_bytes=LARGE * 2)
        server = await Server.listen("127.0.0.1", 0, token="bench", config=config)
        node = await connect(server.join_string, token="bench", name="bench", config=config)
        peer = await server.accept(timeout=5)
        accepted: asyncio.Queue = asyncio.Queue()
        tcp_server = await asyncio.start_server(
            lambda r, w: accepted.put_nowait((r, w)), "127.0.0.1", 0, limit=LARGE * 2
        )
        port = tcp_server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=LARGE * 2)
        peer_reader, peer_writer = await accepted.get()
        return Links(loop, server, node, peer, tcp_server, reader, writer, peer_reader, peer_writer)

    links = loop.run_until_complete(setup())
    yield links

    async def teardown() -> None:
        await links.node.close()
        await links.server.close()
        links.tcp_writer.close()
        await links.tcp_writer.wait_closed()
        links.tcp_peer_writer.close()
        await links.tcp_peer_writer.wait_closed()
        links.tcp_server.close()
        await links.tcp_server.wait_closed()

    loop.run_until_complete(teardown())
    loop.close()


async def quic_transfer(links: Links, frame: bytes) -> None:
    send = asyncio.ensure_future(links.node.send(frame))
    got = await links.peer.recv(timeout=60)
    await send
    assert len(got) == len(frame)


async def tcp_transfer(links: Links, frame: bytes) -> None:
    reader = links.tcp_peer_reader
    links.tcp_writer.write(struct.pack("<Q", len(frame)))
    links.tcp_writer.write(frame)
    drain = asyncio.ensure_future(links.tcp_writer.drain())
    (n,) = struct.unpack("<Q", await reader.readexactly(8))
    got = await reader.readexactly(n)
    await drain
    assert len(got) == len(frame)


def best_of(links: Links, fn, frame: bytes, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        links.run(fn(links, frame))
        times.append(time.perf_counter() - t0)
    return min(times)


def test_large_message_goodput_vs_tcp(benchmark, links):
    frame = encode_frame("update", bytes(LARGE))
    benchmark.pedantic(lambda: links.run(quic_transfer(links, frame)), rounds=3, iterations=1, warmup_rounds=0)
    rounds = 1 if benchmark.disabled else 3
    quic_s = best_of(links, quic_transfer, frame, rounds)
    tcp_s = best_of(links, tcp_transfer, frame, rounds)
    quic_bps, tcp_bps = len(frame) * 8 / quic_s, len(frame) * 8 / tcp_s
    benchmark.extra_info.update(
        bytes=len(frame),
        quic_goodput_bps=quic_bps,
        tcp_goodput_bps=tcp_bps,
        quic_vs_tcp_goodput_ratio=quic_bps / tcp_bps,
    )
    print(f"\n{LARGE >> 20} MiB: QUIC {quic_bps / 1e9:.2f} Gbit/s, TCP {tcp_bps / 1e9:.2f} Gbit/s, "
          f"ratio {quic_bps / tcp_bps:.3f}")


async def quic_pings(links: Links, n: int) -> list[float]:
    frame = encode_frame("heartbeat", bytes(SMALL))
    rtts = []
    for _ in range(n):
        t0 = time.perf_counter()
        await links.node.send(frame)
        await links.peer.recv(timeout=5)
        await links.peer.send(frame)
        await links.node.recv(timeout=5)
        rtts.append(time.perf_counter() - t0)
    return rtts


async def tcp_pings(links: Links, n: int) -> list[float]:
    peer_reader, peer_writer = links.tcp_peer_reader, links.tcp_peer_writer
    msg = struct.pack("<Q", SMALL) + bytes(SMALL)
    rtts = []
    for _ in range(n):
        t0 = time.perf_counter()
        links.tcp_writer.write(msg)
        await links.tcp_writer.drain()
        await peer_reader.readexactly(8 + SMALL)
        peer_writer.write(msg)
        await peer_writer.drain()
        await links.tcp_reader.readexactly(8 + SMALL)
        rtts.append(time.perf_counter() - t0)
    return rtts


def test_small_message_round_trip_vs_tcp(benchmark, links):
    benchmark.pedantic(lambda: links.run(quic_pings(links, 1)), rounds=50, iterations=1, warmup_rounds=5)
    n = 20 if benchmark.disabled else PINGS
    quic = statistics.median(links.run(quic_pings(links, n)))
    tcp = statistics.median(links.run(tcp_pings(links, n)))
    benchmark.extra_info.update(
        message_bytes=SMALL,
        quic_rtt_median_us=quic * 1e6,
        tcp_rtt_median_us=tcp * 1e6,
        quic_vs_tcp_rtt_ratio=quic / tcp,
    )
    print(f"\n{SMALL} B round trip: QUIC {quic * 1e6:.0f} us, TCP {tcp * 1e6:.0f} us, ratio {quic / tcp:.2f}")
