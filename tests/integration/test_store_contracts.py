"""One contract, every implementation: the in-memory stores keep DynamoDB's semantics.

Each test runs against the process-local store and the DynamoDB adapter (moto server over
real HTTP, tables from template.yaml), so the benchmark's fake cannot drift from the real
thing. A store joins the suite with a fixture that builds it for each `backend`.
What only DynamoDB has (item layout, round trips, paging, outages) is tested in
tests/integration/test_conversation_store.py.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from tests.conversation_steps import (
    ALICE,
    BOB,
    TTL_DAYS,
    begin,
    make_turn,
    start_conversation,
)
from tollgate.adapters.memory_store import MemoryConversationStore, MemoryRequestRegistry
from tollgate.errors import ConversationLimit, NotFound, TurnConflict
from tollgate.ports import ConversationStore, RequestRegistry

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ExpireConversation = Callable[[str, int], None]


@pytest.fixture(params=["memory", "dynamodb"])
def backend(request: pytest.FixtureRequest) -> str:
    """Which implementation a store fixture builds. The DynamoDB ones ask for moto and fresh
    tables (conftest's `table_names`) only when built, so the memory runs need no server."""
    return str(request.param)


@pytest.fixture
def conversation_store(request: pytest.FixtureRequest, backend: str) -> ConversationStore:
    if backend == "memory":
        return MemoryConversationStore(ttl_days=TTL_DAYS)
    from tollgate.adapters.conversation_store import DynamoConversationStore

    tables = request.getfixturevalue("table_names")
    db = request.getfixturevalue("db")
    return DynamoConversationStore(tables["ConversationsTable"], db, ttl_days=TTL_DAYS)


@pytest.fixture
def request_registry(request: pytest.FixtureRequest, backend: str) -> RequestRegistry:
    if backend == "memory":
        return MemoryRequestRegistry()
    from tollgate.adapters.usage_store import DynamoRequestRegistry

    tables = request.getfixturevalue("table_names")
    return DynamoRequestRegistry(tables["UsageTable"], request.getfixturevalue("db"))


@pytest.fixture
def expire_conversation(
    request: pytest.FixtureRequest, conversation_store: ConversationStore
) -> ExpireConversation:
    """Test seam: move a conversation's idle expiry, as if time had passed for delete()."""
    if isinstance(conversation_store, MemoryConversationStore):
        return conversation_store.expire
    client: DynamoDBClient = request.getfixturevalue("dynamodb")
    table = request.getfixturevalue("table_names")["ConversationsTable"]

    def expire(conversation_id: str, expires_at: int) -> None:
        client.update_item(
            TableName=table,
            Key={"pk": {"S": f"CONV#{conversation_id}"}, "sk": {"S": "META"}},
            UpdateExpression="SET expires_at = :at",
            ExpressionAttributeValues={":at": {"N": str(expires_at)}},
        )

    return expire


@pytest.fixture
def now() -> datetime:
    # delete() checks expiry against the real clock, so the tests' clock starts at it
    return datetime.now(UTC).replace(microsecond=0)


# ---------------------------------------------------------------- conversations


async def test_a_new_conversation_exists_only_once_its_first_turn_commits(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a new conversation
    state = await begin(store, None, now)
    assert state.is_new
    assert len(state.conversation_id) == 32
    with pytest.raises(NotFound):
        await store.get(state.conversation_id, ALICE, now)

    # When its first turn commits
    committed = await store.commit_turn(
        state, "req-1", make_turn(1, tokens=7), now=now, release_lease=True
    )

    # Then it exists with the tokens counted, the lease free and TTL_DAYS of idle life
    assert committed
    view = await store.get(state.conversation_id, ALICE, now)
    assert (view.total_tokens, [turn.turn for turn in view.turns]) == (14, [1])
    assert view.turns[0].cost_micros == 123
    last_second = now + timedelta(days=TTL_DAYS, seconds=-1)
    assert (await store.get(state.conversation_id, ALICE, last_second)).total_tokens == 14
    with pytest.raises(NotFound):
        await store.get(state.conversation_id, ALICE, now + timedelta(days=TTL_DAYS))
    assert (await begin(store, state.conversation_id, now, request_id="req-2")).turn_count == 1


async def test_continuing_loads_the_earlier_turns_and_adds_to_the_totals(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a conversation with one turn
    conversation_id = await start_conversation(store, now, user="my name is Ada")

    # When the next turn begins and commits
    state = await begin(store, conversation_id, now, request_id="req-2")
    assert [turn.user for turn in state.turns] == ["my name is Ada"]
    assert (state.turn_count, state.total_tokens, state.is_new) == (1, 20, False)
    assert await store.commit_turn(state, "req-2", make_turn(2), now=now, release_lease=True)

    # Then the owner sees both turns
    view = await store.get(conversation_id, ALICE, now)
    assert [turn.turn for turn in view.turns] == [1, 2]
    assert view.total_tokens == 40
    assert view.turns[0].cost_micros == 123


async def test_a_second_turn_while_the_lease_is_live_is_a_conflict(
    conversation_store: ConversationStore, now: datetime
) -> None:
    # Given a turn in progress
    conversation_id = await start_conversation(conversation_store, now)
    await begin(conversation_store, conversation_id, now, request_id="req-a")

    # When another turn begins, Then it conflicts
    with pytest.raises(TurnConflict):
        await begin(conversation_store, conversation_id, now, request_id="req-b")


async def test_a_released_lease_lets_the_next_turn_begin(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a turn that gave its lease back without storing anything
    conversation_id = await start_conversation(store, now)
    state = await begin(store, conversation_id, now, request_id="req-a")
    await store.release_turn(state, "req-a")
    await store.release_turn(state, "req-a")  # idempotent

    # When another turn begins, Then it gets the lease
    assert (await begin(store, conversation_id, now, request_id="req-b")).turn_count == 1


async def test_an_expired_lease_is_taken_over_and_its_holder_cannot_commit(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a turn whose lease ran out (its instance died)
    conversation_id = await start_conversation(store, now)
    stale = await begin(store, conversation_id, now, request_id="req-a", lease=timedelta(seconds=5))

    # When another turn begins after the lease's end
    later = now + timedelta(seconds=6)
    fresh = await begin(store, conversation_id, later, request_id="req-b")

    # Then the new holder commits, and the old one's late commit writes nothing
    assert await store.commit_turn(fresh, "req-b", make_turn(2), now=later, release_lease=True)
    assert not await store.commit_turn(stale, "req-a", make_turn(3), now=later, release_lease=True)
    view = await store.get(conversation_id, ALICE, later)
    assert [turn.turn for turn in view.turns] == [1, 2]


@pytest.mark.parametrize("conversation_id", ["not-a-conversation", "0" * 32, "A" * 32])
async def test_unknown_or_malformed_ids_are_not_found(
    conversation_store: ConversationStore, now: datetime, conversation_id: str
) -> None:
    with pytest.raises(NotFound):
        await begin(conversation_store, conversation_id, now)
    with pytest.raises(NotFound):
        await conversation_store.get(conversation_id, ALICE, now)
    with pytest.raises(NotFound):
        await conversation_store.delete(conversation_id, ALICE)


async def test_another_users_conversation_is_not_found_and_untouched(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given ALICE's conversation
    conversation_id = await start_conversation(store, now)

    # When BOB tries to continue, read or delete it, Then it does not exist for him
    with pytest.raises(NotFound):
        await begin(store, conversation_id, now, user=BOB)
    with pytest.raises(NotFound):
        await store.get(conversation_id, BOB, now)
    with pytest.raises(NotFound):
        await store.delete(conversation_id, BOB)

    # And ALICE can still take a turn (BOB took no lease)
    assert (await begin(store, conversation_id, now)).turn_count == 1


async def test_a_conversation_at_its_token_limit_refuses_new_turns(
    conversation_store: ConversationStore, now: datetime
) -> None:
    # Given a conversation that used 2 × 50 tokens
    conversation_id = await start_conversation(conversation_store, now, tokens=50)

    # When a turn begins with a limit of 100, Then it is refused for good
    with pytest.raises(ConversationLimit):
        await begin(conversation_store, conversation_id, now, limit=100)
    # And a higher limit admits it
    assert (await begin(conversation_store, conversation_id, now, limit=101)).total_tokens == 100


async def test_delete_during_a_turn_makes_its_commit_fail(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a three-turn conversation with a fourth turn streaming
    conversation_id = await start_conversation(store, now, turns=3)
    in_flight = await begin(store, conversation_id, now, request_id="req-4")

    # When the owner deletes it and the turn then tries to commit
    await store.delete(conversation_id, ALICE)
    committed = await store.commit_turn(
        in_flight, "req-4", make_turn(4), now=now, release_lease=True
    )

    # Then the commit is refused and the conversation stays deleted
    assert not committed
    with pytest.raises(NotFound):
        await store.get(conversation_id, ALICE, now)


async def test_a_conversation_whose_expiry_passed_reads_as_not_found(
    conversation_store: ConversationStore, expire_conversation: ExpireConversation, now: datetime
) -> None:
    store = conversation_store
    # Given a conversation whose expiry passed but that is not deleted yet (TTL is lazy)
    conversation_id = await start_conversation(store, now)
    expire_conversation(conversation_id, int(now.timestamp()) - 1)

    # When it is read, continued or deleted, Then it is gone
    with pytest.raises(NotFound):
        await store.get(conversation_id, ALICE, now)
    with pytest.raises(NotFound):
        await begin(store, conversation_id, now)
    with pytest.raises(NotFound):
        await store.delete(conversation_id, ALICE)


async def test_idle_expiry_counts_from_the_last_turn(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a conversation continued 20 days after it started
    conversation_id = await start_conversation(store, now)
    day_20 = now + timedelta(days=20)
    state = await begin(store, conversation_id, day_20, request_id="req-2")
    assert await store.commit_turn(state, "req-2", make_turn(2), now=day_20, release_lease=True)

    # When it is read 45 days after it started, Then it is still there, all of it
    view = await store.get(conversation_id, ALICE, now + timedelta(days=45))
    assert [turn.turn for turn in view.turns] == [1, 2]
    # And 31 idle days after the last turn it is gone
    with pytest.raises(NotFound):
        await store.get(conversation_id, ALICE, day_20 + timedelta(days=31))


async def test_a_saved_summary_replaces_the_turns_it_covers_in_the_next_prompt(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a four-turn conversation whose fifth turn commits but keeps the lease
    conversation_id = await start_conversation(store, now, turns=4)
    state = await begin(store, conversation_id, now, request_id="req-5")
    assert len(state.turns) == 4
    assert await store.commit_turn(state, "req-5", make_turn(5), now=now, release_lease=False)

    # When a request that does not hold the lease saves a summary, Then it is refused
    assert not await store.save_summary(
        state, "other", summary="x", through_turn=3, summary_tokens=1, charged_tokens=1, now=now
    )
    # When the lease holder saves the summary of turns 1-3
    saved = await store.save_summary(
        state,
        "req-5",
        summary="Alice is planning a trip.",
        through_turn=3,
        summary_tokens=17,
        charged_tokens=300,
        now=now,
    )

    # Then the next turn loads the summary and only turns 4-5, and the lease is free
    assert saved
    following = await begin(store, conversation_id, now, request_id="req-6")
    assert following.summary == "Alice is planning a trip."
    assert (following.summary_through_turn, following.summary_tokens) == (3, 17)
    assert [turn.turn for turn in following.turns] == [4, 5]
    assert following.total_tokens == 5 * 20 + 300
    # And the owner's view still has every turn
    view = await store.get(conversation_id, ALICE, now)
    assert (len(view.turns), view.summary_through_turn) == (5, 3)


async def test_a_new_conversation_can_be_summarised_right_after_its_first_turn(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a new conversation whose first turn commits keeping the lease
    state = await begin(store, None, now)
    assert await store.commit_turn(state, "req-1", make_turn(1), now=now, release_lease=False)
    with pytest.raises(TurnConflict):
        await begin(store, state.conversation_id, now, request_id="req-x")

    # When its summary is saved, Then the lease is released
    assert await store.save_summary(
        state,
        "req-1",
        summary="s",
        through_turn=0,
        summary_tokens=0,
        charged_tokens=5,
        now=now,
    )
    assert (await begin(store, state.conversation_id, now, request_id="req-2")).total_tokens == 25


async def test_a_summary_after_the_lease_was_lost_is_not_saved(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a turn whose lease was taken over after it committed
    conversation_id = await start_conversation(store, now)
    state = await begin(store, conversation_id, now, request_id="req-a", lease=timedelta(0))
    assert await store.commit_turn(state, "req-a", make_turn(2), now=now, release_lease=False)
    later = now + timedelta(seconds=1)
    await begin(store, conversation_id, later, request_id="req-b")

    # When the first turn saves its summary, Then it is refused
    assert not await store.save_summary(
        state,
        "req-a",
        summary="late",
        through_turn=1,
        summary_tokens=3,
        charged_tokens=9,
        now=later,
    )
    assert (await store.get(conversation_id, ALICE, later)).summary is None


async def test_a_turn_that_begins_again_with_its_own_lease_is_not_a_conflict(
    conversation_store: ConversationStore, now: datetime
) -> None:
    store = conversation_store
    # Given a turn that holds the lease
    conversation_id = await start_conversation(store, now)
    await begin(store, conversation_id, now, request_id="req-a")

    # When the same request begins again (its first answer was lost), Then it holds the lease
    state = await begin(store, conversation_id, now, request_id="req-a")
    assert state.turn_count == 1
    assert await store.commit_turn(state, "req-a", make_turn(2), now=now, release_lease=True)


# ---------------------------------------------------------------- request registry


async def test_a_cancel_signal_is_seen_by_the_streaming_side(
    request_registry: RequestRegistry, now: datetime
) -> None:
    # Given a request nobody cancelled
    expires = int(now.timestamp()) + 86_400
    assert not await request_registry.is_cancelled("req")

    # When its owner cancels it, twice
    await request_registry.signal_cancel("req", expires)
    await request_registry.signal_cancel("req", expires)  # again: idempotent

    # Then the streaming side sees the signal, and only for that request
    assert await request_registry.is_cancelled("req")
    assert not await request_registry.is_cancelled("other")
