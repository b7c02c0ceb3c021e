"""The control plane's settings (``[api]``): fixed while it serves."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from hypergpu.config.base import Host, Port, Section


class ApiConfig(Section):
    """The control plane (REST + WebSocket); its settings are fixed while it serves."""

    host: Host = "127.0.0.1"
    port: Port = 8080
    token: str | None = Field(None, min_length=8, description="bearer token; unset: a random one, shown at start")
    cors_origins: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    allowed_hosts: list[Annotated[str, Field(
        pattern=r"^(\*|(\*\.)?[\w-]+(\.[\w-]+)*|\[?[0-9a-fA-F.]*:[0-9a-fA-F:.]*\]?)$")]] | None = Field(
        None, min_length=1, description="Host headers answered (a name, an address, '*.example.com', '*' for any); "
        "unset: localhost, 127.0.0.1, ::1 and the address bound unless it is 0.0.0.0 or ::")
    allowed_origins: list[Annotated[str, Field(pattern=r"^https?://[^/\s?#]+$")]] = Field(
        default_factory=list, description="browser origins (scheme://host[:port]) whose pages may open /ws, "
        "besides the API's own and api.cors_origins")
    max_body_bytes: int = Field(1 << 20, ge=1024, le=1 << 30, description="larger request bodies are refused unread (413)")
    max_ws_clients: int = Field(32, ge=1, le=10_000, description="WebSocket clients at once; more are refused (503)")
    metrics_window: int = Field(1000, ge=1, le=10_000_000, description="a run's latest per-round points kept in "
                                "memory; every point is in the session's metrics file, which /api/metrics pages through")
