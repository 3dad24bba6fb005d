"""The in-memory stores keep the DynamoDB adapters' semantics (the same checks, in short).

These mirror tests/integration/test_conversation_store.py, so the benchmark's fake cannot
drift silently; the budget store's contract runs against both in test_usage_store.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest

from tollgate.adapters.memory_store import (
    MemoryConversationStore,
    MemoryRequestRegistry,
)
from tollgate.errors import ConversationLimit, NotFound, TurnConflict
from tollgate.ports import ConversationState, Limits, Turn

T = TypeVar("T")
ALICE, BOB = "alice", "bob"
DAY = "2026-03-01"
LIMITS = Limits(tokens=1000, cost_micros=None)
EXPIRES = 1_900_000_000
# delete() checks expiry against the real clock, as the DynamoDB store does
NOW = datetime.now(UTC).replace(microsecond=0)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def make_turn(number: int, tokens: int = 10) -> Turn:
    return Turn(number, "hi", "hello", "gpt-4o-mini", tokens, tokens, 123, "t", tokens)


def begin(
    store: MemoryConversationStore,
    conversation_id: str | None,
    *,
    user: str = ALICE,
    request_id: str = "req-1",
    now: datetime = NOW,
    lease: timedelta = timedelta(minutes=3),
    limit: int = 200_000,
) -> ConversationState:
    return run(
        store.begin_turn(
            conversation_id, user, request_id, lease_until=now + lease, token_limit=limit, now=now
        )
    )


def start_conversation(store: MemoryConversationStore, turns: int = 1, tokens: int = 10) -> str:
    state = begin(store, None)
    assert run(store.commit_turn(state, "req-0", make_turn(1, tokens), now=NOW, release_lease=True))
    for number in range(2, turns + 1):
        state = begin(store, state.conversation_id, request_id=f"req-{number}")
        turn = make_turn(number, tokens)
        assert run(store.commit_turn(state, f"req-{number}", turn, now=NOW, release_lease=True))
    return state.conversation_id


# ---------------------------------------------------------------- request registry


def test_a_cancel_signal_is_seen_by_the_streaming_side() -> None:
    registry = MemoryRequestRegistry()
    expires = int(NOW.timestamp()) + 10**9
    assert not run(registry.is_cancelled("req"))
    run(registry.signal_cancel("req", expires))
    run(registry.signal_cancel("req", expires))  # again: idempotent
    assert run(registry.is_cancelled("req"))
    assert not run(registry.is_cancelled("other"))


# ---------------------------------------------------------------- conversations


def test_a_new_conversation_exists_only_once_its_first_turn_commits() -> None:
    store = MemoryConversationStore()
    state = begin(store, None)
    assert state.is_new
    assert len(state.conversation_id) == 32
    with pytest.raises(NotFound):
        run(store.get(state.conversation_id, ALICE, NOW))
    assert run(store.commit_turn(state, "req-1", make_turn(1, 7), now=NOW, release_lease=True))
    view = run(store.get(state.conversation_id, ALICE, NOW))
    assert (view.total_tokens, [turn.turn for turn in view.turns]) == (14, [1])


def test_continuing_loads_earlier_turns_and_a_live_lease_conflicts() -> None:
    store = MemoryConversationStore()
    conversation_id = start_conversation(store)
    state = begin(store, conversation_id, request_id="req-a")
    assert (state.turn_count, state.total_tokens, len(state.turns)) == (1, 20, 1)
    with pytest.raises(TurnConflict):
        begin(store, conversation_id, request_id="req-b")
    run(store.release_turn(state, "req-a"))
    run(store.release_turn(state, "req-a"))
    assert begin(store, conversation_id, request_id="req-b").turn_count == 1


def test_an_expired_lease_is_taken_over_and_its_holder_cannot_commit() -> None:
    store = MemoryConversationStore()
    conversation_id = start_conversation(store)
    stale = begin(store, conversation_id, request_id="req-a", lease=timedelta(seconds=5))
    later = NOW + timedelta(seconds=6)
    fresh = begin(store, conversation_id, request_id="req-b", now=later)
    assert run(store.commit_turn(fresh, "req-b", make_turn(2), now=later, release_lease=True))
    assert not run(store.commit_turn(stale, "req-a", make_turn(3), now=later, release_lease=True))
    assert [turn.turn for turn in run(store.get(conversation_id, ALICE, later)).turns] == [1, 2]


@pytest.mark.parametrize("conversation_id", ["not-a-conversation", "0" * 32, "A" * 32])
def test_unknown_or_malformed_ids_are_not_found(conversation_id: str) -> None:
    store = MemoryConversationStore()
    with pytest.raises(NotFound):
        begin(store, conversation_id)
    with pytest.raises(NotFound):
        run(store.get(conversation_id, ALICE, NOW))
    with pytest.raises(NotFound):
        run(store.delete(conversation_id, ALICE))


def test_another_users_or_an_expired_conversation_is_not_found() -> None:
    store = MemoryConversationStore()
    conversation_id = start_conversation(store)
    with pytest.raises(NotFound):
        begin(store, conversation_id, user=BOB)
    with pytest.raises(NotFound):
        run(store.delete(conversation_id, BOB))
    assert begin(store, conversation_id).turn_count == 1  # BOB took no lease
    with pytest.raises(NotFound):
        run(store.get(conversation_id, ALICE, NOW + timedelta(days=31)))


def test_the_token_limit_refuses_new_turns() -> None:
    store = MemoryConversationStore()
    conversation_id = start_conversation(store, tokens=50)
    with pytest.raises(ConversationLimit):
        begin(store, conversation_id, limit=100)
    assert begin(store, conversation_id, limit=101).total_tokens == 100


def test_delete_during_a_turn_makes_its_commit_fail() -> None:
    store = MemoryConversationStore()
    conversation_id = start_conversation(store, turns=3)
    in_flight = begin(store, conversation_id, request_id="req-4")
    run(store.delete(conversation_id, ALICE))
    assert not run(store.commit_turn(in_flight, "req-4", make_turn(4), now=NOW, release_lease=True))
    with pytest.raises(NotFound):
        run(store.get(conversation_id, ALICE, NOW))


def test_a_summary_replaces_the_turns_it_covers_and_needs_the_lease() -> None:
    store = MemoryConversationStore()
    conversation_id = start_conversation(store, turns=4)
    state = begin(store, conversation_id, request_id="req-5")
    assert run(store.commit_turn(state, "req-5", make_turn(5), now=NOW, release_lease=False))
    assert not run(
        store.save_summary(
            state, "other", summary="x", through_turn=3, summary_tokens=1, charged_tokens=1, now=NOW
        )
    )
    assert run(
        store.save_summary(
            state,
            "req-5",
            summary="Alice is planning a trip.",
            through_turn=3,
            summary_tokens=17,
            charged_tokens=300,
            now=NOW,
        )
    )
    following = begin(store, conversation_id, request_id="req-6")
    assert (following.summary_through_turn, following.summary_tokens) == (3, 17)
    assert [turn.turn for turn in following.turns] == [4, 5]
    assert following.total_tokens == 5 * 20 + 300
    assert len(run(store.get(conversation_id, ALICE, NOW)).turns) == 5


def test_a_new_conversation_keeps_its_lease_for_a_summary() -> None:
    store = MemoryConversationStore()
    state = begin(store, None)
    assert run(store.commit_turn(state, "req-1", make_turn(1), now=NOW, release_lease=False))
    with pytest.raises(TurnConflict):
        begin(store, state.conversation_id, request_id="req-x")
    assert run(
        store.save_summary(
            state, "req-1", summary="s", through_turn=0, summary_tokens=0, charged_tokens=5, now=NOW
        )
    )
    assert begin(store, state.conversation_id, request_id="req-2").total_tokens == 25
