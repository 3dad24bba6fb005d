"""The response cache over real HTTP: the gateway under uvicorn, DynamoDB on moto, the
offline model server (whose request log shows whether upstream was called)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import openai
import pytest

from tests.gateway_fixture import parse_sse
from tollgate.adapters.cache_store import DynamoReplyCache
from tollgate.ports import CachedReply
from tollgate.prompts import PromptLibrary

pytestmark = pytest.mark.integration

QUESTION = "What does Tollgate do?"


@dataclass
class Reply:
    response: httpx.Response
    events: list[tuple[str | None, str]]

    def named(self, name: str) -> dict[str, Any]:
        matches = [json.loads(data) for event, data in self.events if event == name]
        assert len(matches) == 1, self.events
        return matches[0]

    @property
    def meta(self) -> dict[str, Any]:
        return self.named("meta")

    @property
    def usage(self) -> dict[str, Any]:
        return self.named("usage")

    @property
    def text(self) -> str:
        return "".join(
            json.loads(data)["delta"]
            for event, data in self.events
            if event is None and data != "[DONE]"
        )

    @property
    def cached(self) -> bool:
        return self.meta.get("cached") is True


def ask(gateway, message: str = QUESTION, *, headers: dict[str, str] | None = None, **fields):
    response = gateway.http.post(
        "/chat",
        json={"message": message, **fields},
        headers={**gateway.headers(fields.pop("user_id", "alice")), **(headers or {})},
    )
    assert response.status_code == 200, response.text
    return Reply(response, parse_sse(response.text))


def upstream_calls(offline_model) -> int:
    return len(offline_model.ended_requests())


@pytest.fixture
def cached_gateway(gateway_factory) -> Iterator[Any]:
    with gateway_factory(cache_ttl_s=300) as gateway:
        yield gateway


def test_a_repeated_first_question_is_answered_from_the_cache(cached_gateway, offline_model):
    gateway = cached_gateway
    # Given a first question answered by upstream
    first = ask(gateway)
    assert not first.cached
    assert "cached" not in first.meta
    assert "x-tollgate-cache" not in first.response.headers
    usage_before = gateway.usage()
    # When the same first question is asked again, by another user (CACHE_SCOPE=global)
    again = ask(gateway, user_id="bob")
    # Then it streams the stored reply with the same event shape, and upstream is not called
    assert again.cached
    assert next(name for name, _ in again.events) == "meta"
    assert [name for name, _ in again.events][-2:] == ["usage", None]
    assert again.events[-1][1] == "[DONE]"
    assert len([e for e in again.events if e[0] is None]) > 2  # several deltas
    assert again.text == first.text
    assert again.meta["model"] == first.meta["model"]
    assert again.meta["conversation_id"] != first.meta["conversation_id"]
    assert again.response.headers["x-tollgate-cache"] == "hit"
    assert upstream_calls(offline_model) == 1
    usage = again.usage
    assert (usage["input_tokens"], usage["output_tokens"], usage["cost_usd"]) == (0, 0, 0)
    assert usage["saved_usd"] == first.usage["cost_usd"] > 0
    assert usage["budget"]["tokens_used"] == 0  # bob was charged nothing
    # And nothing was charged to anyone: both users' budgets are as they were
    assert gateway.usage() == usage_before
    assert gateway.usage("bob")["tokens_used"] == 0
    assert gateway.usage("bob")["cost_used_usd"] == 0
    # And the cost record says what the hit saved
    records = gateway.wait_for_records(2)
    hit = records[-1]
    assert hit["outcome"] == "cache_hit"
    assert hit["user_id"] == "bob"
    assert hit["saved_usd"] == first.usage["cost_usd"]
    assert (hit["input_tokens"], hit["output_tokens"], hit["cost_usd"]) == (0, 0, 0)
    assert hit["models_tried"] == []
    assert hit["ttft_ms"] is not None
    assert records[0]["saved_usd"] == 0


def test_the_cache_is_off_by_default(gateway, offline_model):
    ask(gateway)
    assert not ask(gateway).cached
    assert upstream_calls(offline_model) == 2


def test_the_message_is_keyed_with_its_whitespace_normalised(cached_gateway, offline_model):
    first = ask(cached_gateway, "What  does\tTollgate do?")
    spaced = ask(cached_gateway, "  What does\n\n Tollgate   do?  ")
    assert spaced.cached
    assert spaced.text == first.text
    assert not ask(cached_gateway, "what does tollgate do?").cached  # case is not whitespace
    assert upstream_calls(offline_model) == 2


def test_the_prompt_and_the_cap_are_in_the_key(cached_gateway, offline_model):
    ask(cached_gateway)
    assert not ask(cached_gateway, prompt="concise").cached
    assert not ask(cached_gateway, max_tokens=300).cached
    assert upstream_calls(offline_model) == 3
    # the key holds the effective cap: a cap above MAX_OUTPUT_TOKENS is clamped to it
    assert ask(cached_gateway, max_tokens=100_000).cached
    assert ask(cached_gateway, prompt="concise").cached
    assert upstream_calls(offline_model) == 3


def test_a_reply_cut_by_the_cap_is_not_stored(cached_gateway, offline_model):
    cut = ask(cached_gateway, max_tokens=3)
    assert len(cut.text) > 0
    assert not ask(cached_gateway, max_tokens=3).cached
    assert upstream_calls(offline_model) == 2


def test_a_reply_cut_by_upstream_is_not_stored(cached_gateway, offline_model):
    offline_model.add_fault(kind="cut", cut_after_chunks=3, times=1)
    broken = ask(cached_gateway)
    assert broken.named("error")["code"] == "upstream_error"
    assert not ask(cached_gateway).cached
    assert ask(cached_gateway).cached
    assert upstream_calls(offline_model) == 2


def test_a_timed_out_reply_is_not_stored(gateway_factory, offline_model):
    with gateway_factory(cache_ttl_s=300, stream_timeout_s=1.0) as gateway:
        offline_model.set_config(reply_tokens=40, chunk_interval_s=0.1)
        assert ask(gateway).named("error")["code"] == "timeout"
        offline_model.set_config(chunk_interval_s=0.0)
        assert not ask(gateway).cached
        assert ask(gateway).cached
        assert upstream_calls(offline_model) == 2


def test_a_cancelled_reply_is_not_stored(cached_gateway, offline_model):
    gateway = cached_gateway
    offline_model.set_config(reply_tokens=200, chunk_interval_s=0.05)
    with gateway.http.stream(
        "POST", "/chat", json={"message": QUESTION}, headers=gateway.headers()
    ) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        for line in lines:
            if line.startswith('data: {"delta"'):
                cancel = gateway.http.post(f"/chat/{request_id}/cancel", headers=gateway.headers())
                assert cancel.status_code == 202
                break
        for _ in lines:
            pass
    assert gateway.wait_for_records(1)[0]["outcome"] == "cancelled"
    offline_model.set_config(chunk_interval_s=0.0)
    assert not ask(gateway).cached
    assert upstream_calls(offline_model) == 2


def test_turns_of_an_existing_conversation_are_never_cached(cached_gateway, offline_model):
    first = ask(cached_gateway, "Hello")
    conversation_id = first.meta["conversation_id"]
    follow_up = ask(cached_gateway, "And then?", conversation_id=conversation_id)
    assert not follow_up.cached
    # neither read (the same follow-up again goes upstream) nor written (a new conversation
    # opening with the follow-up's words finds nothing)
    assert not ask(cached_gateway, "And then?", conversation_id=conversation_id).cached
    assert not ask(cached_gateway, "And then?").cached
    assert ask(cached_gateway, "And then?").cached  # a first question is
    assert upstream_calls(offline_model) == 4


def test_the_header_bypasses_the_cache(cached_gateway, offline_model):
    off = {"X-Tollgate-Cache": "off"}
    # no write: a reply to a bypassing request is not stored
    ask(cached_gateway, headers=off)
    assert not ask(cached_gateway).cached
    # no read: a bypassing request goes upstream although the reply is stored
    assert not ask(cached_gateway, headers=off).cached
    assert ask(cached_gateway).cached
    assert upstream_calls(offline_model) == 3


def test_a_cached_reply_expires_after_its_ttl(gateway_factory, offline_model):
    now = [datetime(2026, 3, 1, 12, 0, tzinfo=UTC)]
    with gateway_factory(clock=lambda: now[0], cache_ttl_s=60) as gateway:
        ask(gateway)
        now[0] += timedelta(seconds=59)
        assert ask(gateway).cached
        now[0] += timedelta(seconds=2)  # past the TTL: moto never deletes the item itself
        assert not ask(gateway).cached
        assert ask(gateway).cached  # stored afresh
        assert upstream_calls(offline_model) == 2


def test_a_hit_starts_a_conversation_that_continues_with_the_cached_turn(
    cached_gateway, offline_model
):
    gateway = cached_gateway
    first = ask(gateway)
    hit = ask(gateway, "  What does Tollgate   do? ", user_id="bob")
    assert hit.cached
    conversation_id = hit.meta["conversation_id"]
    # the conversation exists with the cached turn, charged nothing
    stored = gateway.http.get(
        f"/conversations/{conversation_id}", headers=gateway.headers("bob")
    ).json()
    assert [(t["user"], t["assistant"]) for t in stored["turns"]] == [
        ("  What does Tollgate   do? ", first.text)
    ]
    assert stored["turns"][0]["cost_usd"] == 0
    assert stored["total_tokens"] == 0
    # and its next turn sends the cached turn upstream as history
    follow_up = ask(gateway, "Say more", conversation_id=conversation_id, user_id="bob")
    assert not follow_up.cached
    prompt = offline_model.ended_requests()[-1]["messages"]
    assert prompt[-3:] == [
        {"role": "user", "content": "  What does Tollgate   do? "},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "Say more"},
    ]


def test_hits_count_toward_the_rate_limit(gateway_factory, offline_model):
    with gateway_factory(cache_ttl_s=300, rate_limit_per_minute=3) as gateway:
        ask(gateway)
        assert ask(gateway).cached
        assert ask(gateway).cached
        refused = gateway.chat(QUESTION)
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "rate_limited"
        assert upstream_calls(offline_model) == 1


def test_a_hit_is_served_when_the_budget_is_spent_and_still_counts_toward_the_rate(
    gateway_factory, offline_model, table_names, db
):
    # Given a stored reply, and users whose daily budget admits no upstream call at all
    with gateway_factory(cache_ttl_s=300, daily_token_limit=0, rate_limit_per_minute=2) as gw:
        key = gw.service.config.cache.chat_key(
            user_id="alice",
            prompt_name="default",
            prompt_text=PromptLibrary.load(None).get("default"),
            message=QUESTION,
            model=gw.settings.model_chain[0],
            cap=gw.settings.max_output_tokens,
        )
        store = DynamoReplyCache(table_names["ConversationsTable"], db)
        reply = CachedReply("Stored answer, word for word.", "gpt-4o-mini", 1234, 4_000_000_000)
        asyncio.run(store.put(key, reply))
        # When a new question and the stored one are asked
        miss = gw.chat("Something nobody asked before")
        hit = ask(gw)
        # Then the miss is refused, the hit served (it charges nothing) ...
        assert miss.status_code == 429
        assert miss.json()["error"]["code"] == "budget_exceeded"
        assert hit.cached
        assert hit.text == reply.text
        assert hit.usage["saved_usd"] == 0.001234
        # ... and counted in the minute (a refused request is not): the limit is 2
        assert ask(gw).cached
        assert gw.chat(QUESTION).json()["error"]["code"] == "rate_limited"
        assert upstream_calls(offline_model) == 0


# ---------------------------------------------------------------- /v1 with the openai SDK


def sdk(gateway, user_id: str = "alice", **options: Any) -> openai.AsyncOpenAI:
    token = gateway.headers(user_id)["Authorization"].removeprefix("Bearer ")
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=token, **options)


MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Name a river."},
]
CACHE_ON = {"X-Tollgate-Cache": "on"}


def test_completions_use_the_cache_only_when_asked(cached_gateway, offline_model):
    async def run() -> list[Any]:
        client = sdk(cached_gateway)
        results = []
        for headers in ({}, {}, CACHE_ON):
            raw = await client.chat.completions.with_raw_response.create(
                model="gpt-4o-mini", messages=MESSAGES, extra_headers=headers
            )
            results.append((raw.headers.get("x-tollgate-cache"), raw.parse()))
        await client.close()
        return results

    results = asyncio.run(run())
    # without the header: upstream every time (and nothing stored for a later opt-in)
    assert [header for header, _ in results] == [None, None, None]
    assert upstream_calls(offline_model) == 3


def test_completions_hit_in_stream_and_non_stream_form(cached_gateway, offline_model):
    async def run() -> tuple[Any, Any, Any, list[Any], str | None]:
        client = sdk(cached_gateway)
        stored = await client.chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers=CACHE_ON
        )
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers=CACHE_ON, user="someone"
        )
        streamed = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini",
            messages=MESSAGES,
            extra_headers=CACHE_ON,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [chunk async for chunk in streamed.parse()]
        await client.close()
        return stored, raw, raw.parse(), chunks, streamed.headers.get("x-tollgate-cache")

    stored, raw, hit, chunks, stream_header = asyncio.run(run())
    # the first call stored its reply; the second (non-stream, another `user`) is a hit
    assert raw.headers["x-tollgate-cache"] == "hit"
    assert hit.choices[0].message.content == stored.choices[0].message.content
    assert hit.choices[0].finish_reason == "stop"
    assert (hit.usage.prompt_tokens, hit.usage.completion_tokens, hit.usage.total_tokens) == (
        0,
        0,
        0,
    )
    # the stream form hits the same entry (`stream` and `stream_options` are not keyed)
    assert stream_header == "hit"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == stored.choices[0].message.content
    assert chunks[-1].usage.prompt_tokens == chunks[-1].usage.completion_tokens == 0
    assert upstream_calls(offline_model) == 1
    records = cached_gateway.wait_for_records(3)
    assert [r["outcome"] for r in records] == ["completed", "cache_hit", "cache_hit"]
    assert records[1]["saved_usd"] == records[0]["cost_usd"]
