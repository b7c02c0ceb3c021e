"""Configuration: defaults, TOML + overrides, refused values, schema, CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import hypergpu
from hypergpu.config import HyperGPUConfig, config_schema, load_config, validate_config
from hypergpu.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_defaults_are_valid_and_local():
    cfg = load_config(None)
    assert cfg == HyperGPUConfig()
    assert cfg.data.dataset == "digits"
    assert cfg.training.model == "cnn"
    assert cfg.api.host == "127.0.0.1" and cfg.coordinator.host == "127.0.0.1"
    assert cfg.api.token is None
    assert 0 < cfg.coordinator.quorum <= 1
    assert cfg.nodes.speed_factor(0) == 1.0
    assert cfg.network.profile_of(0) == "perfect"


def test_toml_file_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text(
        """
[training]
lr = 0.05
optimizer = "sgd"
hidden_sizes = [32, 16]

[nodes]
count = 3
speed_factors = { 1 = 0.5 }

[network]
node_profiles = { 2 = "poor" }

[[network.events]]
node = 0
profile = "unstable"
at_round = 4
"""
    )
    cfg = load_config(path, ["training.lr=0.01", "data.dataset=synthetic", "api.cors_origins=['http://x']"])
    assert cfg.training.lr == 0.01  # override wins over the file
    assert cfg.training.optimizer == "sgd"
    assert cfg.training.hidden_sizes == [32, 16]
    assert cfg.data.dataset == "synthetic"  # bare word taken as a string
    assert cfg.api.cors_origins == ["http://x"]
    assert cfg.nodes.speed_factor(1) == 0.5 and cfg.nodes.speed_factor(2) == 1.0
    assert cfg.network.profile_of(2) == "poor"
    assert cfg.network.events[0].at_round == 4 and cfg.network.events[0].at_s is None


@pytest.mark.parametrize("example", sorted(EXAMPLES.glob("*.toml")), ids=lambda p: p.name)
def test_examples_validate(example):
    cfg = load_config(example)
    assert cfg.nodes.count >= 1


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("training.lr=-1", ["training.lr", "-1", "0 < value <= 10"]),
        ("training.lr=0", ["training.lr", "0 < value"]),
        ("training.lr=null", ["training.lr", "null is not allowed"]),
        ("training.batch_size=-5", ["training.batch_size", "-5", "1 <= value <= 65536"]),
        ("training.batch_size=abc", ["training.batch_size", "'abc'"]),
        ("training.optimizer=rmsprop", ["training.optimizer", "'rmsprop'", "'sgd'", "'adamw'"]),
        ("training.model=''", ["training.model", "''", "'mlp'"]),
        ("training.hidden_sizes=[]", ["training.hidden_sizes", "must not be empty"]),
        ("training.typo=1", ["training.typo", "unknown field", "batch_size"]),
        ("api.host=''", ["api.host", "must not be empty"]),
        ("api.token=''", ["api.token", "must not be empty"]),
        ("api.port=70000", ["api.port", "70000", "0 <= value <= 65535"]),
        ("coordinator.quorum=0", ["coordinator.quorum", "0 < value <= 1"]),
        ("coordinator.quorum=1.5", ["coordinator.quorum", "1.5"]),
        ("coordinator.late_updates=keep", ["coordinator.late_updates", "'drop'", "'stale-weighted'"]),
        ("nodes.count=0", ["nodes.count", "1 <= value"]),
        ("nodes.device=tpu", ["nodes.device", "'auto'"]),
        ("nodes.speed_factors.1=0", ["nodes.speed_factors.1", "0"]),
        ("nodes.speed_factors.9=0.5", ["nodes.speed_factors", "node 9 does not exist"]),
        ("network.default_profile=awful", ["network.default_profile", "'perfect'", "'custom'"]),
        ("network.custom.loss=1", ["network.custom.loss", "0 <= value < 1"]),
        ("network.congestion=vegas", ["network.congestion", "'bbr'", "'new_reno'"]),
        ("data.dataset=mnist", ["data", "path is required", "mnist"]),
        ("data.test_fraction=1", ["data.test_fraction", "0 < value < 1"]),
        ("training.model=custom", ["training", "custom_model is required"]),
        ("network.events=[{node=0, profile='poor'}]", ["network.events.0", "exactly one of at_s or at_round"]),
    ],
)
def test_bad_values_name_field_value_and_range(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} missing from: {message}"
    assert "pydantic" not in message and "errors.pydantic.dev" not in message


def test_the_congestion_controller_reaches_the_coordinator_the_nodes_and_the_planner():
    """network.congestion: the coordinator's transport, a local run's node command lines and the
    planner's reading of loss (a bound on throughput only under a loss-based controller) all take it."""
    from hypergpu.adapt import AdaptivePlanner
    from hypergpu.cli.run import node_cmd
    from hypergpu.coordinator.admission import transport_config
    from hypergpu.launch.local import node_command

    assert load_config(None, []).network.congestion == "bbr"
    for name in ("bbr", "cubic", "new_reno"):
        cfg = load_config(None, [f"network.congestion='{name}'", "adapt.enabled=true"])
        assert transport_config(cfg, 1000).congestion == name
        cmd = node_command(cfg, "quic://127.0.0.1:1#00", 0)
        assert cmd[cmd.index("--congestion") + 1] == name
        assert AdaptivePlanner(cfg).monitor.loss_limited is (name != "bbr")
    choice = next(p for p in node_cmd.params if p.name == "congestion")
    assert list(choice.type.choices) == ["bbr", "cubic", "new_reno"] and choice.default == "bbr"


def test_several_problems_reported_together():
    with pytest.raises(ConfigError) as info:
        validate_config({"training": {"lr": -1, "epochs": 0}, "api": {"port": -1}})
    assert len(info.value.problems) == 3  # type: ignore[attr-defined]
    for field in ("training.lr", "training.epochs", "api.port"):
        assert field in str(info.value)


@pytest.mark.parametrize("override", ["training", "=3", "training..lr=1", "training.lr"])
def test_malformed_overrides(override):
    with pytest.raises(ConfigError, match="section.field=value"):
        load_config(None, [override])


def test_override_into_a_value_is_refused():
    with pytest.raises(ConfigError, match="training.lr is a value, not a section"):
        load_config(None, ["training.lr=0.1", "training.lr.x=1"])
    with pytest.raises(ConfigError, match="training.lr"):
        load_config(None, ["training.lr.x=1"])


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[training\nlr = 1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(bad)
    unknown = tmp_path / "unknown.toml"
    unknown.write_text("[trainig]\nlr = 1\n")
    with pytest.raises(ConfigError, match="trainig: unknown field; known fields: adapt, api, chain, coordinator"):
        load_config(unknown)


def test_assignment_is_validated_too():
    cfg = load_config(None)
    with pytest.raises(ValueError):
        cfg.training.lr = -1.0


def test_config_hash_is_stable_and_sensitive():
    a, b = load_config(None), load_config(None)
    assert a.config_hash() == b.config_hash()
    assert a.config_hash() != load_config(None, ["training.lr=0.5"]).config_hash()


def test_schema_describes_sections_and_ranges():
    schema = config_schema()
    json.dumps(schema)
    assert set(schema["properties"]) == {
        "training", "data", "network", "nodes", "coordinator", "api", "chain", "rewards", "adapt", "tracking"
    }
    training = schema["$defs"]["TrainingConfig"]["properties"]
    assert training["lr"]["exclusiveMinimum"] == 0
    assert set(training["optimizer"]["enum"]) == {"sgd", "adam", "adamw"}
    assert schema["$defs"]["TrainingConfig"]["additionalProperties"] is False


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(Path(hypergpu.__file__).parent.parent)}
    code = "from hypergpu.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=60
    )


def test_cli_check_and_schema(tmp_path):
    ok = _cli("config", "check", str(EXAMPLES / "quick.toml"), "--set", "training.lr=0.02")
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["training"]["lr"] == 0.02
    bad = _cli("config", "check", str(EXAMPLES / "quick.toml"), "--set", "coordinator.quorum=2")
    assert bad.returncode == 2
    assert "coordinator.quorum" in bad.stderr and "0 < value <= 1" in bad.stderr
    schema = _cli("config", "schema")
    assert schema.returncode == 0
    assert "TrainingConfig" in json.loads(schema.stdout)["$defs"]


@pytest.mark.parametrize("name", sorted(p.name for p in EXAMPLES.glob("*.toml")))
def test_every_example_config_loads_and_names_its_task(name: str) -> None:
    cfg = load_config(EXAMPLES / name)
    expected = "lm" if cfg.data.dataset in ("stdlib", "text", "tokens") else "classification"
    assert cfg.task == expected
    if name == "gpt_stdlib.toml":
        from hypergpu.model import gpt_param_count

        params = gpt_param_count(cfg.training.gpt, 256)
        assert 3_000_000 < params < 4_000_000  # "a few million parameters", as its comment says
