"""``/ws``: the event stream (training, node, network, alert, chain, decision).

A client connects with the API token (an ``Authorization: Bearer`` header,
or, from a browser, the subprotocols ``hypergpu`` and
``hypergpu.token.<base64url of the token>``) and ``?after=<seq>`` (the last
sequence number it saw), and gets every event after it still in the window,
then each new one as it is published. The first message says where the
stream starts (``{"type": "hello", "last_seq": ..., "oldest_seq": ...}``),
so a client knows whether it missed events that fell out of the window.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect

from hypergpu.api.security import ws_subprotocol
from hypergpu.events import EventBus

router = APIRouter(tags=["events"])


def _dumps(payload: dict[str, Any]) -> str:
    # Event data come from the engine: NaN/inf become null (JSON has neither),
    # anything not JSON-native is sent as text.
    return json.dumps(_replace_nan(payload), default=str)


def _finite(value: Any) -> bool:
    if isinstance(value, float):
        return value == value and value not in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    return True


def _replace_nan(value: Any) -> Any:
    if isinstance(value, float) and not _finite(value):
        return None
    if isinstance(value, dict):
        return {k: _replace_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_replace_nan(v) for v in value]
    return value


@router.websocket("/ws")
async def events(websocket: WebSocket, after: int = Query(0, ge=0)) -> None:
    """The event stream. The request guard has checked the token, the Origin and the client cap."""
    bus: EventBus = websocket.app.state.service.events
    await websocket.accept(subprotocol=ws_subprotocol(websocket.scope))
    held = bus.since(0)
    await websocket.send_text(_dumps({
        "type": "hello",
        "last_seq": bus.last_seq,
        "oldest_seq": held[0].seq if held else bus.last_seq + 1,
        "resumed_after": after,
    }))

    async def push() -> None:
        async for event in bus.subscribe(min(after, bus.last_seq)):
            await websocket.send_text(_dumps({"type": "event", **event.as_dict()}))

    sender = asyncio.ensure_future(push())
    try:
        # The client sends nothing we need; reading notices when it goes away.
        while not sender.done():
            receiver = asyncio.ensure_future(websocket.receive_text())
            done, _ = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                receiver.result()
            else:
                receiver.cancel()
    except WebSocketDisconnect:  # the client went away: the normal end of a subscription
        pass
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
            await sender
