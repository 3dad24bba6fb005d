"""Server-owned conversations over real HTTP: bounded prompts, summaries, ownership, erasure."""

from __future__ import annotations

import itertools
import json

import pytest

from tests.gateway_fixture import parse_sse

pytestmark = pytest.mark.integration

SUMMARY_MARKER = "<previous_summary>"


def meta_of(response) -> dict:
    assert response.status_code == 200, response.text
    return json.loads(parse_sse(response.text)[0][1])


def chat_requests(offline_model) -> list[dict]:
    return [
        r for r in offline_model.ended_requests() if SUMMARY_MARKER not in json.dumps(r["messages"])
    ]


def summary_requests(offline_model) -> list[dict]:
    return [
        r for r in offline_model.ended_requests() if SUMMARY_MARKER in json.dumps(r["messages"])
    ]


def test_thirty_turns_stay_bounded_while_naive_history_grows(
    gateway_factory, offline_model
) -> None:
    offline_model.set_config(reply_tokens=60)
    target = 400
    with gateway_factory(history_token_target=target) as gateway:
        conversation_id = None
        for turn in range(30):
            response = gateway.chat(
                f"Turn {turn}: tell me more about the garden and the river.",
                conversation_id=conversation_id,
            )
            conversation_id = meta_of(response)["conversation_id"]
        stored = gateway.http.get(
            f"/conversations/{conversation_id}", headers=gateway.headers()
        ).json()
        records = gateway.cost_records()
        usage = gateway.usage()

    prompts = [r["prompt_tokens"] for r in chat_requests(offline_model)]
    assert len(prompts) == 30
    # naive: every earlier turn re-sent
    naive = [prompts[0] + sum(60 + 20 for _ in range(i)) for i in range(30)]
    assert naive[-1] > 2000
    assert max(prompts) < target + 200  # system prompt + message + framing on top of the target
    assert max(prompts[10:]) - min(prompts[10:]) < target

    summaries = summary_requests(offline_model)
    assert len(summaries) >= 2
    # incremental: each summary call carries the previous summary, not the whole history
    second = json.dumps(summaries[1]["messages"])
    assert "(none: this is the start of the conversation)" in json.dumps(summaries[0]["messages"])
    assert "(none: this is the start of the conversation)" not in second
    assert stored["summary"]
    assert stored["summary_through_turn"] >= 10
    assert [t["turn"] for t in stored["turns"]] == list(range(1, 31))
    assert set(stored["turns"][0]) == {
        "turn",
        "user",
        "assistant",
        "model",
        "input_tokens",
        "output_tokens",
        "cost_usd",
        "created_at",
    }

    summary_records = [r for r in records if r["kind"] == "summary"]
    assert len(summary_records) == len(summaries)
    assert {r["model"] for r in summary_records} == {"gpt-4o-mini"}
    assert all(r["conversation_id"] == conversation_id for r in summary_records)
    assert usage["tokens_used"] == sum(r["input_tokens"] + r["output_tokens"] for r in records)
    assert stored["total_tokens"] == usage["tokens_used"]


def test_summary_prefix_stays_byte_stable_between_folds(gateway_factory, offline_model) -> None:
    offline_model.set_config(reply_tokens=60)
    with gateway_factory(history_token_target=600) as gateway:
        conversation_id = None
        for turn in range(16):
            response = gateway.chat(f"Message {turn}", conversation_id=conversation_id)
            conversation_id = meta_of(response)["conversation_id"]

    prefixes = [json.dumps(r["messages"][:2]) for r in chat_requests(offline_model)]
    with_summary = [p for p in prefixes if "Summary of the earlier part" in p]
    assert with_summary
    # the same prefix is re-sent on consecutive turns until the next fold
    repeats = sum(a == b for a, b in itertools.pairwise(with_summary))
    assert repeats >= len(with_summary) // 2


def test_a_failing_summary_degrades_to_a_sliding_window(gateway_factory, offline_model) -> None:
    offline_model.set_config(reply_tokens=60)
    offline_model.add_fault(model="gpt-3.5-turbo", kind="status", status=500)
    with gateway_factory(history_token_target=300, summary_model="gpt-3.5-turbo") as gateway:
        conversation_id = None
        statuses = []
        for turn in range(10):
            response = gateway.chat(f"Turn {turn}", conversation_id=conversation_id)
            statuses.append(response.status_code)
            conversation_id = meta_of(response)["conversation_id"]
            assert "event: error" not in response.text
        stored = gateway.http.get(
            f"/conversations/{conversation_id}", headers=gateway.headers()
        ).json()

    assert statuses == [200] * 10
    assert stored["summary"] is None
    prompts = [
        r["prompt_tokens"] for r in chat_requests(offline_model) if r["model"] != "gpt-3.5-turbo"
    ]
    assert max(prompts) < 300 + 200


def test_only_the_owner_can_read_continue_or_delete(gateway) -> None:
    conversation_id = meta_of(gateway.chat("Secret plans"))["conversation_id"]
    path = f"/conversations/{conversation_id}"

    read = gateway.http.get(path, headers=gateway.headers("mallory"))
    continued = gateway.chat("Let me in", user_id="mallory", conversation_id=conversation_id)
    deleted = gateway.http.delete(path, headers=gateway.headers("mallory"))
    unknown = gateway.http.get(
        "/conversations/0123456789abcdef0123456789abcdef", headers=gateway.headers()
    )

    for response in (read, continued, deleted, unknown):
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    assert gateway.usage("mallory")["tokens_used"] == 0
    own = gateway.http.get(path, headers=gateway.headers())
    assert own.status_code == 200
    assert own.json()["turns"][0]["user"] == "Secret plans"


def test_delete_erases_every_item(gateway, dynamodb) -> None:
    conversation_id = None
    for turn in range(3):
        conversation_id = meta_of(gateway.chat(f"Turn {turn}", conversation_id=conversation_id))[
            "conversation_id"
        ]
    path = f"/conversations/{conversation_id}"

    deleted = gateway.http.delete(path, headers=gateway.headers())

    assert deleted.status_code == 204
    assert gateway.http.get(path, headers=gateway.headers()).status_code == 404
    items = dynamodb.scan(TableName=gateway.settings.conversations_table)["Items"]
    assert [item for item in items if conversation_id in item["pk"]["S"]] == []
    again = gateway.chat("Back?", conversation_id=conversation_id)
    assert again.status_code == 404


def test_new_conversation_refused_by_budget_stores_nothing(gateway_factory, dynamodb) -> None:
    with gateway_factory(daily_token_limit=10) as gateway:
        response = gateway.chat("Hello")

    assert response.status_code == 429
    assert dynamodb.scan(TableName=gateway.settings.conversations_table)["Items"] == []
