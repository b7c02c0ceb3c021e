"""Bearer-token check and a per-client rate limit for every write."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

bearer = HTTPBearer(auto_error=False, description="the API token printed at start (or config api.token)")


def new_token() -> str:
    return secrets.token_urlsafe(24)


@dataclass
class RateLimiter:
    """Token bucket per client address: ``burst`` writes at once, ``per_s`` sustained."""

    burst: float = 30.0
    per_s: float = 10.0
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)

    def take(self, client: str) -> float:
        """0 if the write may go ahead, else the seconds until it may."""
        now = time.monotonic()
        tokens, last = self._buckets.get(client, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.per_s)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            return (1.0 - tokens) / self.per_s
        self._buckets[client] = (tokens - 1.0, now)
        return 0.0


def require_writer(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)
) -> None:
    """Dependency of every write: a valid bearer token, within the rate limit."""
    expected: str = request.app.state.token
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "writes need an Authorization: Bearer <token> header",
                            headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(401, "invalid API token", headers={"WWW-Authenticate": "Bearer"})
    limiter: RateLimiter = request.app.state.rate_limiter
    client = request.client.host if request.client else "unknown"
    wait = limiter.take(client)
    if wait > 0:
        raise HTTPException(429, f"too many writes; retry in {wait:.1f} s",
                            headers={"Retry-After": str(max(1, round(wait)))})
