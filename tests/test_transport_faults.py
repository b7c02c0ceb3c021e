"""Faults: partitions, dead peers and heavy loss surface as typed errors in
bounded time, links recover, and large messages arrive intact."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time

import numpy as np
import pytest

from hypergpu import errors
from hypergpu.transport import LinkShape, Server, TransportConfig, connect
from hypergpu.wire import decode_frame, encode_frame

TOKEN = "faults"


@pytest.fixture
async def server():
    srv = await Server.listen(
        "127.0.0.1", 0, token=TOKEN, config=TransportConfig(max_message_bytes=128 << 20, idle_timeout=8.0)
    )
    yield srv
    await srv.close()


async def join(server, idle_timeout=8.0, **kw):
    # QUIC uses the smaller of the two ends' idle timeouts.
    config = TransportConfig(idle_timeout=idle_timeout)
    node = await connect(server.join_string, token=TOKEN, name="node", config=config, **kw)
    return node, await server.accept(timeout=5)


@pytest.mark.timeout(30)
async def test_partition_times_out_then_the_link_recovers(server):
    node, peer = await join(server)
    node.set_shape(LinkShape(loss=1.0))  # both directions of the node's side drop everything
    t0 = time.monotonic()
    send = node.send(encode_frame("update", bytes(100_000)), timeout=1.0, acked=True)
    outcomes = await asyncio.gather(send, peer.recv(timeout=1.0), return_exceptions=True)
    assert all(isinstance(o, errors.TimeoutError) for o in outcomes), outcomes
    assert time.monotonic() - t0 < 2.5
    drops = node.stats().shaper_drops
    assert drops["egress"]["random_loss"] > 0
    # The partition lifts before the idle timeout: the same link carries on.
    node.set_shape(LinkShape())
    frame = encode_frame("heartbeat", b"back")
    await node.send(frame, timeout=5, acked=True)
    assert await peer.recv(timeout=5) == frame


@pytest.mark.timeout(30)
async def test_scheduled_outage_is_bridged_by_quic(server):
    node, peer = await join(server, shape=LinkShape().with_outages([(0.2, 1.0)]))
    await asyncio.sleep(0.3)  # inside the outage
    frame = encode_frame("update", os.urandom(50_000))
    t0 = time.monotonic()
    await node.send(frame, timeout=10, acked=True)
    assert await peer.recv(timeout=10) == frame
    assert time.monotonic() - t0 > 0.8  # held until the link came back
    assert node.stats().shaper_drops["egress"]["outage"] > 0


@pytest.mark.timeout(30)
async def test_dead_peer_surfaces_as_timeout_in_bounded_time(server):
    node, peer = await join(server, idle_timeout=3.0)
    node.set_shape(LinkShape(loss=1.0))  # and it never lifts
    t0 = time.monotonic()
    with pytest.raises(errors.TimeoutError, match="idle timeout"):
        await node.recv()  # no timeout of its own: the idle timeout ends it
    with pytest.raises(errors.TimeoutError, match="idle timeout"):
        await peer.recv()
    elapsed = time.monotonic() - t0
    print(f"dead peer detected after {elapsed:.2f} s (idle_timeout 3 s)")
    assert elapsed < 6
    with pytest.raises(errors.TimeoutError):
        await node.send(encode_frame("heartbeat", b""), timeout=5)


@pytest.mark.slow
@pytest.mark.timeout(240)
async def test_100_mb_arrives_intact_under_5_percent_loss(server):
    node, peer = await join(server, shape=LinkShape(loss=0.05, seed=7))
    payload = np.random.default_rng(0).integers(0, 256, size=100 << 20, dtype=np.uint8)
    digest = hashlib.sha256(payload).hexdigest()
    frame = encode_frame("update", payload)
    t0 = time.monotonic()
    send = asyncio.create_task(node.send(frame, timeout=200))
    got = await peer.recv(timeout=200)
    await send
    elapsed = time.monotonic() - t0
    _, body = decode_frame(got)
    assert hashlib.sha256(body).hexdigest() == digest
    s = node.stats()
    lost = s.shaper_drops["egress"]["random_loss"] + s.shaper_drops["ingress"]["random_loss"]
    print(f"100 MiB under 5% loss each way: {elapsed:.1f} s, {len(frame) * 8 / elapsed / 1e6:.0f} Mbit/s, "
          f"shaper dropped {lost} datagrams, QUIC declared {s.lost_packets} lost")
    assert lost > 1000
