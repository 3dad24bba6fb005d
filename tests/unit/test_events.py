"""The sample events in events/ are Lambda function URL requests (payload format 2.0)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tollgate.local.tables import repo_root

CHAT_REQUEST_FIELDS = {"message", "conversation_id", "prompt", "max_tokens"}


def _load_event(name: str) -> dict[str, Any]:
    event: dict[str, Any] = json.loads((repo_root() / "events" / name).read_text(encoding="utf-8"))
    return event


def _body(event: dict[str, Any]) -> Any:
    raw = event["body"]
    if event["isBase64Encoded"]:
        raw = base64.b64decode(raw).decode("utf-8")
    return json.loads(raw)


@pytest.mark.parametrize(
    ("name", "method", "path"),
    [("function_url_chat.json", "POST", "/chat"), ("function_url_usage.json", "GET", "/usage")],
)
def test_event_is_a_function_url_request(name: str, method: str, path: str) -> None:
    event = _load_event(name)

    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    assert event["rawPath"] == path
    assert isinstance(event["rawQueryString"], str)
    assert isinstance(event["isBase64Encoded"], bool)
    context = event["requestContext"]
    assert context["http"]["method"] == method
    assert context["http"]["path"] == path
    assert context["routeKey"] == "$default"
    assert context["stage"] == "$default"
    assert context["domainName"].endswith(".on.aws")
    assert context["domainPrefix"] == context["apiId"]
    assert isinstance(context["timeEpoch"], int)
    for key in ("requestId", "time"):
        assert context[key]
    for key in ("protocol", "sourceIp", "userAgent"):
        assert context["http"][key]
    headers = event["headers"]
    assert all(header == header.lower() for header in headers), "function URLs lowercase headers"
    assert all(isinstance(value, str) for value in headers.values())
    assert headers["host"] == context["domainName"]
    assert headers["authorization"].startswith("Bearer ")


def test_chat_event_body_is_a_valid_chat_request() -> None:
    event = _load_event("function_url_chat.json")
    assert event["headers"]["content-type"] == "application/json"

    body = _body(event)

    assert isinstance(body, dict)
    assert set(body) <= CHAT_REQUEST_FIELDS
    assert isinstance(body["message"], str)
    assert body["message"].strip()
    assert body.get("conversation_id") is None or isinstance(body["conversation_id"], str)
    assert isinstance(body.get("prompt", "default"), str)
    max_tokens = body.get("max_tokens")
    assert max_tokens is None or (isinstance(max_tokens, int) and max_tokens >= 1)


def test_usage_event_has_no_body() -> None:
    event = _load_event("function_url_usage.json")
    assert event.get("body") in (None, "")
