"""Budgets for the whole bill, over real HTTP with DynamoDB on the moto server: plans from
the caller's claim, a team's and the whole stack's limits, days and months."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.integration

TIGHT = {"history_token_target": 100, "max_output_tokens": 40}


def usage_event(response: httpx.Response) -> dict[str, Any]:
    for block in response.text.split("\n\n"):
        if block.startswith("event: usage"):
            return json.loads(block.split("data: ", 1)[1])
    raise AssertionError(f"no usage event in {response.text!r}")


def charged(response: httpx.Response) -> int:
    used = usage_event(response)
    return used["input_tokens"] + used["output_tokens"]


def burst(gateway, users: list[str], claims: dict[str, Any]) -> list[httpx.Response]:
    """One request per user, all at once."""
    responses: list[httpx.Response] = []
    lock = threading.Lock()

    def one(user: str) -> None:
        with httpx.Client(base_url=gateway.url, timeout=30) as client:
            response = client.post(
                "/chat",
                json={"message": "How are you?"},
                headers=gateway.headers(user, **claims),
            )
        with lock:
            responses.append(response)

    threads = [threading.Thread(target=one, args=(user,)) for user in users]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return responses


@pytest.mark.parametrize(
    ("budgets", "claims", "scope"),
    [
        ({"global": {"day": {"tokens": 700}}}, {}, "global"),
        ({"team": {"day": {"tokens": 700}}}, {"team": "blue"}, "team"),
    ],
)
def test_fifty_users_never_spend_past_a_shared_limit(
    gateway_factory, offline_model, budgets, claims, scope
) -> None:
    offline_model.set_config(reply_tokens=30, first_token_delay_s=0.2)
    with gateway_factory(budgets=json.dumps(budgets), **TIGHT) as gateway:
        # A warm instance (a cold one holds byte-length bounds until its encodings load)
        warm = gateway.chat("Warm up", user_id="warm-up", claims=claims)
        assert warm.status_code == 200
        # When 50 users ask at once against a limit worth about five requests
        responses = burst(gateway, [f"user-{i}" for i in range(50)], claims)

    admitted = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code != 200]
    # Then several are admitted at once, and together they never pass the limit
    assert len(admitted) >= 2
    assert charged(warm) + sum(charged(r) for r in admitted) <= 700
    # And the rest are refused by that scope, without reaching upstream
    assert refused
    assert {r.status_code for r in refused} == {429}
    assert {(r.json()["error"]["scope"], r.json()["error"]["window"]) for r in refused} == {
        (scope, "day")
    }
    assert {r.headers["x-should-retry"] for r in refused} == {"false"}
    assert len(offline_model.ended_requests()) == len(admitted) + 1


def test_the_plan_claim_sets_the_users_limits(gateway_factory, offline_model) -> None:
    budgets = {"plans": {"default": {"day": {"tokens": 60}}, "pro": {"day": {"tokens": 50_000}}}}
    with gateway_factory(budgets=json.dumps(budgets)) as gateway:
        free = gateway.chat("Hello", user_id="free-user")
        pro = gateway.chat("Hello", user_id="pro-user", claims={"plan": "pro"})
        unknown = gateway.chat("Hello", user_id="gold-user", claims={"plan": "gold"})
        pro_usage = gateway.usage("pro-user", plan="pro")

    assert free.status_code == 429
    assert free.json()["error"]["scope"] == "user"
    assert pro.status_code == 200
    assert unknown.status_code == 403
    assert unknown.json()["error"]["code"] == "unknown_plan"
    assert pro_usage["plan"] == "pro"
    assert pro_usage["token_limit"] == 50_000
    assert pro_usage["tokens_used"] == charged(pro)
    assert len(offline_model.ended_requests()) == 1


def test_a_monthly_limit_refuses_until_the_first_of_next_month(
    gateway_factory, offline_model
) -> None:
    # Given a plan whose month has room for one request, late on the month's last day
    budgets = {"plans": {"default": {"day": {"tokens": 50_000}, "month": {"tokens": 200}}}}
    moment = datetime(2026, 12, 31, 23, 0, tzinfo=UTC)
    with gateway_factory(clock=lambda: moment, budgets=json.dumps(budgets), **TIGHT) as gateway:
        first = gateway.chat("Hello")
        second = gateway.chat("Hello again")
        usage = gateway.usage()

    assert first.status_code == 200
    # Then the next is refused by the month, until 2027-01-01T00:00Z
    assert second.status_code == 429
    assert second.json()["error"] == {
        "code": "budget_exceeded",
        "message": second.json()["error"]["message"],
        "scope": "user",
        "window": "month",
    }
    assert int(second.headers["retry-after"]) == 3600
    # And GET /usage lists both windows of the user's own scope
    windows = {b["window"]: b for b in usage["budgets"]}
    assert set(windows) == {"day", "month"}
    assert windows["month"]["token_limit"] == 200
    assert windows["month"]["resets_at"] == "2027-01-01T00:00:00Z"
    assert windows["month"]["tokens_used"] == windows["day"]["tokens_used"] == charged(first)
    assert all(b["scope"] == "user" for b in usage["budgets"])
