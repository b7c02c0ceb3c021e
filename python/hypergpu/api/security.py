"""The API token, how a request carries it, and a per-client rate limit.

Every write (any method but GET, HEAD and OPTIONS) and every ``/ws``
handshake must carry the token; :mod:`hypergpu.api.limits` checks it on the
request's headers, before anything reads a body. Each of those requests,
refused or not, takes from its client's rate-limit bucket, so guessing
tokens is as slow as writing.
"""

from __future__ import annotations

import base64
import binascii
import secrets
import time
from dataclasses import dataclass, field

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.types import Scope

bearer = HTTPBearer(auto_error=False, description="the API token printed at start (or config api.token)")

#: Methods that change nothing: they need no token and are not rate limited.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: The WebSocket subprotocol the server answers with when a client offers it.
WS_PROTOCOL = "hypergpu"
#: A browser cannot set headers on a WebSocket, so it offers the token as a subprotocol:
#: this prefix and the token in base64url (any token then makes a valid protocol name).
WS_TOKEN_PREFIX = "hypergpu.token."


def new_token() -> str:
    return secrets.token_urlsafe(24)


def token_matches(given: str, expected: str) -> bool:
    # Constant time: how long the comparison takes says nothing about the token.
    return secrets.compare_digest(given.encode(), expected.encode())


def bearer_token(headers: Headers) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return (token.strip() or None) if scheme.lower() == "bearer" else None


def subprotocol_token(scope: Scope) -> str | None:
    """The token a WebSocket client offered as ``hypergpu.token.<base64url>``, if it did."""
    for protocol in scope.get("subprotocols", ()):
        if protocol.startswith(WS_TOKEN_PREFIX):
            encoded = protocol[len(WS_TOKEN_PREFIX):]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError):
                return ""  # offered but unreadable: refused as an invalid token, not a missing one
    return None


def ws_subprotocol(scope: Scope) -> str | None:
    """The subprotocol to accept: ours if offered (a browser that offered any needs one back)."""
    return WS_PROTOCOL if WS_PROTOCOL in scope.get("subprotocols", ()) else None


@dataclass
class RateLimiter:
    """Token bucket per client address: ``burst`` requests at once, ``per_s`` sustained."""

    burst: float = 30.0
    per_s: float = 10.0
    #: Past this many clients, those whose bucket has refilled are forgotten.
    max_clients: int = 10_000
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, client: str) -> float:
        """0 if the request may go ahead, else the seconds until it may."""
        now = time.monotonic()
        if client not in self._buckets and len(self._buckets) >= self.max_clients:
            self._forget_idle(now)
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.per_s)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.per_s
        self._buckets[client] = (tokens - 1.0, now)
        return 0.0

    def _forget_idle(self, now: float) -> None:
        # A full bucket is what a new client gets anyway: forgetting it changes nothing.
        idle = [c for c, (tokens, last) in self._buckets.items() if tokens + (now - last) * self.per_s >= self.burst]
        for client in idle:
            del self._buckets[client]


def require_writer(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """Dependency of every write: puts the bearer scheme in the OpenAPI schema, and checks
    the token once more (the request guard has refused requests without it already)."""
    expected: str = request.app.state.token
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "token required: writes need an 'Authorization: Bearer <token>' header",
                            headers={"WWW-Authenticate": "Bearer"})
    if not token_matches(credentials.credentials, expected):
        raise HTTPException(401, "invalid API token", headers={"WWW-Authenticate": "Bearer"})
