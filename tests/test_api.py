"""The control plane without a run: routes, validation, auth, CORS, presets, Prometheus."""

from __future__ import annotations

import json
import time
import warnings

import pytest
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from hypergpu.api import TrainingService, create_app
from hypergpu.api.security import RateLimiter
from hypergpu.config import load_config

with warnings.catch_warnings():
    # Starlette asks for its httpx fork; the test client works the same with httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    from fastapi.testclient import TestClient

TOKEN = "test-token-0123456789"


def local_client(app):
    # The API answers only Host headers it knows (localhost by default), not the test client's "testserver".
    return TestClient(app, base_url="http://localhost")


@pytest.fixture
def config():
    return load_config(None, ["nodes.count=2", "data.cache_dir=null", "api.cors_origins=['http://dash.example']"])


@pytest.fixture
def client(config, tmp_path):
    app = create_app(TrainingService(config), token=TOKEN, presets_dir=tmp_path / "presets")
    with local_client(app) as c:
        yield c


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def test_probes_and_docs(client):
    for path in ("/health", "/livez", "/readyz"):
        r = client.get(path)
        assert r.status_code == 200 and r.json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert "/api/training/start" in schema["paths"]
    assert "HTTPBearer" in schema["components"]["securitySchemes"]


def test_idle_status_nodes_metrics(client):
    s = client.get("/api/status").json()
    assert s["state"] == "idle" and s["round"] == 0 and s["session"] is None and s["rounds"] == 20
    assert client.get("/api/nodes").json() == []
    assert client.get("/api/metrics").json() == {"session": None, "label": None, "task": "classification", "points": []}
    assert client.get("/api/sessions").json() == []
    csv = client.get("/api/metrics.csv")
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert csv.text.splitlines()[0].startswith("round,time,applied,train_loss")


def test_unknown_ids_are_404(client):
    r = client.get("/api/nodes/7")
    assert r.status_code == 404 and "node" in r.json()["detail"]
    assert client.get("/api/sessions/3").status_code == 404
    assert client.get("/api/metrics", params={"session": 3}).status_code == 404
    assert client.post("/api/nodes/7/exclude", headers=AUTH).status_code == 404


def test_bad_input_names_the_field(client):
    r = client.get("/api/nodes/-1")
    assert r.status_code == 422 and "node_id" in r.json()["message"]
    r = client.put("/api/config", headers=AUTH, json={"training": {"rounds": 0}})
    assert r.status_code == 422 and "training.rounds" in r.json()["message"]
    r = client.post("/api/training/start", headers=AUTH, json={"config": {"nodes": {"count": "many"}}})
    assert r.status_code == 422 and "nodes.count" in r.json()["message"]
    held = client.get("/api/config").json()
    held["nodes"]["count"] = 500
    r = client.post("/api/training/start", headers=AUTH, json={"config": held})
    assert r.status_code == 422 and "nodes.count" in r.json()["detail"]
    r = client.post("/api/nodes/0/exclude", headers=AUTH, json={"reason": ""})
    assert r.status_code == 422 and "reason" in r.json()["message"]
    r = client.put("/api/presets/bad name!", headers=AUTH, json={})
    assert r.status_code == 422 and "name" in r.json()["message"]


def test_controls_refused_when_idle(client):
    for action in ("stop", "pause", "resume"):
        r = client.post(f"/api/training/{action}", headers=AUTH)
        assert r.status_code == 409, action
        assert "no training is running" in r.json()["detail"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/training/start"),
        ("post", "/api/training/stop"),
        ("post", "/api/training/pause"),
        ("post", "/api/training/resume"),
        ("post", "/api/nodes/0/exclude"),
        ("post", "/api/nodes/0/include"),
        ("put", "/api/config"),
        ("put", "/api/presets/p1"),
        ("post", "/api/presets/p1/save"),
        ("post", "/api/presets/p1/load"),
        ("delete", "/api/presets/p1"),
    ],
)
def test_writes_need_the_token(client, method, path):
    r = client.request(method, path, json={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    r = client.request(method, path, json={}, headers={"Authorization": "Bearer wrong-token-xyz"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid API token"
    assert client.get("/api/status").json()["state"] == "idle"  # nothing happened


def test_writes_are_rate_limited(config, tmp_path):
    app = create_app(TrainingService(config), token=TOKEN, presets_dir=tmp_path,
                     rate_limiter=RateLimiter(burst=3, per_s=0.01))
    with local_client(app) as c:
        codes = [c.post("/api/presets/p/save", headers=AUTH).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]
        r = c.post("/api/presets/p/save", headers=AUTH)
        assert int(r.headers["retry-after"]) >= 1 and "too many writes" in r.json()["detail"]
        assert c.get("/api/status").status_code == 200  # reads are not limited


def test_failed_token_checks_count_toward_the_rate_limit(config, tmp_path):
    app = create_app(TrainingService(config), token=TOKEN, presets_dir=tmp_path,
                     rate_limiter=RateLimiter(burst=3, per_s=0.01))
    with local_client(app) as c:
        wrong = {"Authorization": "Bearer guessed-token-1"}
        assert [c.post("/api/training/stop", headers=wrong).status_code for _ in range(3)] == [401, 401, 401]
        # the guesses used the bucket up: the right token waits too, and so does a WebSocket
        r = c.post("/api/presets/p/save", headers=AUTH)
        assert r.status_code == 429 and "token checks" in r.json()["detail"]
        with pytest.raises(WebSocketDenialResponse) as refused, \
                c.websocket_connect("ws://localhost/ws", headers=dict(AUTH)):
            pass
        assert refused.value.status_code == 429


def test_generated_token_when_none_configured(config):
    app = create_app(TrainingService(config))
    assert len(app.state.token) >= 24
    assert create_app(TrainingService(config)).state.token != app.state.token
    configured = config.model_copy(update={"api": config.api.model_copy(update={"token": "from-config-123"})})
    assert create_app(TrainingService(configured)).state.token == "from-config-123"


def test_cors_only_for_configured_origins(client):
    ok = client.options("/api/training/stop", headers={
        "Origin": "http://dash.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization"})
    assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://dash.example"
    bad = client.options("/api/training/stop", headers={
        "Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert bad.status_code == 400 and "access-control-allow-origin" not in bad.headers
    r = client.get("/api/status", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_config_round_trip_without_secrets(config, tmp_path):
    secret = config.model_copy(update={"api": config.api.model_copy(update={"token": "super-secret-token"})})
    app = create_app(TrainingService(secret), presets_dir=tmp_path)
    auth = {"Authorization": "Bearer super-secret-token"}
    with local_client(app) as c:
        body = c.get("/api/config").json()
        assert body["api"]["token"] is None and "super-secret-token" not in c.get("/api/config").text
        body["training"]["rounds"] = 7
        r = c.put("/api/config", headers=auth, json=body)  # no token in it: the server's stays
        assert r.status_code == 200 and r.json()["training"]["rounds"] == 7
        assert c.get("/api/status").json()["rounds"] == 7
        # the guarding token does not change through a config write
        body["api"]["token"] = "attacker-chosen-token"
        r = c.put("/api/config", headers=auth, json=body)
        assert r.status_code == 422 and r.json()["detail"].startswith("api.token: set at startup only")
        assert "attacker-chosen-token" not in r.text
        r = c.put("/api/config", headers={"Authorization": "Bearer attacker-chosen-token"}, json=body)
        assert r.status_code == 401
        c.post("/api/presets/s/save", headers=auth)
        assert "super-secret-token" not in (tmp_path / "s.json").read_text()


def test_presets_save_load_import_export_delete(client):
    assert client.get("/api/presets").json() == []
    cfg = client.get("/api/config").json()
    cfg["training"]["lr"] = 0.05
    r = client.put("/api/presets/fast-lr", headers=AUTH, json=cfg)  # import
    assert r.status_code == 200 and r.json()["name"] == "fast-lr"
    assert client.post("/api/presets/current/save", headers=AUTH).status_code == 200
    assert [p["name"] for p in client.get("/api/presets").json()] == ["current", "fast-lr"]
    exported = client.get("/api/presets/fast-lr").json()
    assert exported["training"]["lr"] == 0.05
    assert client.get("/api/config").json()["training"]["lr"] == 0.001
    r = client.post("/api/presets/fast-lr/load", headers=AUTH)
    assert r.status_code == 200 and "loaded" in r.json()["message"]
    assert client.get("/api/config").json()["training"]["lr"] == 0.05
    assert client.delete("/api/presets/fast-lr", headers=AUTH).status_code == 200
    assert client.get("/api/presets/fast-lr").status_code == 404
    assert client.post("/api/presets/fast-lr/load", headers=AUTH).status_code == 404
    assert client.delete("/api/presets/fast-lr", headers=AUTH).status_code == 404


def test_chain_disabled_without_a_recorder(client):
    for path in ("/api/blockchain/session", "/api/blockchain/contributions"):
        body = client.get(path).json()
        assert body["enabled"] is False and "chain not enabled" in body["reason"]


def test_chain_recorder_is_relayed_without_secrets(config):
    class Recorder:
        def status(self):
            return {"connected": True, "block_number": 12, "queue_depth": 3, "private_key": "0xdead"}

        def contributions(self):
            return [{"node": "node-0", "samples": 100, "reward_wei": 5}]

        def transactions(self):
            return [{"hash": "0xab", "status": "confirmed", "key": "0xbeef"}]

    service = TrainingService(config)
    service.chain = Recorder()
    with local_client(create_app(service, token=TOKEN)) as c:
        s = c.get("/api/blockchain/session").json()
        assert s == {"enabled": True, "reason": None, "connected": True, "block_number": 12, "queue_depth": 3}
        body = c.get("/api/blockchain/contributions").json()
        assert body["contributions"][0]["samples"] == 100
        assert body["transactions"] == [{"hash": "0xab", "status": "confirmed"}]
        assert "hypergpu_chain_queue_depth 3.0" in c.get("/metrics").text


def test_prometheus_exposition(client):
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    for name in ("hypergpu_rounds", "hypergpu_samples", "hypergpu_round_duration_seconds",
                 "hypergpu_node_bytes_sent", "hypergpu_node_quality_ratio", "hypergpu_training_active"):
        assert name in families, name
    assert families["hypergpu_round_duration_seconds"].type == "histogram"
    assert families["hypergpu_training_active"].samples[0].value == 0


def test_each_app_has_its_own_registry(config):
    a, b = create_app(TrainingService(config)), create_app(TrainingService(config))
    assert a.state.metrics_registry is not b.state.metrics_registry


def test_dashboard_and_vendored_chart_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    js = client.get("/static/vendor/chart.umd.js")
    assert js.status_code == 200 and len(js.content) > 100_000


def test_websocket_hello_and_resume(client):
    service = client.app.state.service
    for i in range(3):
        service.events.publish("alert", level="info", message=f"m{i}")
    with client.websocket_connect("ws://localhost/ws?after=1", headers=dict(AUTH)) as ws:
        hello = ws.receive_json()
        assert hello["type"] == "hello" and hello["last_seq"] == 3 and hello["oldest_seq"] == 1
        got = [ws.receive_json() for _ in range(2)]
        assert [e["seq"] for e in got] == [2, 3] and got[0]["data"]["message"] == "m1"
    with pytest.raises(WebSocketDisconnect) as refused, \
            client.websocket_connect("ws://localhost/ws?after=-4", headers=dict(AUTH)) as ws:
        ws.receive_json()
    assert refused.value.code == 1008  # policy violation: a negative sequence number


def test_session_label_names_the_planner_the_run_is_assembled_with(config):
    from hypergpu.adapt import AdaptivePlanner
    from hypergpu.api.sessions import planner_label
    from hypergpu.events import EventBus
    from hypergpu.launch import planner_for
    from hypergpu.round import StaticPlanner

    bus = EventBus()
    static = planner_for(config, bus.publish)
    assert isinstance(static, StaticPlanner) and planner_label(static) == "baseline"
    adaptive = planner_for(config.model_copy(update={"adapt": config.adapt.model_copy(update={"enabled": True})}),
                           bus.publish)
    assert isinstance(adaptive, AdaptivePlanner) and planner_label(adaptive) == "adaptive"


def _record(round_id: int, **evaluated):
    from hypergpu.round import RoundRecord

    return RoundRecord(round=round_id, applied=True, participants=[0, 1], reported=[0, 1], missing=[], excluded={},
                       train_loss=4.0 - round_id / 10, samples=32, duration_s=0.5, model_version=round_id, **evaluated)


@pytest.fixture
def lm_service(tmp_path):
    """A service holding a language-model session whose rounds are records built here (no nodes run)."""
    from hypergpu.api.sessions import Session, metric_point
    from hypergpu.coordinator import Coordinator

    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n" * 40)
    cfg = load_config(None, [
        "nodes.count=2", "training.model='gpt'", "training.optimizer='adamw'", "training.gpt.n_layer=1",
        "training.gpt.n_head=1", "training.gpt.n_embd=16", "training.gpt.block_size=16", "data.dataset='text'",
        f"data.path='{src}'", f"data.cache_dir='{tmp_path / 'cache'}'", "data.eval_samples=8", "rewards.enabled=false",
    ])
    service = TrainingService(cfg)
    service.coordinator = coord = Coordinator(cfg)
    session = Session(1, "baseline", cfg, state="running")
    session.metrics = [
        metric_point(_record(1, test_loss=3.2, test_accuracy=0.21, test_perplexity=24.5, test_bits_per_byte=4.6)),
        metric_point(_record(2)),  # not evaluated: the status keeps the last evaluation
    ]
    service.sessions.append(session)
    # A pass and a bit over the training windows: one epoch done.
    coord.samples = sum(len(s) for s in coord.data.manager.shards) + 5
    return service


def test_language_model_figures_in_status_sessions_metrics(lm_service):
    with local_client(create_app(lm_service, token=TOKEN)) as c:
        s = c.get("/api/status").json()
        assert s["task"] == "lm" and s["epoch"] == 1 and s["round"] == 0
        assert (s["test_loss"], s["test_accuracy"], s["test_perplexity"], s["test_bits_per_byte"]) == (3.2, 0.21, 24.5, 4.6)
        assert s["train_loss"] == pytest.approx(3.8)
        assert c.get("/api/sessions").json()[0]["task"] == "lm"
        assert c.get("/api/sessions/1").json()["task"] == "lm"
        points = c.get("/api/metrics").json()["points"]
        assert [p["test_perplexity"] for p in points] == [24.5, None]
        assert [p["test_bits_per_byte"] for p in points] == [4.6, None]
        header = c.get("/api/metrics.csv").text.splitlines()[0].split(",")
        assert "test_perplexity" in header and "test_bits_per_byte" in header
        families = {f.name: f for f in text_string_to_metric_families(c.get("/metrics").text)}
        assert families["hypergpu_test_perplexity"].samples[0].value == 24.5
        assert families["hypergpu_test_bits_per_byte"].samples[0].value == 4.6
        assert families["hypergpu_test_loss"].samples[0].value == 3.2


def test_classification_has_no_language_model_figures(client):
    s = client.get("/api/status").json()
    assert s["task"] == "classification" and s["test_perplexity"] is None and s["test_bits_per_byte"] is None
    from hypergpu.api.sessions import Session, metric_point
    from hypergpu.coordinator import Coordinator

    service = client.app.state.service
    service.coordinator = Coordinator(service.config)
    session = Session(1, "baseline", service.config, state="finished")
    session.metrics = [metric_point(_record(1, test_loss=0.4, test_accuracy=0.9)), metric_point(_record(2))]
    service.sessions.append(session)
    s = client.get("/api/status").json()
    assert (s["round"], s["test_accuracy"], s["test_perplexity"]) == (2, 0.9, None)
    assert client.get("/api/sessions").json()[0]["task"] == "classification"
    assert client.get("/api/metrics").json()["points"][0]["test_perplexity"] is None
    families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    assert families["hypergpu_test_accuracy_ratio"].samples[0].value == 0.9
    assert "hypergpu_test_perplexity" not in families and "hypergpu_test_bits_per_byte" not in families


def test_allowed_hosts_default_to_localhost_and_the_bound_address(config):
    from hypergpu.api.limits import AccessPolicy
    from hypergpu.api.server import ApiServer

    def hosts(**api):
        cfg = config.model_copy(update={"api": config.api.model_copy(update=api)})
        return AccessPolicy.from_config(cfg.api, TOKEN, RateLimiter()).hosts

    assert hosts() == ["localhost", "127.0.0.1", "[::1]"]
    assert hosts(host="10.1.2.3") == ["localhost", "127.0.0.1", "[::1]", "10.1.2.3"]
    assert hosts(host="0.0.0.0") == hosts(host="::") == ["localhost", "127.0.0.1", "[::1]"]
    assert hosts(host="10.1.2.3", allowed_hosts=["dash.example"]) == ["dash.example"]  # as configured, exactly
    # `--host` on the command line reaches the server, not the config: the server adds it.
    app = create_app(TrainingService(config), token=TOKEN)
    ApiServer(app, "192.168.7.9", 0)
    assert app.state.access.hosts[-1] == "192.168.7.9"
    with TestClient(app, base_url="http://192.168.7.9:8080") as c:
        assert c.get("/health").status_code == 200


@pytest.mark.parametrize(("override", "field"), [
    ("api.allowed_hosts=['evil.example:80']", "api.allowed_hosts.0"),
    ("api.allowed_hosts=['foo.*.example']", "api.allowed_hosts.0"),
    ("api.allowed_hosts=[]", "api.allowed_hosts"),
    ("api.allowed_origins=['http://dash.example/page']", "api.allowed_origins.0"),
    ("api.allowed_origins=['dash.example']", "api.allowed_origins.0"),
    ("api.max_body_bytes=10", "api.max_body_bytes"),
    ("api.max_ws_clients=0", "api.max_ws_clients"),
])
def test_api_limits_are_validated(override, field):
    from hypergpu.errors import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, [override])


def test_configured_origins_may_open_the_websocket(tmp_path):
    cfg = load_config(None, ["nodes.count=2", "data.cache_dir=null", "api.allowed_origins=['https://ops.example']",
                             "api.cors_origins=['http://dash.example']"])
    with local_client(create_app(TrainingService(cfg), token=TOKEN, presets_dir=tmp_path)) as c:
        for origin in ("https://ops.example", "http://dash.example", "http://localhost"):
            with c.websocket_connect("ws://localhost/ws", headers={**AUTH, "origin": origin}) as ws:
                assert ws.receive_json()["type"] == "hello", origin
        for origin in ("http://ops.example", "http://localhost:8080", "null"):
            with pytest.raises(WebSocketDenialResponse) as refused, \
                    c.websocket_connect("ws://localhost/ws", headers={**AUTH, "origin": origin}):
                pass
            assert refused.value.status_code == 403, origin
            assert f"WebSocket Origin {origin!r} not allowed" in refused.value.json()["detail"]


def test_a_hand_written_preset_with_startup_settings_is_refused_on_load(client, tmp_path):
    held = client.get("/api/config").json()
    held["coordinator"]["port"] = 9999
    (tmp_path / "presets").mkdir(exist_ok=True)
    (tmp_path / "presets" / "edited.json").write_text(json.dumps(held))
    r = client.post("/api/presets/edited/load", headers=AUTH)
    assert r.status_code == 422 and r.json()["detail"].startswith("coordinator.port: set at startup only")
    assert client.get("/api/config").json()["coordinator"]["port"] == 7070


def test_settable_paths_name_fields_of_the_configuration():
    from hypergpu.api.runtime_config import RUNTIME_SETTABLE, STARTUP_ONLY
    from hypergpu.config.schema import HyperGPUConfig

    for path in RUNTIME_SETTABLE + STARTUP_ONLY:
        model: type = HyperGPUConfig
        for name in path.split("."):
            assert name in model.model_fields, path  # a stale path would quietly allow nothing
            model = model.model_fields[name].annotation  # type: ignore[assignment]


def test_changed_fields_names_each_differing_leaf():
    from hypergpu.api.runtime_config import changed_fields, settable

    before = {"a": {"b": 1, "c": [1, 2]}, "d": {"0": "x"}}
    after = {"a": {"b": 2, "c": [1, 2]}, "d": {"0": "x", "1": "y"}}
    assert list(changed_fields(before, after)) == ["a.b", "d.1"]
    assert settable("training.lr") and settable("adapt.codecs") and settable("training.gpt.n_layer")
    assert not settable("data.path") and not settable("coordinator.port") and not settable("nodes.device")
    assert not settable("training.custom_model") and not settable("trainingx.lr") and not settable("chain.kind")


def test_rate_limiter_forgets_clients_whose_bucket_refilled():
    limiter = RateLimiter(burst=2, per_s=1000, max_clients=2)
    assert limiter.take("a") == 0 and limiter.take("b") == 0
    limiter._buckets["b"] = (0.0, limiter._buckets["b"][1] + 60)  # b is out of tokens for a minute
    time.sleep(0.01)  # a's bucket refills (2 tokens at 1000/s)
    assert limiter.take("c") == 0
    assert set(limiter._buckets) == {"b", "c"}  # a was forgotten; b, still limited, was not
    assert limiter.take("b") > 0
