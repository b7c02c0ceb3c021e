"""What the API refuses on a request's headers alone, before anything reads its body.

Two pure ASGI middlewares, outermost first:

* :class:`HostGuard`: the ``Host`` header must be one the API answers to
  (Starlette's ``TrustedHostMiddleware`` decides; the refusal names the
  Host and the allowed ones). A foreign Host is how DNS rebinding reaches
  a server bound to localhost.
* :class:`RequestGuard`: a write needs the token and a body no larger than
  ``api.max_body_bytes`` (by its ``Content-Length``); a ``/ws`` handshake
  needs the token, an allowed ``Origin`` and a free client slot. Both take
  from the client's rate-limit bucket first, so failed token checks count.

A body without a ``Content-Length`` (chunked) is counted as it is read by
Starlette's ``RequestBodyLimitMiddleware``, inside these; its 413 is worded
by :func:`body_too_large`. A refused body is never handed to the app nor
buffered: should the client send it anyway, uvicorn drops it as it arrives.
(The connection is not closed at once: closing with unread bytes sends the
client a reset, which can destroy the refusal before the client reads it.)
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hypergpu.api.security import SAFE_METHODS, RateLimiter, bearer_token, subprotocol_token, token_matches
from hypergpu.config.api import ApiConfig

#: Addresses that bind every interface: no Host header names them.
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::", "[::]"})
#: Close codes for a refused handshake where the server cannot answer it over HTTP.
_WS_CLOSE_CODES = {429: 1013, 503: 1013}
#: True in the task of a WebSocket handshake refused with an HTTP response (the server reads it to
#: tell that refusal from an app that returned without answering: see hypergpu.api.server).
ws_refused: ContextVar[bool] = ContextVar("hypergpu_ws_refused", default=False)


@dataclass
class Refusal:
    status: int
    message: str
    headers: dict[str, str] = field(default_factory=dict)


def body_too_large(limit: int) -> Refusal:
    return Refusal(413, f"request body exceeds {limit} bytes (config api.max_body_bytes)")


def _host_pattern(host: str) -> str:
    # Starlette compares the Host header's host part, which keeps an IPv6 literal's brackets.
    return f"[{host}]" if ":" in host and not host.startswith("[") else host.lower()


@dataclass
class AccessPolicy:
    """Who may use the API, and how much of it: built from ``api`` settings at start."""

    token: str
    limiter: RateLimiter
    hosts: list[str]
    #: False when ``api.allowed_hosts`` is unset: the address the server binds is added.
    hosts_configured: bool
    #: Browser origins, besides the API's own, whose pages may open ``/ws``.
    origins: frozenset[str]
    max_body_bytes: int
    max_ws_clients: int
    ws_clients: int = 0

    @classmethod
    def from_config(cls, api: ApiConfig, token: str, limiter: RateLimiter) -> AccessPolicy:
        configured = api.allowed_hosts is not None
        hosts = list(api.allowed_hosts) if api.allowed_hosts is not None else ["localhost", "127.0.0.1", "::1"]
        policy = cls(
            token=token, limiter=limiter, hosts=[_host_pattern(h) for h in hosts], hosts_configured=configured,
            origins=frozenset(o.lower() for o in [*api.allowed_origins, *api.cors_origins]),
            max_body_bytes=api.max_body_bytes, max_ws_clients=api.max_ws_clients,
        )
        policy.serve_on(api.host)
        return policy

    def serve_on(self, bind_host: str) -> None:
        """The address the server binds is a Host it answers to, unless ``api.allowed_hosts`` says which."""
        pattern = _host_pattern(bind_host)
        if not self.hosts_configured and bind_host not in WILDCARD_ADDRESSES and pattern not in self.hosts:
            self.hosts.append(pattern)

    def origin_allowed(self, origin: str, host: str) -> bool:
        """A configured origin, or the API's own: a page this server served, under the Host it was asked by."""
        origin = origin.lower().rstrip("/")
        scheme, sep, netloc = origin.partition("://")
        return origin in self.origins or (sep == "://" and scheme in ("http", "https") and netloc == host.lower())


async def refuse(scope: Scope, receive: Receive, send: Send, refusal: Refusal) -> None:
    """Answer ``refusal`` as JSON ``{"detail": ...}``, for an HTTP request or a WebSocket handshake."""
    if scope["type"] == "websocket" and "websocket.http.response" not in scope.get("extensions", {}):
        # A server without HTTP refusals of handshakes: close it (the server answers 403).
        reason = refusal.message.encode()[:123].decode(errors="ignore")  # a close reason's limit
        await send({"type": "websocket.close", "code": _WS_CLOSE_CODES.get(refusal.status, 1008), "reason": reason})
        return
    if scope["type"] == "websocket":
        ws_refused.set(True)
    await JSONResponse({"detail": refusal.message}, refusal.status, refusal.headers)(scope, receive, send)


class HostGuard:
    """Only the Host headers in ``policy.hosts`` are answered (the list is read per request,
    so :meth:`AccessPolicy.serve_on` takes effect once the server binds)."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        admitted = False

        async def admit(scope: Scope, receive: Receive, send: Send) -> None:
            nonlocal admitted
            admitted = True
            await self.app(scope, receive, send)

        async def reworded(message: Message) -> None:
            # Starlette's refusal says only "Invalid host header": send one that names the Host.
            if admitted:
                await send(message)
            elif message["type"].endswith("response.body"):
                host = Headers(scope=scope).get("host", "")
                await refuse(scope, receive, send, Refusal(
                    400, f"Host {host!r} is not allowed; allowed: {', '.join(self.policy.hosts)} "
                         "(config api.allowed_hosts)"))

        trusted = TrustedHostMiddleware(admit, allowed_hosts=self.policy.hosts, www_redirect=False)
        await trusted(scope, receive, reworded)


class RequestGuard:
    """Token, rate limit, body size and WebSocket admission, decided on headers alone."""

    def __init__(self, app: ASGIApp, policy: AccessPolicy):
        self.app, self.policy = app, policy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            refusal = self._http_refusal(scope)
        elif scope["type"] == "websocket":
            refusal = self._websocket_refusal(scope)
        else:
            refusal = None
        if refusal is not None:
            await refuse(scope, receive, send, refusal)
        elif scope["type"] == "websocket":
            self.policy.ws_clients += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.policy.ws_clients -= 1
        else:
            await self.app(scope, receive, send)

    def _http_refusal(self, scope: Scope) -> Refusal | None:
        headers = Headers(scope=scope)
        if scope["method"] not in SAFE_METHODS:
            refusal = self._token_refusal(scope, bearer_token(headers),
                                          "writes need an 'Authorization: Bearer <token>' header")
            if refusal is not None:
                return refusal
        length = headers.get("content-length")
        if length is None:
            return None  # chunked, or no body: counted as it is read
        if not length.strip().isdigit():
            return Refusal(400, f"Content-Length {length!r} is not a number of bytes")
        return body_too_large(self.policy.max_body_bytes) if int(length) > self.policy.max_body_bytes else None

    def _websocket_refusal(self, scope: Scope) -> Refusal | None:
        headers = Headers(scope=scope)
        origin = headers.get("origin")
        # Browsers always send an Origin; a client that sends none is not a page, and needs the token all the same.
        if origin is not None and not self.policy.origin_allowed(origin, headers.get("host", "")):
            extra = sorted(self.policy.origins)
            return Refusal(403, f"WebSocket Origin {origin!r} not allowed; allowed: this API's own origin"
                                f"{''.join(', ' + o for o in extra)} (config api.allowed_origins)")
        token = bearer_token(headers)
        refusal = self._token_refusal(scope, token if token is not None else subprotocol_token(scope),
                                      "send 'Authorization: Bearer <token>' or the subprotocol "
                                      "'hypergpu.token.<base64url of the token>'")
        if refusal is None and self.policy.ws_clients >= self.policy.max_ws_clients:
            refusal = Refusal(503, f"too many WebSocket clients: {self.policy.ws_clients} connected, "
                                   f"at most {self.policy.max_ws_clients} (config api.max_ws_clients)")
        return refusal

    def _token_refusal(self, scope: Scope, token: str | None, how: str) -> Refusal | None:
        # The bucket first: a wrong token costs the client as much as a write does.
        client = scope["client"][0] if scope.get("client") else "unknown"
        wait = self.policy.limiter.take(client)
        if wait > 0:
            return Refusal(429, f"too many writes or token checks from {client}; retry in {wait:.1f} s",
                           {"Retry-After": str(max(1, round(wait)))})
        if token is None:
            return Refusal(401, f"token required: {how}", {"WWW-Authenticate": "Bearer"})
        if not token_matches(token, self.policy.token):
            return Refusal(401, "invalid API token", {"WWW-Authenticate": "Bearer"})
        return None
