"""Given-steps shared by the conversation store tests: turns, a turn begun, a conversation."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tollgate.ports import ConversationState, ConversationStore, Turn

ALICE, BOB = "alice", "bob"
TTL_DAYS = 30
LIMIT = 200_000


def make_turn(number: int, *, user: str = "hi", assistant: str = "hello", tokens: int = 10) -> Turn:
    return Turn(
        turn=number,
        user=user,
        assistant=assistant,
        model="gpt-4o-mini",
        input_tokens=tokens,
        output_tokens=tokens,
        cost_micros=123,
        created_at="2026-03-01T12:00:00.000Z",
        history_tokens=tokens,
    )


async def begin(
    store: ConversationStore,
    conversation_id: str | None,
    now: datetime,
    *,
    user: str = ALICE,
    request_id: str = "req-1",
    lease: timedelta = timedelta(minutes=3),
    limit: int = LIMIT,
) -> ConversationState:
    return await store.begin_turn(
        conversation_id, user, request_id, lease_until=now + lease, token_limit=limit, now=now
    )


async def start_conversation(
    store: ConversationStore, now: datetime, turns: int = 1, **turn_fields: Any
) -> str:
    """Given a conversation of ALICE's with `turns` committed turns; returns its id."""
    state = await begin(store, None, now)
    assert await store.commit_turn(
        state, "req-0", make_turn(1, **turn_fields), now=now, release_lease=True
    )
    for number in range(2, turns + 1):
        state = await begin(store, state.conversation_id, now, request_id=f"req-{number}")
        turn = make_turn(number, **turn_fields)
        assert await store.commit_turn(state, f"req-{number}", turn, now=now, release_lease=True)
    return state.conversation_id
