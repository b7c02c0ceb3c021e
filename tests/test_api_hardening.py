"""The control plane against an attacker, over real sockets to a real uvicorn server.

Body cap and token checked on headers (the body is refused before it is
sent), WebSocket token / Origin / client cap, Host header, and what the API
may change while it serves (training hyper-parameters only).
"""

from __future__ import annotations

import base64
import json
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

import hypergpu
from hypergpu.api.background import BackgroundApi
from hypergpu.api.security import RateLimiter
from hypergpu.config import load_config

pytestmark = pytest.mark.timeout(120)

MB = 1 << 20
CAP = MB  # api.max_body_bytes by default


def config(*overrides: str):
    return load_config(None, ["nodes.count=2", "data.cache_dir=null", *overrides])


@dataclass
class Served:
    """``hypergpu serve`` in a process of its own: what the measured tests talk to (a server
    in this process would share its interpreter lock with the clients timing it)."""

    url: str
    port: int
    token: str


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    env = dict(os.environ, PYTHONPATH=str(Path(hypergpu.__file__).resolve().parent.parent))
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypergpu.cli", "serve", "--port", "0", "--set", "data.cache_dir=null"],
        cwd=tmp_path_factory.mktemp("served"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    drain = None
    try:
        url, port, token = re.match(r"dashboard: (http://127\.0\.0\.1:(\d+))/#token=(\S+)",
                                    proc.stdout.readline()).groups()
        # keep reading what it prints, so a full pipe never stalls it
        drain = threading.Thread(target=proc.stdout.read, daemon=True)
        drain.start()
        yield Served(url, int(port), token)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if drain is not None:
            drain.join(10)
        proc.stdout.close()


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    with BackgroundApi(config(), presets_dir=tmp_path_factory.mktemp("presets"),
                       rate_limiter=RateLimiter(burst=10_000, per_s=10_000)) as server:
        yield server


def auth(api) -> dict[str, str]:
    return {"Authorization": f"Bearer {api.token}"}


@dataclass
class Upload:
    status: int
    detail: str
    answered_after_s: float  # from the end of the request's headers to the first byte of the answer
    sent_at_answer: int  # bytes the client had sent after the headers when the answer came


def _complete(answer: bytes) -> bool:
    head, sep, body = answer.partition(b"\r\n\r\n")
    length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), None)
    return bool(sep) and length is not None and len(body) >= length


def upload(port: int, head: str, body_size: int, *, chunked: bool = False, timeout_s: float = 30.0) -> Upload:
    """Send ``head``, then stream a ``body_size``-byte body as fast as the server takes it
    until the server answers; the answer, and how much of the body had gone by then."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head.encode())
    start = time.perf_counter()
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    piece = b"x" * (64 * 1024)
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n" if chunked else piece
    # sent: bytes written after the headers (with a chunked body's few bytes of framing)
    sent, pending, answer, answered_at, sent_at_answer = 0, b"", b"", None, 0
    try:
        while not _complete(answer) and time.perf_counter() - start < timeout_s:
            for _, mask in sel.select(timeout=0.5):
                if mask & selectors.EVENT_READ:
                    data = sock.recv(65536)
                    assert data, f"the server hung up without answering ({sent} bytes sent)"
                    if answered_at is None:
                        answered_at, sent_at_answer = time.perf_counter(), sent
                        sel.modify(sock, selectors.EVENT_READ)  # stop sending: the server has answered
                    answer += data
                elif mask & selectors.EVENT_WRITE:
                    if not pending:
                        pending = frame if sent < body_size else (b"0\r\n\r\n" if chunked else b"")
                    n = sock.send(pending) if pending else 0
                    pending, sent = pending[n:], sent + n
                    if sent >= body_size and not pending:
                        sel.modify(sock, selectors.EVENT_READ)  # all sent: wait for the answer
    finally:
        sock.close()
    assert answered_at is not None and _complete(answer), f"no answer within {timeout_s} s ({sent} bytes sent)"
    head_part, _, body = answer.partition(b"\r\n\r\n")
    return Upload(int(head_part.split(b" ")[1]), json.loads(body)["detail"], answered_at - start, sent_at_answer)


def request_head(port: int, method: str, path: str, length: int | None, token: str | None) -> str:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Content-Type: application/json"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    if token:
        lines.append(f"Authorization: Bearer {token}")
    return "\r\n".join(lines) + "\r\n\r\n"


class HealthPoller:
    """GET /health over and over on its own connection, timing each answer."""

    def __init__(self, url: str):
        self.url, self.latencies, self.codes = url, [], []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        with httpx.Client(timeout=30) as http:
            while not self.stop.is_set():
                t = time.perf_counter()
                self.codes.append(http.get(f"{self.url}/health").status_code)
                self.latencies.append(time.perf_counter() - t)
                time.sleep(0.005)

    def __enter__(self) -> HealthPoller:
        self.thread.start()
        while not self.latencies:  # the poller is answered before the uploads begin
            time.sleep(0.005)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


@pytest.mark.parametrize(("token", "status", "detail"), [
    (None, 401, "token required"),
    ("wrong-token-0000", 401, "invalid API token"),
    ("valid", 413, f"request body exceeds {CAP} bytes"),
])
def test_80mb_body_is_refused_before_it_is_sent_while_health_answers(served, token, status, detail):
    total = 80 * MB
    head = request_head(served.port, "PUT", "/api/config", total, served.token if token == "valid" else token)
    with HealthPoller(served.url) as health:
        uploads = []
        for _ in range(5):
            uploads.append(upload(served.port, head, total))
            time.sleep(0.02)  # room for /health between the uploads as well as during them
    for u in uploads:
        assert (u.status, u.detail.startswith(detail)) == (status, True), u
        # The answer came while the client was still sending: the server decided on the
        # headers, and neither waited for the 80 MB nor took them in.
        assert u.sent_at_answer < total, u
    assert set(health.codes) == {200}
    times = sorted(u.answered_after_s for u in uploads)
    health_ms = sorted(1e3 * t for t in health.latencies)
    print(f"\n80 MB body, {'no' if token is None else token} token -> {status}: answered after "
          f"{1e3 * times[0]:.2f}-{1e3 * times[-1]:.2f} ms (5 tries), at most "
          f"{max(u.sent_at_answer for u in uploads) / MB:.1f} MB of 80 sent by then; /health meanwhile: "
          f"{len(health_ms)} answers, median {health_ms[len(health_ms) // 2]:.2f} ms, max {health_ms[-1]:.2f} ms")


def test_chunked_body_is_counted_and_cut_at_the_cap(served):
    u = upload(served.port, request_head(served.port, "PUT", "/api/config", None, served.token), 80 * MB,
               chunked=True)
    assert u.status == 413 and u.detail == f"request body exceeds {CAP} bytes (config api.max_body_bytes)"
    assert CAP < u.sent_at_answer < 80 * MB, u
    print(f"\nchunked 80 MB body with the token: 413 after {u.sent_at_answer / MB:.1f} MB "
          f"({1e3 * u.answered_after_s:.1f} ms)")
    # without the token it is refused on the headers, before any of it is read
    refused = upload(served.port, request_head(served.port, "PUT", "/api/config", None, None), 80 * MB, chunked=True)
    assert refused.status == 401 and refused.sent_at_answer < 80 * MB
    # a chunked body under the cap is read as usual
    with httpx.Client(base_url=served.url, timeout=30) as http:
        held = http.get("/api/config").json()
        headers = {"Authorization": f"Bearer {served.token}", "Content-Type": "application/json"}
        r = http.put("/api/config", headers=headers, content=iter([json.dumps(held).encode()]))
        assert r.status_code == 200 and r.json() == held


def ws_url(api, path: str = "/ws") -> str:
    return api.url.replace("http", "ws") + path


def refused_handshake(api, **kwargs) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as refused, connect(ws_url(api), open_timeout=10, **kwargs):
        pass
    response = refused.value.response
    return response.status_code, json.loads(response.body)["detail"]


def test_websocket_needs_the_token_and_an_allowed_origin(api):
    own = f"http://127.0.0.1:{api.server.port}"
    status, detail = refused_handshake(api, origin="http://evil.example", additional_headers=auth(api))
    assert status == 403 and detail.startswith("WebSocket Origin 'http://evil.example' not allowed")
    status, detail = refused_handshake(api, origin=own)
    assert status == 401 and detail.startswith("token required")
    status, detail = refused_handshake(api, additional_headers={"Authorization": "Bearer wrong-token-0000"})
    assert (status, detail) == (401, "invalid API token")
    # A page of the API's own origin, passing the token as the dashboard does (a subprotocol).
    token = base64.urlsafe_b64encode(api.token.encode()).decode().rstrip("=")
    with connect(ws_url(api), origin=own, subprotocols=["hypergpu", f"hypergpu.token.{token}"]) as ws:
        assert ws.subprotocol == "hypergpu" and json.loads(ws.recv(timeout=5))["type"] == "hello"
    # A program (no Origin) with the header.
    with connect(ws_url(api), additional_headers=auth(api)) as ws:
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"


def test_websocket_clients_are_capped(tmp_path):
    with BackgroundApi(config("api.max_ws_clients=2"), presets_dir=tmp_path) as api:
        headers = auth(api)
        first = connect(ws_url(api), additional_headers=headers)
        second = connect(ws_url(api), additional_headers=headers)
        status, detail = refused_handshake(api, additional_headers=headers)
        assert status == 503
        assert detail == "too many WebSocket clients: 2 connected, at most 2 (config api.max_ws_clients)"
        first.close()
        deadline = time.monotonic() + 10
        while api.server.app.state.access.ws_clients > 1:  # the server notices the close
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with connect(ws_url(api), additional_headers=headers) as third:
            assert json.loads(third.recv(timeout=5))["type"] == "hello"
        second.close()


def test_foreign_host_is_refused(api):
    with httpx.Client(base_url=api.url, timeout=30) as http:
        r = http.get("/health", headers={"Host": "evil.example"})
        assert r.status_code == 400
        assert r.json()["detail"].startswith("Host 'evil.example' is not allowed; allowed: localhost, 127.0.0.1, [::1]")
        r = http.put("/api/config", headers={"Host": "evil.example:80", **auth(api)}, json={})
        assert r.status_code == 400 and "'evil.example:80' is not allowed" in r.json()["detail"]
        for host in ("localhost", f"localhost:{api.server.port}", f"[::1]:{api.server.port}"):
            assert http.get("/health", headers={"Host": host}).status_code == 200, host
    # A WebSocket handshake naming a foreign Host, sent to this server's socket.
    sock = socket.create_connection(("127.0.0.1", api.server.port))
    with pytest.raises(InvalidStatus) as refused, \
            connect(f"ws://evil.example:{api.server.port}/ws", sock=sock, additional_headers=auth(api)):
        pass
    assert refused.value.response.status_code == 400
    assert json.loads(refused.value.response.body)["detail"].startswith(
        f"Host 'evil.example:{api.server.port}' is not allowed")


@pytest.mark.parametrize(("field", "value"), [
    ("chain.rpc_url", "http://attacker.example:8545"),
    ("chain.distributor_address", "0x" + "ab" * 20),
    ("chain.kind", "anvil"),
    ("rewards.pool_wei", 10**30),
    ("api.host", "0.0.0.0"),
    ("api.port", 80),
    ("api.allowed_hosts", ["*"]),
    ("coordinator.host", "0.0.0.0"),
    ("coordinator.checkpoint_dir", "/tmp/elsewhere"),
    ("data.cache_dir", "/tmp/elsewhere"),
    ("training.custom_model", "os:system"),
])
def test_settings_outside_training_are_refused_through_the_api(api, field, value):
    with httpx.Client(base_url=api.url, timeout=30, headers=auth(api)) as http:
        held = http.get("/api/config").json()
        changed = json.loads(json.dumps(held))
        section, key = field.split(".")
        changed[section][key] = value
        for method, path, body in (("PUT", "/api/config", changed),
                                   ("POST", "/api/training/start", {"config": changed}),
                                   ("PUT", "/api/presets/attack", changed)):
            r = http.request(method, path, json=body)
            assert r.status_code == 422, (path, r.text)
            assert r.json()["detail"].startswith(f"{field}: set at startup only"), (path, r.text)
        assert http.get("/api/config").json() == held
        assert http.get("/api/status").json()["state"] == "idle"
        assert "attack" not in [p["name"] for p in http.get("/api/presets").json()]


def test_training_hyper_parameters_change_through_the_api(api):
    with httpx.Client(base_url=api.url, timeout=30, headers=auth(api)) as http:
        held = http.get("/api/config").json()
        tuned = json.loads(json.dumps(held))
        tuned["training"].update(lr=0.05, rounds=7, batch_size=16)
        tuned["adapt"]["enabled"] = True
        tuned["coordinator"]["quorum"] = 0.5
        tuned["nodes"]["count"] = 3
        r = http.put("/api/config", json=tuned)
        assert r.status_code == 200 and r.json() == tuned
        fields = http.get("/api/config/settable").json()
        assert "training" in fields["settable"] and fields["startup_only"] == ["training.custom_model"]
        assert http.put("/api/config", json=held).status_code == 200  # back as it was for the other tests
