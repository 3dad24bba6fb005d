"""Daily budgets over real HTTP with DynamoDB on moto: admission, refusal, settlement, reset."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.gateway_fixture import parse_sse

pytestmark = pytest.mark.integration

# Small numbers make every request's reservation a large share of the limit.
TIGHT = {"history_token_target": 100, "max_output_tokens": 40}


def usage_event(response: httpx.Response) -> dict:
    events = parse_sse(response.text)
    return next(json.loads(data) for name, data in events if name == "usage")


def test_fifty_concurrent_requests_never_overshoot_the_limit(
    gateway_factory, offline_model
) -> None:
    offline_model.set_config(reply_tokens=40, first_token_delay_s=0.2)
    with gateway_factory(daily_token_limit=1200, **TIGHT) as gateway:
        # A warm instance: a cold one holds byte-length bounds until its encodings load
        # (test_cold_instance.py), which admits fewer of a burst.
        assert gateway.chat("Warm up", user_id="warmup").status_code == 200
        responses: list[httpx.Response] = []
        lock = threading.Lock()

        def one() -> None:
            with httpx.Client(base_url=gateway.url, timeout=30) as client:
                response = client.post(
                    "/chat", json={"message": "How are you?"}, headers=gateway.headers()
                )
            with lock:
                responses.append(response)

        threads = [threading.Thread(target=one) for _ in range(50)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        admitted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        charged = sum(
            usage_event(r)["input_tokens"] + usage_event(r)["output_tokens"] for r in admitted
        )
        usage = gateway.usage()
        bob = gateway.chat("Hi", user_id="bob")

    assert len(admitted) >= 5
    assert refused, "the limit should have refused some of the 50"
    assert {r.status_code for r in refused} == {429}
    assert {r.json()["error"]["code"] for r in refused} == {"budget_exceeded"}
    assert charged <= 1200
    assert usage["tokens_used"] == charged
    assert len(offline_model.ended_requests()) == len(admitted) + 2  # + the warm-up and bob's
    assert bob.status_code == 200
    records = gateway.cost_records()
    assert sum(r["outcome"] == "budget_refused" for r in records) == len(refused)


def test_refusal_is_429_until_midnight_and_upstream_is_never_called(
    gateway_factory, offline_model
) -> None:
    with gateway_factory(daily_token_limit=50) as gateway:
        response = gateway.chat("Hello")
        usage = gateway.usage()
        records = gateway.wait_for_records(1)

    assert response.status_code == 429
    assert response.json() == {
        "error": {
            "code": "budget_exceeded",
            "message": response.json()["error"]["message"],
            "scope": "user",
            "window": "day",
        }
    }
    assert response.headers["x-should-retry"] == "false"
    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    assert abs(int(response.headers["retry-after"]) - (midnight - now).total_seconds()) <= 5
    assert offline_model.requests() == []
    assert usage["tokens_used"] == 0
    assert records[0]["outcome"] == "budget_refused"
    assert records[0]["input_tokens"] == records[0]["output_tokens"] == 0


def test_dollar_limit_refuses_at_the_priciest_fallback_price(
    gateway_factory, offline_model
) -> None:
    # One request reserves prompt + cap at gpt-4o's price (the priciest in the chain).
    with gateway_factory(daily_cost_limit_usd=0.0001, **TIGHT) as gateway:
        response = gateway.chat("Hello")
        usage = gateway.usage()

    assert response.status_code == 429
    assert usage["cost_limit_usd"] == 0.0001
    assert usage["cost_used_usd"] == 0
    assert offline_model.requests() == []


def test_usage_counts_in_flight_reservations(gateway_factory, offline_model) -> None:
    offline_model.set_config(reply_tokens=30, chunk_interval_s=0.05)
    with gateway_factory(**TIGHT) as gateway:
        with gateway.http.stream(
            "POST", "/chat", json={"message": "Hi"}, headers=gateway.headers()
        ) as response:
            lines = response.iter_lines()
            next(line for line in lines if line.startswith('data: {"delta"'))
            during = gateway.usage()
            body = "\n".join(lines)
        after = gateway.usage()

    assert during["tokens_used"] >= 40 + 20  # the cap and the prompt at least
    assert after["tokens_used"] < during["tokens_used"]
    assert '"budget"' in body


def test_budget_resets_at_midnight_utc_and_a_request_keeps_its_start_day(
    gateway_factory, offline_model
) -> None:
    now = [datetime(2026, 3, 1, 23, 59, 58, tzinfo=UTC)]
    offline_model.set_config(reply_tokens=20)
    with gateway_factory(clock=lambda: now[0], daily_token_limit=600, **TIGHT) as gateway:
        first = gateway.chat("Before midnight")
        spent = usage_event(first)
        before = gateway.usage()
        refused = gateway.chat("x " * 450)  # reservation does not fit what is left
        now[0] = datetime(2026, 3, 2, 0, 0, 1, tzinfo=UTC)
        after = gateway.usage()
        admitted = gateway.chat("After midnight")

    assert first.status_code == 200
    assert spent["budget"]["day"] == "2026-03-01"
    assert spent["budget"]["resets_at"] == "2026-03-02T00:00:00Z"
    assert before["tokens_used"] == spent["input_tokens"] + spent["output_tokens"]
    assert refused.status_code == 429
    assert int(refused.headers["retry-after"]) == 2
    assert after == {**after, "day": "2026-03-02", "tokens_used": 0, "tokens_remaining": 600}
    assert after["resets_at"] == "2026-03-03T00:00:00Z"
    assert admitted.status_code == 200
    assert usage_event(admitted)["budget"]["day"] == "2026-03-02"


def test_conversation_cap_is_403_and_charges_nothing(gateway_factory, offline_model) -> None:
    with gateway_factory(conversation_token_limit=50) as gateway:
        first = gateway.chat("Start")
        conversation_id = json.loads(parse_sse(first.text)[0][1])["conversation_id"]
        used = gateway.usage()["tokens_used"]
        second = gateway.chat("Continue", conversation_id=conversation_id)
        after = gateway.usage()["tokens_used"]
        records = gateway.wait_for_records(2)
        turns = gateway.http.get(
            f"/conversations/{conversation_id}", headers=gateway.headers()
        ).json()["turns"]

    assert second.status_code == 403
    assert second.json()["error"]["code"] == "conversation_limit"
    assert after == used
    assert len(offline_model.requests()) == 1
    assert records[-1]["outcome"] == "conversation_cap"
    assert len(turns) == 1


def test_a_concurrent_turn_on_one_conversation_is_409(gateway, offline_model) -> None:
    first = gateway.chat("Start")
    conversation_id = json.loads(parse_sse(first.text)[0][1])["conversation_id"]
    offline_model.set_config(reply_tokens=40, chunk_interval_s=0.05)
    used_before = gateway.usage()["tokens_used"]

    with gateway.http.stream(
        "POST",
        "/chat",
        json={"message": "Long one", "conversation_id": conversation_id},
        headers=gateway.headers(),
    ) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith('data: {"delta"'))
        conflict = gateway.chat("Me too", conversation_id=conversation_id)
        in_flight_usage = gateway.usage()["tokens_used"]
        list(lines)

    assert conflict.status_code == 409
    assert conflict.json()["error"]["code"] == "turn_conflict"
    assert len(offline_model.requests()) == 2
    assert "turn_conflict" in [r["outcome"] for r in gateway.cost_records()]
    # the refused turn reserved nothing: only the running turn's reservation is in flight
    assert in_flight_usage - used_before > 0
    follow_up = gateway.chat("Now me", conversation_id=conversation_id)
    assert follow_up.status_code == 200


def test_dynamodb_outage_fails_closed_within_seconds(gateway_factory, offline_model) -> None:
    from tests.servers import free_port
    from tollgate.adapters.conversation_store import DynamoConversationStore
    from tollgate.adapters.dynamodb_http import AsyncDynamoDB
    from tollgate.adapters.usage_store import DynamoUsageStore

    dead = AsyncDynamoDB.from_environment(
        0.5, max_attempts=2, endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    with gateway_factory() as gateway:
        service = gateway.service
        service.ledger._usage = DynamoUsageStore(gateway.settings.usage_table, dead)
        service._conversations = DynamoConversationStore(
            gateway.settings.conversations_table, dead, ttl_days=30
        )
        started = time.monotonic()
        response = gateway.chat("Hello")
        elapsed = time.monotonic() - started

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "dependency_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert elapsed < 5
    assert offline_model.requests() == []


def test_a_settlement_that_cannot_be_written_leaves_the_reservation_standing(
    gateway, offline_model
) -> None:
    from tollgate.errors import DependencyUnavailable

    async def unavailable(*args, **kwargs):
        raise DependencyUnavailable("the database is unavailable", retry_after=2)

    gateway.service.ledger._usage.settle = unavailable

    response = gateway.chat("Hello")

    used = usage_event(response)
    charged = used["input_tokens"] + used["output_tokens"]
    errors = [line for line in gateway.log_lines() if line.get("message") == "settlement_failed"]
    assert len(errors) == 1
    assert errors[0]["level"] == "ERROR"
    assert errors[0]["actual_tokens"] == charged
    # never under-charged: the larger reservation stays on the books
    assert gateway.usage()["tokens_used"] == errors[0]["reserved_tokens"] > charged
    assert gateway.wait_for_records(1)[0]["outcome"] == "completed"


def test_per_minute_rate_limit_refuses_before_anything_is_charged(
    gateway_factory, offline_model
) -> None:
    now = [datetime(2026, 3, 1, 12, 0, 45, tzinfo=UTC)]
    with gateway_factory(clock=lambda: now[0], rate_limit_per_minute=2) as gateway:
        admitted = [gateway.chat("Hi") for _ in range(2)]
        statuses = [response.status_code for response in admitted]
        used = sum(
            event["input_tokens"] + event["output_tokens"]
            for event in (usage_event(response) for response in admitted)
        )
        limited = gateway.chat("One too many")
        other_user = gateway.chat("Hi", user_id="bob")
        now[0] = datetime(2026, 3, 1, 12, 1, 0, tzinfo=UTC)
        # (GET /usage counts in the rate limit too: read it in the next minute)
        after = gateway.usage()["tokens_used"]
        next_minute = gateway.chat("Hi again")

    assert statuses == [200, 200]
    assert limited.status_code == 429
    assert limited.json()["error"]["code"] == "rate_limited"
    assert limited.headers["retry-after"] == "15"
    assert after == used
    assert len(offline_model.ended_requests()) == 4
    assert other_user.status_code == 200
    assert next_minute.status_code == 200
