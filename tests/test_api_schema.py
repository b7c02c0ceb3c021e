"""Schemathesis against the app's own OpenAPI schema: no input gets a 5xx.

Bounded: a few examples per operation (a few hundred requests, < 60 s).
Starting training is left out of the fuzzing (each accepted start spawns
node processes); tests/test_api.py and test_api_training.py cover it.
"""

from __future__ import annotations

import warnings

import pytest
from hypothesis import HealthCheck, settings

from hypergpu.api import TrainingService, create_app
from hypergpu.api.security import RateLimiter
from hypergpu.config import load_config

with warnings.catch_warnings():
    # Starlette asks for its httpx fork; the ASGI test client works the same with httpx.
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient` is deprecated")
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

TOKEN = "schema-test-token-1234"


def make_app():
    import tempfile
    from pathlib import Path

    # schemathesis's ASGI client says "Host: testserver"
    service = TrainingService(load_config(None, ["nodes.count=2", "data.cache_dir=null",
                                                 "api.allowed_hosts=['testserver']"]))
    return create_app(service, token=TOKEN, presets_dir=Path(tempfile.mkdtemp(prefix="hypergpu-presets-")),
                      rate_limiter=RateLimiter(burst=10_000, per_s=10_000))


schema = schemathesis.openapi.from_asgi("/openapi.json", make_app()).exclude(
    path="/api/training/start", method="POST"
)
# Examples and fuzzing only: the coverage phase alone sends thousands of requests.
schema.config.phases.coverage.enabled = False
REQUESTS: list[int] = []


@schema.parametrize()
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_server_errors(case):
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {TOKEN}"},
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
    REQUESTS.append(response.status_code)
    assert response.status_code < 500


def test_fuzzing_volume():
    """Report how much the fuzzing above sent (it runs first, in file order)."""
    if not REQUESTS:
        pytest.skip("the schemathesis cases did not run in this session (deselected)")
    codes: dict[int, int] = {}
    for code in REQUESTS:
        codes[code] = codes.get(code, 0) + 1
    print(f"\nschemathesis: {len(REQUESTS)} requests, status codes {dict(sorted(codes.items()))}")
    assert all(code < 500 for code in REQUESTS)
