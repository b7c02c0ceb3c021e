"""Who may join, and what a peer may cost before it is known (``coordinator.admission``).

A peer is unknown from its first packet until its hello is accepted: its
signature checked and its name's key matched (``hypergpu.coordinator.admission``).
Until then the transport grants it a small receive window, the one
bidirectional stream of the join and, after the join token, one stream for
its hello (96 KiB at most); it is closed when no hello is accepted within
``hello_timeout_s``. Joins in flight are capped, all together and per IP
address, and above ``retry_above`` of them a new peer must first prove that
it receives at its address (a QUIC retry), so spoofed sources hold nothing.
"""

from __future__ import annotations

from pydantic import Field

from hypergpu.config.base import Section


class AdmissionConfig(Section):
    """Limits on joining nodes (see the module doc)."""

    hello_timeout_s: float = Field(
        3.0, ge=0.5, le=60, description="seconds from a peer's TLS handshake until its hello must be accepted; "
        "a peer that has not by then is closed and counted (the transport's hello_timeouts)")
    max_pending: int = Field(256, ge=1, le=100_000, description="joins in flight at once (handshake to accepted "
                             "hello), all peers together; more are refused until some finish")
    max_pending_per_address: int = Field(64, ge=1, le=100_000, description="joins in flight at once from one IP "
                                         "address")
    retry_above: int = Field(16, ge=0, le=100_000, description="joins in flight above which a new peer must first "
                             "prove its address (QUIC retry, one more round trip); 0: every peer")
    max_links_per_key: int = Field(4, ge=1, le=100_000, description="node names one key may have connected at "
                                   "once (the same name again replaces its own stale link)")
