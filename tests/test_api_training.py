"""The control plane driving a real run: a coordinator, two node processes over QUIC."""

from __future__ import annotations

import json
import time

import httpx
from prometheus_client.parser import text_string_to_metric_families
import pytest
from websockets.sync.client import connect

from hypergpu.api.background import BackgroundApi
from hypergpu.config import load_config

pytestmark = pytest.mark.timeout(240)


def small_run(tmp_path, rounds: int = 40):
    return load_config(None, [
        "nodes.count=2", f"training.rounds={rounds}", "training.model='mlp'", "training.local_steps=4",
        "data.cache_dir=null", "coordinator.checkpoint_every=0", "coordinator.heartbeat_interval_s=0.5",
        f"coordinator.checkpoint_dir='{tmp_path / 'ckpt'}'",
    ])


def wait_for(predicate, timeout_s: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_start_exclude_pause_stop_over_http_and_ws(tmp_path):
    # one real run driven through its whole life: a run per step would take minutes
    with (
        BackgroundApi(small_run(tmp_path), presets_dir=tmp_path / "p") as api,
        httpx.Client(base_url=api.url, timeout=30) as http,
        connect(api.url.replace("http", "ws") + "/ws", additional_headers={"Authorization": f"Bearer {api.token}"}) as ws,
    ):
        auth = {"Authorization": f"Bearer {api.token}"}
        assert json.loads(ws.recv(timeout=5))["type"] == "hello"

        r = http.post("/api/training/start", headers=auth)
        assert r.status_code == 202, r.text
        assert r.json()["session"] == 1
        again = http.post("/api/training/start", headers=auth)
        assert again.status_code == 409 and "already running" in again.json()["detail"]

        # Round events arrive over the WebSocket.
        def next_round():
            while True:
                e = json.loads(ws.recv(timeout=60))
                if e.get("kind") == "training" and e["data"].get("type") == "round":
                    return e["data"]
        first = next_round()
        assert first["round"] >= 1 and first["participants"] == [0, 1]

        nodes = wait_for(lambda: [n for n in http.get("/api/nodes").json() if n["rounds_ok"] > 0], what="nodes")
        assert {n["node_id"] for n in nodes} == {0, 1}
        assert all(n["connected"] and n["rtt_ms"] is not None and 0 <= n["quality"] <= 1 for n in nodes)

        # Exclude node 1: the next rounds go on without it; the decision shows on its detail.
        r = http.post("/api/nodes/1/exclude", headers=auth, json={"reason": "operator test"})
        assert r.status_code == 200, r.text
        last_standing = http.post("/api/nodes/0/exclude", headers=auth)
        assert last_standing.status_code == 409 and "last node" in last_standing.json()["detail"]
        rec = next_round()
        while 1 in rec["participants"]:  # a round planned before the exclusion
            rec = next_round()
        assert rec["participants"] == [0] and rec["excluded"] == {"1": "operator test"}
        detail = http.get("/api/nodes/1").json()
        assert detail["excluded"] == "operator test"
        assert detail["decisions"][-1]["action"] == "exclude"
        assert detail["latency_history"] and detail["rounds"]
        assert http.post("/api/nodes/1/include", headers=auth).status_code == 200
        rec = next_round()
        while rec["participants"] != [0, 1]:
            rec = next_round()

        # Pause holds before the next round; resume goes on.
        assert http.post("/api/training/pause", headers=auth).json()["state"] == "paused"
        assert http.post("/api/training/pause", headers=auth).status_code == 409
        time.sleep(0.3)
        held = http.get("/api/status").json()
        assert held["paused"] is True and held["state"] == "paused"
        time.sleep(1.5)
        assert http.get("/api/status").json()["round"] <= held["round"] + 1  # at most the round in flight
        assert http.post("/api/training/resume", headers=auth).json()["state"] == "running"
        wait_for(lambda: http.get("/api/status").json()["round"] > held["round"] + 1, what="a round after resume")

        status = http.get("/api/status").json()
        assert status["state"] == "running" and 0 < status["progress"] < 1 and status["eta_s"] is not None
        assert status["test_accuracy"] is not None and status["nodes_alive"] == 2
        metrics = http.get("/api/metrics").json()
        assert metrics["label"] == "baseline" and len(metrics["points"]) >= 4
        prom = http.get("/metrics").text
        assert 'hypergpu_rounds_total{applied="true"}' in prom and 'hypergpu_node_bytes_sent_total{node="1"}' in prom
        # Each node's updates, scored by their effect on the held-out loss, in its view and in Prometheus.
        scored = wait_for(lambda: [n for n in http.get("/api/nodes").json() if n["effects_scored"] > 0],
                          what="scored effects")
        for n in scored:
            assert n["effects_harmful"] <= n["effects_scored"] and n["effect_last_round"] >= 1
            assert n["effect_mean"] is not None and n["effect_last"] is not None
            assert n["effect_last_harmful"] in (True, False)
        node = scored[0]["node_id"]
        prom = http.get("/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(prom)}
        counted = {s.labels["node"]: s.value for s in families["hypergpu_node_effects_scored"].samples
                   if s.name.endswith("_total")}
        assert counted[str(node)] >= 1
        assert str(node) in {s.labels["node"] for s in families["hypergpu_node_effect_mean"].samples}
        assert "hypergpu_node_effects_harmful" in families and "hypergpu_node_effect_last" in families

        # Stop: the run ends, the session records it, and stopping again is refused.
        assert http.post("/api/training/stop", headers=auth).json()["state"] == "stopping"
        wait_for(lambda: http.get("/api/status").json()["state"] == "stopped", what="stopped")
        assert http.post("/api/training/stop", headers=auth).status_code == 409
        sessions = http.get("/api/sessions").json()
        assert len(sessions) == 1 and sessions[0]["summary"]["stopped_early"] is True
        assert sessions[0]["summary"]["rounds"] < 40

        # Nothing in any response carries the join token nodes authenticate with.
        join_token = api.service.coordinator.token
        for path in ("/api/status", "/api/nodes", "/api/nodes/0", "/api/metrics", "/api/config", "/api/sessions",
                     "/metrics", "/api/blockchain/session"):
            assert join_token not in http.get(path).text, path

        # A graceful stop left a checkpoint: a resumed start goes on from the round after it.
        stopped_at = sessions[0]["summary"]["rounds"]
        r = http.post("/api/training/start", headers=auth, json={"resume": True})
        assert r.status_code == 202, r.text
        while not (e := json.loads(ws.recv(timeout=60)))["data"].get("type") == "session-started":
            pass  # the first run's events still queued on this socket
        assert e["data"]["session"] == 2 and next_round()["round"] == stopped_at + 1
        assert http.post("/api/training/stop", headers=auth).json()["state"] == "stopping"
        wait_for(lambda: http.get("/api/status").json()["state"] == "stopped", what="stopped again")


def test_websocket_latency_under_100ms(tmp_path):
    """Events reach a WebSocket client within 100 ms of being published (>= 100 events)."""
    n = 150
    with BackgroundApi(small_run(tmp_path)) as api:
        bus = api.service.events
        with connect(api.url.replace("http", "ws") + f"/ws?after={bus.last_seq}",
                     additional_headers={"Authorization": f"Bearer {api.token}"}) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "hello"
            delays = []
            for i in range(n):
                api.call_soon(lambda i=i: bus.publish("alert", level="info", message=f"probe {i}"))
                event = json.loads(ws.recv(timeout=5))
                delays.append(time.time() - event["time"])
                assert event["data"]["message"] == f"probe {i}"
                time.sleep(0.005)
    delays.sort()
    p50, p95, worst = delays[n // 2], delays[int(n * 0.95)], delays[-1]
    print(f"\nWebSocket event latency over {n} events: p50 {p50 * 1e3:.2f} ms, "
          f"p95 {p95 * 1e3:.2f} ms, max {worst * 1e3:.2f} ms")
    assert worst < 0.100


def test_coordinator_exclude_and_include_are_checked_and_published(tmp_path):
    from hypergpu.coordinator import Coordinator
    from hypergpu.errors import UnknownNodeError

    coord = Coordinator(small_run(tmp_path))
    with pytest.raises(UnknownNodeError, match="unknown node id 5"):
        coord.exclude(5, "no such node")
    node = coord.registry.join("node-a")
    coord.exclude(node.node_id, "slow link")
    assert coord.excluded == {node.node_id: "slow link"}
    coord.include(node.node_id)
    coord.include(node.node_id)  # including twice is harmless and not published twice
    decisions = [e.data for e in coord.events.since(0) if e.kind == "decision"]
    assert [d["action"] for d in decisions] == ["exclude", "include"]
    assert decisions[0] == {"node": node.node_id, "action": "exclude", "reason": "slow link", "round": 0}
