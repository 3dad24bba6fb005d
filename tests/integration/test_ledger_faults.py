"""The ledger when DynamoDB is slow or paused: every charge counted once, refusals give back.

The gateway runs under uvicorn with its DynamoDB client pointed at a fault proxy in front
of the moto server (tests/fault_proxy.py): the proxy can drop an answer after the write
landed (botocore then sends the write again) or hold every request for a while.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tollgate.adapters.dynamodb_http import shared_dynamodb

pytestmark = pytest.mark.integration


@pytest.fixture
def gateway_via_proxy(gateway_factory, fault_proxy, monkeypatch) -> Iterator[Any]:
    """A gateway whose DynamoDB calls go through the fault proxy (short timeouts, 3 tries)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", fault_proxy.url)
    shared_dynamodb.cache_clear()
    try:
        with gateway_factory(dynamodb_timeout_s=0.4, dynamodb_max_attempts=3) as gateway:
            yield gateway
    finally:
        shared_dynamodb.cache_clear()


def usage_event(response) -> dict[str, Any]:
    blocks = [block for block in response.text.split("\n\n") if block.startswith("event: usage")]
    import json

    return json.loads(blocks[0].split("data: ", 1)[1])


def test_a_hold_whose_answer_was_lost_is_counted_once(
    gateway_via_proxy, fault_proxy, offline_model
) -> None:
    # Given a DynamoDB whose answer to the first budget write is lost after the write landed
    fault_proxy.drop_responses("UpdateItem", count=1)
    # When a chat goes through (botocore sends the write again)
    response = gateway_via_proxy.chat("Hello")
    # Then the reply is charged once: the usage equals what upstream reported
    assert response.status_code == 200, response.text
    assert fault_proxy.forwarded("UpdateItem") >= 3  # hold, its retry, settlement
    used = usage_event(response)
    charged = used["input_tokens"] + used["output_tokens"]
    assert gateway_via_proxy.usage()["tokens_used"] == charged
    assert used["budget"]["tokens_used"] == charged


def test_a_refusal_after_a_paused_dynamodb_gives_its_hold_back(
    gateway_via_proxy, fault_proxy, offline_model
) -> None:
    # Given DynamoDB paused past the client's timeouts (every try of the hold lands later)
    fault_proxy.pause(2.0)
    # When a chat arrives
    response = gateway_via_proxy.chat("Hello")
    # Then it fails closed, upstream is never called
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "dependency_unavailable"
    assert offline_model.requests() == []
    # And once DynamoDB answers again, the hold is given back: nothing stays charged
    deadline = time.monotonic() + 15
    used = None
    while time.monotonic() < deadline:
        used = gateway_via_proxy.usage()["tokens_used"]
        if used == 0:
            break
        time.sleep(0.5)
    assert used == 0


TAMIL = "தமிழ் ஒரு செம்மொழி ஆகும். " * 20  # 182 tokens in o200k_base, 681 in cl100k_base


def test_a_fallback_to_a_less_efficient_tokenizer_is_held_for_in_advance(
    gateway_factory, offline_model
) -> None:
    # Given a chain whose fallback (cl100k_base) counts this text almost four times as long,
    # and a first model that fails
    offline_model.add_fault(model="gpt-4o-mini", kind="status", status=500)
    chain = {"model_chain": "gpt-4o-mini,gpt-3.5-turbo", "max_output_tokens": 20}
    with gateway_factory(daily_token_limit=600, **chain) as gateway:
        # When the limit covers the message in the first model's encoding only
        refused = gateway.chat(TAMIL, user_id="tight")
        tight = gateway.usage("tight")
    with gateway_factory(daily_token_limit=1_000, **chain) as gateway:
        # And when it covers the fallback's count too
        admitted = gateway.chat(TAMIL, user_id="roomy")
        roomy = gateway.usage("roomy")
        [record] = gateway.wait_for_records(1)

    # Then the first is refused up front (nothing charged, upstream never called)...
    assert refused.status_code == 429
    assert tight["tokens_used"] == 0
    # ...and the second falls back and is charged within its limit
    assert admitted.status_code == 200, admitted.text
    assert record["model"] == "gpt-3.5-turbo"
    used = usage_event(admitted)
    assert used["input_tokens"] > 681
    assert roomy["tokens_used"] == used["input_tokens"] + used["output_tokens"] <= 1_000


def test_the_usage_event_says_when_the_budget_is_unknown(
    gateway_via_proxy, fault_proxy, offline_model
) -> None:
    # Given a reply streaming when DynamoDB stops answering for longer than settling retries
    offline_model.set_config(chunk_interval_s=0.05, reply_tokens=40)
    with gateway_via_proxy.http.stream(
        "POST", "/chat", json={"message": "Hello"}, headers=gateway_via_proxy.headers()
    ) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith('data: {"delta"'))
        fault_proxy.pause(10.0)
        text = "\n".join(lines)
    used = usage_event_from(text)
    # Then the event does not pretend: no budget figures, and a reason
    assert used["budget"] is None
    assert "budget_unavailable" in used
    assert used["input_tokens"] > 0


def usage_event_from(text: str) -> dict[str, Any]:
    import json

    block = text.split("event: usage\n", 1)[1]
    return json.loads(block.split("\n", 1)[0].removeprefix("data: "))


def test_summary_calls_are_shown_in_the_usage_event_that_caused_them(
    gateway_factory, offline_model
) -> None:
    # Given a conversation whose history target makes older turns fold into a summary
    with gateway_factory(history_token_target=120, max_output_tokens=40) as gateway:
        first = gateway.chat("Tell me about the sea")
        conversation_id = usage_meta(first)["conversation_id"]
        responses = [first] + [
            gateway.chat(f"And then part {n}?", conversation_id=conversation_id) for n in range(6)
        ]
        usage = gateway.usage()
        records = gateway.wait_for_records(7)

    events = [usage_event(response) for response in responses]
    summaries = [event["summary"] for event in events if "summary" in event]
    summary_records = [r for r in records if r["kind"] == "summary"]
    # Then every summary call the user paid for is in a usage event...
    assert summary_records
    assert len(summaries) == len(summary_records)
    # ...and the events add up to what the budget holds
    total = sum(e["input_tokens"] + e["output_tokens"] for e in events) + sum(
        s["input_tokens"] + s["output_tokens"] for s in summaries
    )
    assert usage["tokens_used"] == total


def usage_meta(response) -> dict[str, Any]:
    import json

    block = response.text.split("event: meta\n", 1)[1]
    return json.loads(block.split("\n", 1)[0].removeprefix("data: "))


def test_cancels_and_usage_reads_count_in_the_rate_limit(gateway_factory, offline_model) -> None:
    # Given a rate limit of 4 requests a minute and one chat already made (1 of 4)
    with gateway_factory(rate_limit_per_minute=4) as gateway:
        response = gateway.chat("Hello")
        request_id = response.headers["x-request-id"]
        # When the user cancels it again and again, and reads the budget
        cancels = [
            gateway.http.post(f"/chat/{request_id}/cancel", headers=gateway.headers()).status_code
            for _ in range(2)
        ]
        reads = [
            gateway.http.get("/usage", headers=gateway.headers()).status_code for _ in range(2)
        ]
        # And a made-up id, which the gateway never issued, never reaches the store
        forged = gateway.http.post(f"/chat/{'0' * 48}/cancel", headers=gateway.headers())

    # Then both kinds are counted: the fifth request of the minute is refused
    assert cancels == [202, 202]
    assert reads == [200, 429]
    assert forged.status_code == 404
