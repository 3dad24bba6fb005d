"""The response cache's rules: keys, what may be stored, how a stored reply is replayed."""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from tollgate.cache import (
    MAX_ENTRY_BYTES,
    CachePolicy,
    chat_wants_cache,
    completion_wants_cache,
    normalise_message,
    replay_chunks,
    storable,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
ASKED = {
    "prompt_name": "default",
    "prompt_text": "You are helpful.",
    "message": "Hi there",
    "model": "gpt-4o-mini",
    "cap": 800,
}


def test_whitespace_is_trimmed_and_collapsed() -> None:
    assert normalise_message("  Hi \t there\n\nfriend  ") == "Hi there friend"


def test_every_part_of_a_chat_key_matters_and_whitespace_does_not() -> None:
    policy = CachePolicy(ttl_s=60)
    key = policy.chat_key(user_id="alice", **ASKED)
    assert policy.chat_key(user_id="bob", **{**ASKED, "message": " Hi   there "}) == key
    for field, other in [
        ("prompt_name", "concise"),
        ("prompt_text", "You are terse."),
        ("message", "hi there"),
        ("model", "gpt-4o"),
        ("cap", 799),
    ]:
        assert policy.chat_key(user_id="alice", **{**ASKED, field: other}) != key, field


def test_a_user_scoped_cache_keys_by_user() -> None:
    policy = CachePolicy(ttl_s=60, scope="user")
    assert policy.chat_key(user_id="alice", **ASKED) != policy.chat_key(user_id="bob", **ASKED)
    body = {"model": "gpt-4o-mini", "messages": []}
    assert policy.completion_key(user_id="a", body=body) != policy.completion_key(
        user_id="b", body=body
    )


def test_a_completion_key_ignores_stream_options_and_user_and_key_order() -> None:
    policy = CachePolicy(ttl_s=60)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}
    key = policy.completion_key(user_id="alice", body=body)
    same = {
        "messages": body["messages"],
        "model": "gpt-4o-mini",
        "stream": True,
        "stream_options": {"include_usage": True},
        "user": "someone",
    }
    assert policy.completion_key(user_id="bob", body=same) == key
    assert policy.completion_key(user_id="alice", body={**body, "temperature": 0}) != key


def test_only_normally_completed_replies_are_storable() -> None:
    assert storable("completed", "stop", "text")
    assert not storable("completed", "length", "text")  # cut by the cap
    assert not storable("completed", "tool_calls", "text")
    assert not storable("cancelled", "stop", "text")
    assert not storable("timeout", None, "text")
    assert not storable("upstream_error", None, "text")
    assert not storable("completed", "stop", "")


def test_a_reply_too_large_to_store_is_not_cached() -> None:
    policy = CachePolicy(ttl_s=60)
    entry = policy.entry("word " * 100, "gpt-4o-mini", 42, NOW)
    assert entry is not None
    assert entry.expires_at == int(NOW.timestamp()) + 60
    assert policy.entry("x" * MAX_ENTRY_BYTES, "gpt-4o-mini", 42, NOW) is None
    assert policy.entry("é" * (MAX_ENTRY_BYTES // 2), "gpt-4o-mini", 42, NOW) is None  # bytes


def test_the_header_turns_the_cache_off_on_chat_and_on_on_completions() -> None:
    assert chat_wants_cache(None)
    assert not chat_wants_cache(" OFF ")
    assert not completion_wants_cache(None)
    assert completion_wants_cache("on")


@given(st.text())
def test_replay_chunks_join_to_the_text(text: str) -> None:
    chunks = replay_chunks(text)
    assert "".join(chunks) == text
    assert all(chunks)


def test_replay_chunks_are_word_groups() -> None:
    assert replay_chunks("one two three four five six") == ["one two three four", " five six"]
    assert replay_chunks("  lead and trail \n") == ["  lead and trail \n"]
