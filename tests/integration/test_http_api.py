"""The HTTP contract around /chat: identity, refusals before streaming, /usage, /health."""

from __future__ import annotations

import json
import time

import jwt
import pytest

from tests.gateway_fixture import JWT_SECRET, make_token

pytestmark = pytest.mark.integration


def assert_error(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic abc",
        "Bearer not-a-jwt",
        f"Bearer {make_token('alice', secret='another-secret-entirely-of-length')}",
        f"Bearer {make_token('alice', expires_in_s=-120)}",
        "Bearer " + jwt.encode({"sub": "alice"}, JWT_SECRET, algorithm="HS256"),
        "Bearer "
        + jwt.encode({"sub": "alice", "exp": int(time.time()) + 60}, None, algorithm="none"),
    ],
    ids=["missing", "basic", "garbage", "wrong-secret", "expired", "no-exp", "alg-none"],
)
def test_bad_identity_is_401_and_nothing_happens(gateway, offline_model, authorization) -> None:
    headers = {"Authorization": authorization} if authorization else {}

    for response in (
        gateway.http.post("/chat", json={"message": "Hi"}, headers=headers),
        gateway.http.get("/usage", headers=headers),
    ):
        assert_error(response, 401, "unauthenticated")
    assert offline_model.requests() == []
    assert gateway.cost_records() == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"", 400, "bad_request"),
        (b"{not json", 400, "bad_request"),
        (b"[1, 2]", 400, "bad_request"),
        (b'"hello"', 400, "bad_request"),
        (b"{}", 422, "invalid_request"),
        (b'{"message": ""}', 422, "invalid_request"),
        (b'{"message": 42}', 422, "invalid_request"),
        (b'{"message": "hi", "max_tokens": 0}', 422, "invalid_request"),
        (b'{"message": "hi", "max_tokens": "5"}', 422, "invalid_request"),
        (b'{"message": "hi", "prompt": "../etc/passwd"}', 422, "invalid_request"),
        (b'{"message": "hi", "prompt": "no-such-prompt"}', 422, "invalid_request"),
        (b'{"message": "hi", "conversation_id": 7}', 422, "invalid_request"),
        (json.dumps({"message": "x" * 70_000}).encode(), 413, "too_large"),
        (json.dumps({"message": "word " * 9000}).encode(), 413, "too_large"),
    ],
)
def test_invalid_requests_are_refused_before_anything_is_charged(
    gateway, offline_model, body, status, code
) -> None:
    response = gateway.http.post(
        "/chat", content=body, headers={**gateway.headers(), "Content-Type": "application/json"}
    )

    assert_error(response, status, code)
    assert offline_model.requests() == []
    assert gateway.cost_records() == []
    assert gateway.usage()["tokens_used"] == 0


def test_usage_for_a_new_user_is_zeros_not_404(gateway) -> None:
    usage = gateway.usage("newcomer")

    assert usage["tokens_used"] == 0
    assert usage["tokens_remaining"] == usage["token_limit"] == 50_000
    assert usage["cost_used_usd"] == 0
    assert usage["cost_remaining_usd"] is None
    assert usage["cost_limit_usd"] is None
    assert usage["resets_at"].endswith("T00:00:00Z")
    assert set(usage) == {
        "day",
        "tokens_used",
        "tokens_remaining",
        "token_limit",
        "cost_used_usd",
        "cost_remaining_usd",
        "cost_limit_usd",
        "resets_at",
        "plan",
        "budgets",
    }
    assert usage["plan"] == "default"
    assert usage["budgets"] == [
        {
            "scope": "user",
            "window": "day",
            **{k: v for k, v in usage.items() if k not in {"day", "plan", "budgets"}},
        }
    ]


def test_health_and_unknown_routes(gateway) -> None:
    assert gateway.http.get("/health").json() == {"status": "ok"}
    assert_error(gateway.http.get("/nope"), 404, "not_found")
    assert_error(gateway.http.get("/chat"), 405, "method_not_allowed")


def test_iam_mode_trusts_only_an_iam_authorised_request_context(gateway_factory) -> None:
    context = {"authorizer": {"iam": {"userArn": "arn:aws:iam::123456789012:user/backend"}}}
    with gateway_factory(auth_mode="iam", jwt_secret=None) as gateway:
        trusted = gateway.http.get(
            "/usage",
            headers={
                "x-amzn-request-context": json.dumps(context),
                "x-end-user-id": "end-user-7",
            },
        )
        no_context = gateway.http.get("/usage", headers={"x-end-user-id": "end-user-7"})
        no_user = gateway.http.get(
            "/usage", headers={"x-amzn-request-context": json.dumps(context)}
        )

    assert trusted.status_code == 200
    assert_error(no_context, 401, "unauthenticated")
    assert_error(no_user, 401, "unauthenticated")
