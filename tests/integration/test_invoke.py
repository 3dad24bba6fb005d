"""`make invoke`: every event in events/ through the real code, as Lambda would run it.

Function URL events become the request the Lambda Web Adapter sends to uvicorn (its
mapping checked field by field below); aggregator events run the aggregator handler.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.gateway_fixture import parse_sse
from tollgate.local.invoke import (
    LAMBDA_CONTEXT_HEADER,
    REQUEST_CONTEXT_HEADER,
    app_request,
    is_function_url_event,
)
from tollgate.local.tables import repo_root

EVENTS = sorted((repo_root() / "events").glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return event


def url_event(**overrides: Any) -> dict[str, Any]:
    event = load(repo_root() / "events" / "function_url_chat.json")
    event.update(overrides)
    return event


def test_the_request_carries_method_path_query_and_headers() -> None:
    event = url_event(rawQueryString="a=1&b=two%20words", cookies=["x=1", "y=2"])
    request = app_request(event)
    assert (request.method, request.path, request.query) == ("POST", "/chat", "a=1&b=two%20words")
    assert request.target == "/chat?a=1&b=two%20words"
    headers = dict(request.headers)
    assert headers["authorization"] == event["headers"]["authorization"]
    assert headers["content-type"] == "application/json"
    assert headers["cookie"] == "x=1; y=2"
    assert request.body == event["body"].encode()


def test_the_request_context_rides_in_its_header_and_cannot_be_supplied_by_the_caller() -> None:
    forged = '{"authorizer": {"iam": {"userArn": "arn:aws:iam::1:user/forged"}}}'
    event = url_event()
    event["headers"] = {**event["headers"], REQUEST_CONTEXT_HEADER: forged}
    headers = app_request(event).headers
    contexts = [value for name, value in headers if name == REQUEST_CONTEXT_HEADER]
    assert [json.loads(value) for value in contexts] == [event["requestContext"]]
    (lambda_context,) = [json.loads(v) for n, v in headers if n == LAMBDA_CONTEXT_HEADER]
    assert lambda_context["request_id"] == event["requestContext"]["requestId"]


def test_a_base64_body_is_decoded_and_a_base_path_removed() -> None:
    raw = b'{"message": "caf\xc3\xa9"}'
    event = url_event(
        isBase64Encoded=True, body=base64.b64encode(raw).decode(), rawPath="/prod/chat"
    )
    request = app_request(event, base_path="/prod")
    assert request.body == raw
    assert request.path == "/chat"


def invoke(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tollgate.local.invoke", "--event", str(path)],
        cwd=repo_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def clean_environment() -> dict[str, str]:
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI_", "JWT_", "AWS_ENDPOINT_URL", "STORE_BACKEND"))
    }


@pytest.mark.integration
@pytest.mark.parametrize("path", [p for p in EVENTS if is_function_url_event(load(p))], ids=str)
def test_every_function_url_event_runs_through_make_invoke(path: Path) -> None:
    # When `make invoke` runs the event with no AWS account and no API key
    result = invoke(path, clean_environment())
    # Then the gateway answered it as it would on Lambda
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HTTP 200" in result.stderr
    event = load(path)
    if event["rawPath"] in ("/chat", "/v1/chat/completions"):
        events = parse_sse(result.stdout)
        assert events[-1] == (None, "[DONE]")
        assert len(events) > 2
    else:
        assert json.loads(result.stdout)["token_limit"] > 0


@pytest.mark.integration
@pytest.mark.parametrize("path", [p for p in EVENTS if not is_function_url_event(load(p))], ids=str)
def test_every_aggregator_event_runs_through_make_invoke(
    path: Path, moto_endpoint: str, table_names: dict[str, str]
) -> None:
    # Given the local servers `make run` would have started
    suffix = uuid.uuid4().hex[:8]
    group = f"/tollgate/invoke-{suffix}"
    boto3.client("logs", endpoint_url=moto_endpoint).create_log_group(logGroupName=group)
    rollups = f"rollups-{suffix}"  # created by the run itself, as `make aggregate` does
    env = {
        **clean_environment(),
        "AWS_ENDPOINT_URL_DYNAMODB": moto_endpoint,
        "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": moto_endpoint,
        "AWS_ENDPOINT_URL_CLOUDWATCH": moto_endpoint,
        "COST_LOG_GROUP": group,
        "USAGE_TABLE": table_names["UsageTable"],
        "ROLLUPS_TABLE": rollups,
    }
    # When `make invoke` runs the event
    result = invoke(path, env)
    # Then the aggregator handler summarised its windows (printed after its own log lines)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    summary = json.loads("\n".join(lines[lines.index("{") :]))
    assert summary["windows"]
