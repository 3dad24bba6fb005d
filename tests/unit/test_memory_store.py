"""The in-memory stores keep the DynamoDB adapters' semantics (the same checks, in short).

These mirror tests/integration/test_conversation_store.py and the budget rules of
tollgate.adapters.usage_store, so the benchmark's fake cannot drift silently.
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
    MemoryUsageStore,
)
from tollgate.errors import ConversationLimit, NotFound, TurnConflict
from tollgate.ports import ConversationState, Limits, RateWindow, RateWindowFull, Turn

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


# ---------------------------------------------------------------- budgets


def test_reservations_never_pass_the_limit_and_add_to_an_open_one() -> None:
    store = MemoryUsageStore()
    assert run(store.reserve(ALICE, DAY, "r1", 600, 6, LIMITS, 0)) is not None
    assert run(store.reserve(ALICE, DAY, "r2", 401, 4, LIMITS, 0)) is None
    topped = run(store.reserve(ALICE, DAY, "r1", 400, 4, LIMITS, 0))
    assert topped is not None
    assert (topped.tokens, topped.reserved_tokens) == (1000, 1000)
    assert run(store.reserve(BOB, DAY, "r3", 1000, 0, LIMITS, 0)) is not None
    # a dollar limit refuses on its own
    dollars = Limits(tokens=10_000, cost_micros=10)
    assert run(store.reserve("carol", DAY, "r4", 1, 11, dollars, 0)) is None


def test_concurrent_reservations_admit_exactly_what_fits() -> None:
    store = MemoryUsageStore()

    async def fifty() -> list[Any]:
        return await asyncio.gather(
            *(store.reserve(ALICE, DAY, f"r{i}", 100, 1, LIMITS, 0) for i in range(50))
        )

    admitted = [result for result in run(fifty()) if result is not None]
    assert len(admitted) == 10
    assert run(store.counters(ALICE, DAY)).tokens == 1000


def test_settle_is_idempotent_and_release_gives_back() -> None:
    store = MemoryUsageStore()
    run(store.reserve(ALICE, DAY, "r1", 500, 50, LIMITS, 0))
    run(store.reserve(ALICE, DAY, "r2", 300, 30, LIMITS, 0))
    settled = run(store.settle(ALICE, DAY, "r1", (500, 50), (120, 12)))
    assert settled is not None
    assert (settled.tokens, settled.cost_micros, settled.requests) == (420, 42, 1)
    assert (settled.reserved_tokens, settled.reserved_micros) == (300, 30)
    assert run(store.settle(ALICE, DAY, "r1", (500, 50), (120, 12))) is None
    run(store.release(ALICE, DAY, "r2", (300, 30)))
    run(store.release(ALICE, DAY, "r2", (300, 30)))  # idempotent
    counters = run(store.counters(ALICE, DAY))
    assert (counters.tokens, counters.reserved_tokens, counters.requests) == (120, 0, 1)
    assert run(store.counters(BOB, DAY)).tokens == 0


def test_a_cancel_signal_is_seen_by_the_streaming_side() -> None:
    registry = MemoryRequestRegistry()
    expires = int(NOW.timestamp()) + 10**9
    assert not run(registry.is_cancelled("req"))
    run(registry.signal_cancel("req", expires))
    run(registry.signal_cancel("req", expires))  # again: idempotent
    assert run(registry.is_cancelled("req"))
    assert not run(registry.is_cancelled("other"))


def test_the_rate_window_refuses_past_its_limit_and_reserves_nothing() -> None:
    store = MemoryUsageStore()
    minute = RateWindow(window="2026-03-01T12:00", previous="2026-03-01T11:59", limit=2)
    for request_id in ("r1", "r2"):
        assert run(store.reserve(ALICE, DAY, request_id, 10, 1, LIMITS, EXPIRES, minute))
    with pytest.raises(RateWindowFull):
        run(store.reserve(ALICE, DAY, "r3", 10, 1, LIMITS, EXPIRES, minute))
    assert run(store.counters(ALICE, DAY)).tokens == 20
    next_minute = RateWindow(window="2026-03-01T12:01", previous="2026-03-01T12:00", limit=2)
    assert run(store.reserve(ALICE, DAY, "r4", 10, 1, LIMITS, EXPIRES, next_minute))


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
