"""Scripted peers' hellos: signed with a key, as a node's session signs them."""

from __future__ import annotations

from typing import Any

from hypergpu import protocol
from hypergpu.identity import NodeKey, join_fingerprint
from hypergpu.node.protocol import signed_hello
from hypergpu.protocol import Hello, Message
from hypergpu.transport import Connection


def hello_for(link: Connection, join: str, key: NodeKey, **fields: Any) -> Message:
    """The ``hello`` message ``key`` signs for ``link`` (a connection to ``join``)."""
    return Message("hello", signed_hello(Hello(**fields), key, link.challenge, join_fingerprint(join)).as_meta())


async def say_hello(link: Connection, join: str, key: NodeKey | None = None, **fields: Any) -> NodeKey:
    """Send a signed hello on ``link`` (a fresh key unless one is given); returns the key."""
    key = key or NodeKey.generate()
    await link.send(protocol.encode(hello_for(link, join, key, **fields)))
    return key
