"""Documented behaviours of a stream's ending that no other test pinned (issue 17's audit):
each test here failed when the behaviour was broken on purpose."""

from __future__ import annotations

import json
import time

import pytest

from tests.gateway_fixture import parse_sse

pytestmark = pytest.mark.integration


def usage_event(events: list[tuple[str | None, str]]) -> dict:
    [usage] = [json.loads(data) for name, data in events if name == "usage"]
    return usage


def meta_event(events: list[tuple[str | None, str]]) -> dict:
    return json.loads(events[0][1])


def test_a_timed_out_stream_settles_the_budget(gateway_factory, offline_model) -> None:
    offline_model.set_config(reply_tokens=200, chunk_interval_s=0.05)
    with gateway_factory(stream_timeout_s=1.0) as gateway:
        events = parse_sse(gateway.chat("Hi").text)
        usage = gateway.usage()

    assert [name for name, _ in events[-3:]] == ["usage", "error", None]
    charged = usage_event(events)
    assert 0 < charged["output_tokens"] < 200
    assert usage["tokens_used"] == charged["input_tokens"] + charged["output_tokens"]


def test_a_refused_turn_conflict_gives_its_reservation_back(gateway, offline_model) -> None:
    conversation_id = meta_event(parse_sse(gateway.chat("First").text))["conversation_id"]
    offline_model.set_config(reply_tokens=100, chunk_interval_s=0.05)
    with gateway.http.stream(
        "POST",
        "/chat",
        json={"message": "Second", "conversation_id": conversation_id},
        headers=gateway.headers(),
    ) as streaming:
        lines = streaming.iter_lines()
        next(line for line in lines if line.startswith('data: {"delta"'))
        before = gateway.usage()["tokens_used"]  # the first turn, and the second's hold

        refused = gateway.chat("Third", conversation_id=conversation_id)
        after = gateway.usage()["tokens_used"]
        list(lines)

    assert (refused.status_code, refused.json()["error"]["code"]) == (409, "turn_conflict")
    assert after == before


def test_a_stream_cancelled_before_its_first_token_charges_its_input(
    gateway, offline_model
) -> None:
    offline_model.set_config(first_token_delay_s=3.0)
    lines: list[str] = []
    with gateway.http.stream(
        "POST", "/chat", json={"message": "Hi"}, headers=gateway.headers()
    ) as response:
        request_id = response.headers["x-request-id"]
        stream = response.iter_lines()
        for line in stream:  # meta: upstream answered, no token yet
            lines.append(line)
            if line.startswith("data: {"):
                break
        cancelled = gateway.http.post(f"/chat/{request_id}/cancel", headers=gateway.headers())
        assert cancelled.status_code == 202
        lines.extend(stream)

    events = parse_sse("\n".join(lines) + "\n")
    assert not [data for name, data in events if name is None and data != "[DONE]"]
    charged = usage_event(events)
    assert charged["input_tokens"] > 0
    assert charged["output_tokens"] == 0
    assert gateway.usage()["tokens_used"] == charged["input_tokens"]
    assert gateway.wait_for_records(1)[0]["outcome"] == "cancelled"


def test_a_reply_cut_by_upstream_is_not_stored_as_a_turn(gateway, offline_model) -> None:
    conversation_id = meta_event(parse_sse(gateway.chat("First").text))["conversation_id"]
    offline_model.add_fault(kind="cut", cut_after_chunks=3)

    events = parse_sse(gateway.chat("Second", conversation_id=conversation_id).text)

    assert json.loads(dict(events)["error"])["code"] == "upstream_error"
    view = gateway.http.get(f"/conversations/{conversation_id}", headers=gateway.headers()).json()
    assert [turn["user"] for turn in view["turns"]] == ["First"]


def test_summary_work_comes_after_a_reply_never_before_the_next_one(
    gateway_factory, offline_model
) -> None:
    # Given a conversation whose history target is small enough that turns get folded,
    # with summaries on their own model so that the model server's log tells them apart
    offline_model.set_config(reply_tokens=60)
    sent_at: list[float] = []
    with gateway_factory(history_token_target=150, summary_model="gpt-4o") as gateway:
        conversation_id = None
        for turn in range(6):
            sent_at.append(time.time())  # the model server runs in this process: one clock
            fields = {"conversation_id": conversation_id} if conversation_id else {}
            events = parse_sse(gateway.chat(f"Tell me about topic {turn}", **fields).text)
            conversation_id = meta_event(events)["conversation_id"]
        log = offline_model.ended_requests()

    chats = [r for r in log if r["model"] == "gpt-4o-mini"]
    summaries = [r for r in log if r["model"] == "gpt-4o"]
    assert len(chats) == 6
    assert summaries, "no turn was folded: the test does not exercise summaries"
    for summary in summaries:
        # each summary starts after the reply of the turn that planned it has ended upstream
        folded = max(
            (c for c in chats if c["started_at"] < summary["started_at"]),
            key=lambda c: c["started_at"],
        )
        assert folded["ended_at"] <= summary["started_at"]
        # and no summary runs between a turn being sent and its upstream call
        for sent, chat in zip(sent_at, chats, strict=True):
            assert not (sent <= summary["started_at"] <= chat["started_at"])
