"""Schemathesis fuzzes the running gateway against its own OpenAPI document.

Every operation gets schema-valid and schema-violating requests (bodies, path
parameters) with a valid bearer token, over real HTTP to the gateway under uvicorn
(DynamoDB on moto, the offline model server up). Checks: no 5xx at all (the
dependencies are healthy, so not even the documented 502/503), documented status
codes, content types, headers and response bodies, and schema-violating input
refused with a 4xx.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tollgate.app import OPENAPI_DOCUMENT

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MAX_EXAMPLES = 60
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]

schema = schemathesis.openapi.from_path(OPENAPI_DOCUMENT)
# CI replays the same examples (a red build means a regression); local runs explore anew.
schema.config.generation.update(
    modes=["positive", "negative"],
    max_examples=MAX_EXAMPLES,
    deterministic=os.environ.get("CI") == "true",
)
schema.config.phases.update(phases=["examples", "coverage", "fuzzing"])

# (operation, status) -> responses seen; printed at the end (run with -s to see it).
SEEN: Counter[tuple[str, int]] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report_statuses() -> Iterator[None]:
    yield
    total = sum(SEEN.values())
    print(f"\nschemathesis: {total} requests")
    for (operation, status), count in sorted(SEEN.items()):
        print(f"  {operation:45} {status}: {count}")


@pytest.fixture
def fuzz_gateway(gateway_factory: Any) -> Iterator[Any]:
    # Generous limits so that fuzzed requests reach the upstream instead of a 429.
    with gateway_factory(rate_limit_per_minute=100_000, daily_token_limit=100_000_000) as gateway:
        yield gateway


@schema.parametrize()
@settings(
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
def test_gateway_conforms_to_its_openapi_document(case: Any, fuzz_gateway: Any) -> None:
    # Given the running gateway and a generated request with a valid token
    # When it is sent over HTTP
    response = case.call(base_url=fuzz_gateway.url, headers=fuzz_gateway.headers("fuzzer"))
    SEEN[(f"{case.method} {case.path}", response.status_code)] += 1
    # Then no server error happens and the response is what the document says
    assert response.status_code < 500, (response.status_code, response.text[:500])
    case.validate_response(response, checks=CHECKS)


# --- findings of earlier runs, kept as regression tests ---


def completion_body(**fields: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **fields}


@pytest.mark.parametrize("role", [["user"], {"user": 1}])
def test_v1_unhashable_role_is_a_400_not_a_500(gateway: Any, role: Any) -> None:
    # Given a /v1 body whose message role is a list or an object
    body = completion_body(messages=[{"role": role, "content": "Hi"}])
    # When it is sent
    response = gateway.http.post("/v1/chat/completions", json=body, headers=gateway.headers())
    # Then it is refused as OpenAI would, naming the parameter
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "messages[0].role"


@pytest.mark.parametrize(
    "options", [False, 0, "", [], {"include_usage": {}}, {"include_usage": "yes"}]
)
def test_v1_malformed_stream_options_are_refused(gateway: Any, options: Any) -> None:
    # Given a /v1 body whose stream_options (or its include_usage) has the wrong type
    body = completion_body(stream=True, stream_options=options)
    # When it is sent
    response = gateway.http.post("/v1/chat/completions", json=body, headers=gateway.headers())
    # Then it is a 400 naming stream_options, and nothing is charged
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"].startswith("stream_options")
    assert gateway.cost_records() == []
