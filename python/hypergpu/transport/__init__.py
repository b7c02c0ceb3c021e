"""The QUIC transport between coordinator and nodes, with link shaping.

A coordinator listens and prints its join string; nodes connect with it
(which pins the coordinator's certificate) and a join token. Each message
is one :mod:`hypergpu.wire` frame on its own QUIC stream, so a large update
never holds up a heartbeat. Links can be shaped (delay, jitter, loss, bursty
loss, bandwidth, outages, scheduled changes) below QUIC, so QUIC reacts as
on a real WAN::

    server = await Server.listen("127.0.0.1", 0, token="s3cret")
    conn = await connect(server.join_string, token="s3cret", name="node-3",
                         shape=LinkShape.profile("poor", seed=1),
                         config=TransportConfig(idle_timeout=20.0))
    await conn.send(encode_frame("heartbeat", b""))
    peer = await server.accept()
    frame = await peer.recv(timeout=5.0)

A :class:`LinkShape` applies at one endpoint, to its egress and its ingress
separately: ``latency_ms`` is one-way delay per direction (a symmetric shape
adds it twice to a round trip), ``loss`` a per-datagram probability,
``bandwidth_bps`` a bottleneck with a drop-tail queue of ``queue_bytes``.
Profiles (``LINK_PROFILES``): perfect; good 10-50 ms, 0.1% loss, 100 Mbit/s;
average 50-150 ms, 1%, 20 Mbit/s; poor 150-300 ms, 5%, 5 Mbit/s; unstable
50-500 ms, 10%, 2 Mbit/s. The same seed replays the same decisions
(:meth:`LinkShape.simulate` runs them on a virtual clock).

A :class:`TransportConfig` holds the settings both ends take (size limit,
timeouts, probe interval, receive queue, segmentation offload, the congestion
controller each end sends with: ``"bbr"`` by default, ``"cubic"`` or
``"new_reno"``); its defaults are the Rust core's. :meth:`Connection.stats`
returns a typed :class:`LinkStats` (``as_dict()`` for JSON).

Before a peer is trusted: every connection starts with one bidirectional
stream and a small receive window, enough for the join. The coordinator's
answer to the join carries a fresh 32-byte :attr:`Connection.challenge`,
which a node signs in its own hello. A server listening with a
``hello_timeout`` (the coordinator's ``coordinator.admission.hello_timeout_s``)
then grants one stream for that hello (at most 96 KiB) and nothing else until
:meth:`Connection.authorize`, which must come within the deadline or the link
is closed and counted (``Server.admission()["hello_timeouts"]``). Joins in
flight are capped, all together and per IP address, and above
``retry_above`` of them a new peer must first prove its address (a QUIC
retry). :func:`strangers` plays peers that never say hello, for tests.
"""

from __future__ import annotations

import atexit
import time
from typing import Any

from hypergpu import _core
from hypergpu._core import LINK_PROFILES, LinkShape, LinkStats, TransportConfig

__all__ = ["LINK_PROFILES", "Connection", "LinkShape", "LinkStats", "Server", "TransportConfig", "connect", "new_identity",
           "strangers"]


class Connection:
    """One authenticated link to a peer."""

    __slots__ = ("_inner",)

    def __init__(self, inner: _core.TransportConnection):
        self._inner = inner

    @property
    def peer_name(self) -> str:
        """The name the peer gave when it joined (a node's name, or the coordinator's)."""
        return self._inner.peer_name

    @property
    def remote_address(self) -> tuple[str, int]:
        return self._inner.remote_address

    @property
    def peer_max_message_bytes(self) -> int:
        """The largest payload the peer accepts."""
        return self._inner.peer_max_message_bytes

    @property
    def is_closed(self) -> bool:
        return self._inner.is_closed

    @property
    def challenge(self) -> bytes:
        """This connection's join challenge (32 bytes, fresh per connection): the one the
        coordinator sent, which a node signs in its hello."""
        return self._inner.challenge

    def authorize(self) -> None:
        """The peer's hello was accepted: let it open streams freely (full windows). Until then
        a link of a server with a ``hello_timeout`` takes the one message and grants no more."""
        self._inner.authorize()

    @property
    def is_authorized(self) -> bool:
        return self._inner.is_authorized

    async def send(self, frame: Any, timeout: float | None = None, *, acked: bool = False) -> None:
        """Send one wire frame on its own stream.

        The frame is checked first (header, payload checksum, the peer's size
        limit: :class:`~hypergpu.errors.FrameError` or
        :class:`~hypergpu.errors.MessageTooLargeError`). Waits while the peer
        is behind (flow control), then returns once QUIC holds every byte: it
        retransmits them until acknowledged, and :meth:`close` waits for
        that. With ``acked=True`` it returns only once the peer has
        acknowledged every byte. ``timeout`` bounds the whole call
        (:class:`~hypergpu.errors.TimeoutError`).
        """
        await self._inner.send(frame, timeout, acked=acked)

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next complete, verified frame.

        Raises :class:`~hypergpu.errors.TimeoutError` when nothing arrives in
        ``timeout`` seconds and :class:`~hypergpu.errors.ConnectionClosedError`
        (or the error that ended the link) once the link is down.
        """
        return await self._inner.recv(timeout)

    def stats(self) -> LinkStats:
        """Link metrics: ``srtt_ms``, ``rtt_samples_ms``, ``bytes_sent``,
        ``bytes_received``, ``goodput_bps``, ``lost_packets``, ``lost_bytes``,
        ``congestion_events``, ``cwnd``, ``shaper_drops`` (per direction, per
        cause) and more, as a :class:`LinkStats` (``as_dict()`` for JSON)."""
        return self._inner.stats()

    @property
    def shape(self) -> LinkShape:
        """The shape currently applied to this link (at this end)."""
        return self._inner.shape

    def set_shape(self, shape: LinkShape) -> None:
        """Reshape this link now, e.g. when a round starts."""
        self._inner.set_shape(shape)

    async def close(self, reason: str = "", *, refused: bool = False) -> None:
        """Close the link, telling the peer ``reason``; with ``refused`` as a refusal of the
        peer (its side raises :class:`~hypergpu.errors.AuthError`, which a node does not retry)."""
        await self._inner.close(reason, refused=refused)

    def __repr__(self) -> str:
        host, port = self.remote_address
        return f"Connection(peer_name={self.peer_name!r}, remote={host}:{port})"



def new_identity() -> tuple[bytes, bytes]:
    """A new self-signed certificate and its PKCS#8 key (DER), for :meth:`Server.listen`."""
    return _core.transport_identity()

class Server:
    """The coordinator's endpoint. Create it with :meth:`Server.listen`."""

    __slots__ = ("_inner",)

    def __init__(self, inner: _core.TransportServer):
        self._inner = inner

    @classmethod
    async def listen(
        cls,
        host: str,
        port: int,
        *,
        token: str,
        name: str = "coordinator",
        shape: LinkShape | None = None,
        config: TransportConfig | None = None,
        identity: tuple[bytes, bytes] | None = None,
    ) -> Server:
        """Listen on ``host:port`` (port 0 picks a free one) with a fresh
        self-signed certificate, or the ``identity`` (certificate and PKCS#8
        key, DER: :func:`new_identity`) kept from an earlier run, so the
        fingerprint nodes pin stays the same. ``shape`` shapes every peer's
        link at this end until a connection is given its own shape;
        ``config`` holds the transport settings (defaults when ``None``)."""
        inner = await _core.TransportServer.listen(
            host, port, token=token, name=name, shape=shape, config=config, identity=identity
        )
        return cls(inner)

    @property
    def join_string(self) -> str:
        """``quic://host:port#<sha256 of the certificate>``: what nodes need to join."""
        return self._inner.join_string

    @property
    def fingerprint(self) -> str:
        return self._inner.fingerprint

    @property
    def address(self) -> tuple[str, int]:
        return self._inner.address

    async def accept(self, timeout: float | None = None) -> Connection:
        """The next peer that passed the certificate and token checks."""
        return Connection(await self._inner.accept(timeout))

    def rejections(self) -> list[dict[str, Any]]:
        """Peers turned away or cut off (wrong token, TLS failure, malformed
        frames, oversized messages), most recent last."""
        return self._inner.rejections()

    @property
    def rejection_count(self) -> int:
        return self._inner.rejection_count

    def admission(self) -> dict[str, int]:
        """Joins in flight now (``pending``) and so far: ``admitted``, ``refused_busy`` (over
        the caps), ``retries`` (address validations asked for), ``hello_timeouts``."""
        return self._inner.admission()

    def set_default_shape(self, shape: LinkShape) -> None:
        self._inner.set_default_shape(shape)

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:
        return f"Server({self.join_string!r})"


async def connect(
    join_string: str,
    *,
    token: str,
    name: str,
    shape: LinkShape | None = None,
    config: TransportConfig | None = None,
) -> Connection:
    """Join the coordinator named by ``join_string``.

    ``shape`` shapes both directions of this endpoint (egress and ingress);
    ``config`` holds the transport settings (defaults when ``None``). A
    wrong token or fingerprint raises :class:`~hypergpu.errors.AuthError`
    saying which.
    """
    inner = await _core.transport_connect(join_string, token=token, name=name, shape=shape, config=config)
    return Connection(inner)


async def strangers(
    join_string: str,
    *,
    count: int = 1,
    token: str | None = None,
    streams: int = 1,
    bytes_per_stream: int = 0,
    hold: float = 10.0,
) -> list[dict[str, Any]]:
    """For tests: ``count`` connections (one UDP endpoint) that never say hello. Each completes
    TLS, with ``token`` passes the join, opens ``streams`` streams writing a frame header that
    promises ``bytes_per_stream`` bytes and then the bytes, as far as flow control lets it, and
    holds on until the server closes it or ``hold`` seconds pass. One dict per connection:
    ``connected``, ``joined``, ``bytes_written`` (what the server let in), ``held_s``, ``closed``
    (why it ended, None if it outlived ``hold``)."""
    return await _core.transport_strangers(join_string, count=count, token=token, streams=streams,
                                           bytes_per_stream=bytes_per_stream, hold=hold)


def _settle_runtime() -> None:
    # A runtime thread that has just handed a result to the event loop may
    # still be finishing that call (it released the GIL while waking the
    # loop); let it finish before the interpreter tears down.
    time.sleep(0.05)


atexit.register(_settle_runtime)
