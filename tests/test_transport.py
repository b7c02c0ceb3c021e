"""The QUIC transport end to end on loopback: joining, auth, frames, bad
input, timeouts, concurrency, metrics."""

from __future__ import annotations

import asyncio
import json
import statistics
import os
import time

import pytest

from hypergpu import errors
from hypergpu.transport import Connection, LinkShape, LinkStats, Server, TransportConfig, connect
from hypergpu.wire import decode_frame, encode_frame

TOKEN = "s3cret"
pytestmark = pytest.mark.timeout(60)


@pytest.fixture
async def server():
    srv = await Server.listen(
        "127.0.0.1", 0, token=TOKEN, config=TransportConfig(max_message_bytes=1 << 20, idle_timeout=5.0)
    )
    yield srv
    await srv.close()


async def join(server: Server, name: str = "node-1", **kw) -> tuple[Connection, Connection]:
    node = await connect(server.join_string, token=TOKEN, name=name, **kw)
    peer = await server.accept(timeout=5.0)
    return node, peer


async def send_raw(conn: Connection, data: bytes) -> None:
    """Send bytes without the sender-side frame check, as a broken peer would.
    QUIC may acknowledge them before the receiver finds them malformed, so
    the send itself may succeed or see the connection closing."""
    try:
        await conn._inner.send_unchecked(data, 5.0, acked=True)
    except errors.TransportError:
        pass


async def test_join_string_and_round_trip(server):
    assert server.join_string.startswith("quic://127.0.0.1:")
    assert server.join_string.endswith("#" + server.fingerprint)
    assert len(server.fingerprint) == 64
    node, peer = await join(server, "node-3")
    assert peer.peer_name == "node-3"
    assert node.peer_name == "coordinator"
    frame = encode_frame("update", b"\x01\x02\x03" * 1000, round=7, node_id=3)
    await node.send(frame)
    got = await peer.recv(timeout=5.0)
    assert got == frame
    header, payload = decode_frame(got)
    assert (header.kind, header.round, header.node_id) == ("update", 7, 3)
    # And the other way.
    reply = encode_frame("ack", b"ok", round=7)
    await peer.send(reply)
    assert await node.recv(timeout=5.0) == reply
    await node.close("done")
    with pytest.raises(errors.ConnectionClosedError, match="done"):
        await peer.recv(timeout=5.0)


async def test_heartbeat_overtakes_a_large_update(server):
    # A slow link so the large frame takes a while to cross.
    node, peer = await join(server, shape=LinkShape(bandwidth_bps=20_000_000, seed=1))
    big = encode_frame("update", os.urandom(900_000))
    beat = encode_frame("heartbeat", b"")
    big_send = asyncio.create_task(node.send(big, timeout=20))
    await asyncio.sleep(0.05)
    await node.send(beat, timeout=5)
    first = await peer.recv(timeout=10)
    second = await peer.recv(timeout=20)
    await big_send
    assert first == beat
    assert second == big


async def test_wrong_token_is_refused_on_both_sides(server):
    with pytest.raises(errors.AuthError, match="invalid join token"):
        await connect(server.join_string, token="wrong", name="mallory")
    rej = server.rejections()
    assert server.rejection_count == 1
    assert rej[-1]["name"] == "mallory"
    assert "invalid join token" in rej[-1]["reason"]
    # The server keeps serving honest nodes.
    node, peer = await join(server)
    await node.send(encode_frame("heartbeat", b""))
    await peer.recv(timeout=5)


async def test_wrong_fingerprint_is_refused_on_both_sides(server):
    other = await Server.listen("127.0.0.1", 0, token=TOKEN)
    try:
        wrong = server.join_string.split("#")[0] + "#" + other.fingerprint
        with pytest.raises(errors.AuthError, match="fingerprint mismatch") as info:
            await connect(wrong, token=TOKEN, name="n")
        assert server.fingerprint in str(info.value) and other.fingerprint in str(info.value)
        deadline = time.monotonic() + 5
        while server.rejection_count == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert "TLS handshake failed" in server.rejections()[-1]["reason"]
    finally:
        await other.close()


async def test_malformed_frames_close_only_that_connection(server):
    honest, honest_peer = await join(server, "honest")
    bad, bad_peer = await join(server, "bad")
    frame = bytearray(encode_frame("update", b"x" * 100))
    frame[-1] ^= 0xFF  # payload no longer matches its checksum
    with pytest.raises(errors.ChecksumError):
        await bad.send(bytes(frame))  # checked before it leaves
    await send_raw(bad, bytes(frame))
    with pytest.raises(errors.ChecksumError):
        await bad_peer.recv(timeout=5)
    with pytest.raises(errors.ConnectionClosedError, match="malformed frame"):
        await bad.recv(timeout=5)
    reasons = [r["reason"] for r in server.rejections() if r["name"] == "bad"]
    assert reasons and "malformed frame" in reasons[-1] and "checksum" in reasons[-1]
    # Garbage that is not even a frame.
    bad2, bad2_peer = await join(server, "bad2")
    await send_raw(bad2, b"GET / HTTP/1.1\r\n" * 4)
    with pytest.raises(errors.BadMagicError):
        await bad2_peer.recv(timeout=5)
    # Everyone else is still served.
    await honest.send(encode_frame("heartbeat", b"still here"))
    assert decode_frame(await honest_peer.recv(timeout=5))[1] == b"still here"


async def test_oversized_messages_are_refused_unread(server):
    node, peer = await join(server)
    assert node.peer_max_message_bytes == 1 << 20
    too_big = encode_frame("update", bytes((1 << 20) + 1))
    with pytest.raises(errors.MessageTooLargeError):
        await node.send(too_big)  # refused before it leaves
    # A sender that ignores the limit is refused by the receiver, which stops
    # the stream after reading only the header. (Larger than the stream's
    # flow-control window, so it cannot all be delivered and acknowledged
    # before the receiver has read that header and said no.)
    unread = encode_frame("update", bytes(9 << 20))
    with pytest.raises(errors.MessageTooLargeError):
        await node._inner.send_unchecked(unread, 10.0, acked=True)
    with pytest.raises(errors.MessageTooLargeError):
        await node._inner.send_unchecked(unread, 10.0)
    stats = peer.stats()
    assert stats.refused_too_large == 2
    assert stats.bytes_received == 0
    assert "exceeds the limit" in server.rejections()[-1]["reason"]
    # The link is still fine.
    ok = encode_frame("update", bytes(1 << 20))
    await node.send(ok)
    assert await peer.recv(timeout=5) == ok


async def test_a_slow_receiver_pushes_back_on_the_sender(server):
    node, peer = await join(server)
    frame = encode_frame("update", bytes(1 << 20))
    sent = 0
    with pytest.raises(errors.TimeoutError):
        for _ in range(200):  # far more than the receive budget and windows hold
            await node.send(frame, timeout=1.0)
            sent += 1
    # Bounded: the receive budget (16 MiB) plus the connection window (16 MiB).
    assert 10 < sent < 40, sent
    for _ in range(sent):
        assert await peer.recv(timeout=5) == frame
    await node.send(frame, timeout=5)  # flowing again
    assert await peer.recv(timeout=5) == frame


async def test_recv_timeout_is_typed(server):
    node, peer = await join(server)
    t0 = time.monotonic()
    with pytest.raises(errors.TimeoutError):
        await peer.recv(timeout=0.3)
    assert time.monotonic() - t0 < 2
    with pytest.raises(TimeoutError):  # also the builtin
        await node.recv(timeout=0.1)
    with pytest.raises(errors.TimeoutError):
        await server.accept(timeout=0.1)


async def test_fifty_concurrent_connections(server):
    async def one(i: int) -> Connection:
        node = await connect(server.join_string, token=TOKEN, name=f"node-{i}")
        await node.send(encode_frame("hello", b"", node_id=i))
        return node

    nodes = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(50))), 30)
    peers = [await server.accept(timeout=10) for _ in range(50)]
    assert sorted(p.peer_name for p in peers) == sorted(f"node-{i}" for i in range(50))
    frames = await asyncio.wait_for(asyncio.gather(*(p.recv(timeout=10) for p in peers)), 20)
    by_name = {p.peer_name: decode_frame(f)[0].node_id for p, f in zip(peers, frames)}
    assert by_name == {f"node-{i}": i for i in range(50)}
    # Broadcast back to all of them at once.
    reply = encode_frame("params", b"w" * 10_000)
    await asyncio.gather(*(p.send(reply) for p in peers))
    got = await asyncio.gather(*(n.recv(timeout=10) for n in nodes))
    assert all(g == reply for g in got)
    await asyncio.gather(*(n.close() for n in nodes))


async def test_stats_report_the_link(server):
    node, peer = await join(server, shape=LinkShape(latency_ms=20, seed=3))
    frame = encode_frame("update", bytes(200_000))
    for _ in range(3):
        await node.send(frame)
        await peer.recv(timeout=5)
    await asyncio.sleep(1.2)  # a couple of RTT probes
    s = node.stats()
    assert s.bytes_sent == 3 * len(frame) and s.messages_sent == 3
    assert peer.stats().bytes_received == 3 * len(frame)
    assert peer.stats().goodput_bps > 0
    assert s.udp_bytes_sent > s.bytes_sent
    assert s.cwnd > 0 and s.sent_packets > 0
    assert s.rtt_samples_ms, "no RTT probes answered"
    # 20 ms on this end's egress and 20 ms on its ingress: a 40 ms round trip
    # (a probe queued behind data may take longer).
    samples = sorted(s.rtt_samples_ms)
    assert 38 < samples[len(samples) // 2] < 50, samples
    assert 38 < s.srtt_ms < 60
    assert set(s.shaper_drops["egress"]) == {"random_loss", "burst_loss", "queue_full", "outage"}
    assert s.shaper["egress"]["delivered_packets"] > 0
    assert isinstance(s, LinkStats)
    d = json.loads(json.dumps(s.as_dict()))  # the JSON edge
    assert d["bytes_sent"] == s.bytes_sent and d["shaper_drops"] == s.shaper_drops
    assert set(d) == {name for name in dir(s) if not name.startswith("_") and name != "as_dict"}


async def test_idle_link_probes_follow_a_reshape(server):
    """With no traffic at all, the far end's RTT probes show the node's new shape within seconds."""
    node, peer = await join(server, shape=LinkShape(latency_ms=10, seed=4))
    await asyncio.sleep(1.5)
    before = statistics.median(peer.stats().rtt_samples_ms)
    node.set_shape(LinkShape(latency_ms=150, seed=5))
    await asyncio.sleep(3.0)
    after = statistics.median(peer.stats().rtt_samples_ms[-4:])
    assert 18 < before < 40 and 290 < after < 340, (before, after)


async def test_bad_arguments_are_typed(server):
    with pytest.raises(errors.InvalidArgumentError, match="join string"):
        await connect("http://nowhere", token=TOKEN, name="n")
    with pytest.raises(errors.InvalidArgumentError, match="timeout"):
        node, _ = await join(server)
        await node.recv(timeout=-1)
    with pytest.raises(errors.InvalidArgumentError, match="idle_timeout"):
        TransportConfig(idle_timeout=0)
    with pytest.raises(errors.InvalidArgumentError, match="token"):
        await Server.listen("127.0.0.1", 0, token="")


def test_transport_config_defaults_and_validation():
    c = TransportConfig(idle_timeout=3.0, segmentation_offload=False)
    assert (c.idle_timeout, c.segmentation_offload) == (3.0, False)
    assert c.max_message_bytes == TransportConfig().max_message_bytes > 0
    assert "idle_timeout=3.0" in repr(c)
    assert TransportConfig().congestion == "bbr"
    assert [TransportConfig(congestion=n).congestion for n in ("cubic", "new_reno", "bbr")] == ["cubic", "new_reno", "bbr"]
    bad = {"max_message_bytes": 0, "recv_queue": 0, "ping_interval": -1.0, "handshake_timeout": float("nan"),
           "congestion": "vegas"}
    for name, value in bad.items():
        with pytest.raises(errors.InvalidArgumentError, match=name):
            TransportConfig(**{name: value})


def test_forked_child_is_refused_not_hung():
    async def start() -> Server:
        return await Server.listen("127.0.0.1", 0, token=TOKEN)

    srv = asyncio.run(start())
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: must get a clear error, not a hang
        try:
            asyncio.run(Server.listen("127.0.0.1", 0, token=TOKEN))
            msg = b"no error"
        except errors.TransportError as e:
            msg = str(e).encode()
        except BaseException as e:  # noqa: BLE001 - report anything to the parent
            msg = repr(e).encode()
        os.write(write, msg)
        os._exit(0)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    msg = os.read(read, 4096).decode()
    os.close(read)
    assert "fork" in msg, msg
    asyncio.run(srv.close())
