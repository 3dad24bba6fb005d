"""DynamoConversationStore against moto server over real HTTP, tables from template.yaml."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import EndpointConnectionError

from tests.servers import free_port
from tollgate.adapters.conversation_store import RECENT_TURNS, DynamoConversationStore
from tollgate.errors import ConversationLimit, DependencyUnavailable, NotFound, TurnConflict
from tollgate.ports import ConversationState, Turn

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

ALICE, BOB = "alice", "bob"
TTL_DAYS = 30
LIMIT = 200_000


@pytest.fixture
def table(table_names: dict[str, str]) -> str:
    return table_names["ConversationsTable"]


@pytest.fixture
def store(dynamodb: DynamoDBClient, table: str) -> DynamoConversationStore:
    return DynamoConversationStore(table, dynamodb, ttl_days=TTL_DAYS)


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


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
    store: DynamoConversationStore,
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
    store: DynamoConversationStore, now: datetime, turns: int = 1, **turn_fields: Any
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


def items(dynamodb: DynamoDBClient, table: str) -> dict[str, dict[str, Any]]:
    scanned = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    return {item["sk"]["S"]: item for item in scanned}


async def test_new_conversation_is_written_only_when_its_first_turn_commits(
    store: DynamoConversationStore, dynamodb: DynamoDBClient, table: str, now: datetime
) -> None:
    # Given a new conversation
    state = await begin(store, None, now)
    assert state.is_new
    assert len(state.conversation_id) == 32
    assert items(dynamodb, table) == {}

    # When its first turn commits
    committed = await store.commit_turn(
        state, "req-1", make_turn(1, tokens=7), now=now, release_lease=True
    )

    # Then META and TURN#000001 exist, with the tokens counted and the lease not held
    assert committed
    stored = items(dynamodb, table)
    assert set(stored) == {"META", "TURN#000001"}
    meta = stored["META"]
    assert meta["owner"]["S"] == ALICE
    assert meta["total_tokens"]["N"] == "14"
    assert meta["turn_count"]["N"] == "1"
    assert "lease_request" not in meta
    assert int(meta["expires_at"]["N"]) == int((now + timedelta(days=TTL_DAYS)).timestamp())
    assert stored["TURN#000001"]["cost_micros"]["N"] == "123"


async def test_continuing_loads_the_earlier_turns_and_adds_to_the_totals(
    store: DynamoConversationStore, now: datetime
) -> None:
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
    store: DynamoConversationStore, now: datetime
) -> None:
    # Given a turn in progress
    conversation_id = await start_conversation(store, now)
    await begin(store, conversation_id, now, request_id="req-a")

    # When another turn begins, Then it conflicts
    with pytest.raises(TurnConflict):
        await begin(store, conversation_id, now, request_id="req-b")


async def test_a_released_lease_lets_the_next_turn_begin(
    store: DynamoConversationStore, now: datetime
) -> None:
    # Given a turn that gave its lease back without storing anything
    conversation_id = await start_conversation(store, now)
    state = await begin(store, conversation_id, now, request_id="req-a")
    await store.release_turn(state, "req-a")
    await store.release_turn(state, "req-a")  # idempotent

    # When another turn begins, Then it gets the lease
    assert (await begin(store, conversation_id, now, request_id="req-b")).turn_count == 1


async def test_a_turn_whose_history_fails_to_load_gives_its_lease_back(
    store: DynamoConversationStore, dynamodb: DynamoDBClient, now: datetime
) -> None:
    # Given a conversation whose turns cannot be read right now
    conversation_id = await start_conversation(store, now)

    def fail_query(**_: Any) -> None:
        raise EndpointConnectionError(endpoint_url="http://127.0.0.1:1")

    dynamodb.meta.events.register("before-call.dynamodb.Query", fail_query)

    # When a turn begins, Then it fails as a dependency outage
    with pytest.raises(DependencyUnavailable):
        await begin(store, conversation_id, now, request_id="req-a")

    # And once the database is back the next turn is not blocked by a stale lease
    dynamodb.meta.events.unregister("before-call.dynamodb.Query", fail_query)
    assert (await begin(store, conversation_id, now, request_id="req-b")).turn_count == 1


async def test_an_expired_lease_is_taken_over_and_its_holder_cannot_commit(
    store: DynamoConversationStore, now: datetime
) -> None:
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
    store: DynamoConversationStore, now: datetime, conversation_id: str
) -> None:
    with pytest.raises(NotFound):
        await begin(store, conversation_id, now)
    with pytest.raises(NotFound):
        await store.get(conversation_id, ALICE, now)
    with pytest.raises(NotFound):
        await store.delete(conversation_id, ALICE)


async def test_another_users_conversation_is_not_found_and_untouched(
    store: DynamoConversationStore, now: datetime
) -> None:
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
    store: DynamoConversationStore, now: datetime
) -> None:
    # Given a conversation that used 2 × 50 tokens
    conversation_id = await start_conversation(store, now, tokens=50)

    # When a turn begins with a limit of 100, Then it is refused for good
    with pytest.raises(ConversationLimit):
        await begin(store, conversation_id, now, limit=100)
    # And a higher limit admits it
    assert (await begin(store, conversation_id, now, limit=101)).total_tokens == 100


async def test_delete_during_a_turn_makes_its_commit_fail_and_leaves_nothing(
    store: DynamoConversationStore, dynamodb: DynamoDBClient, table: str, now: datetime
) -> None:
    # Given a three-turn conversation with a fourth turn streaming
    conversation_id = await start_conversation(store, now, turns=3)
    in_flight = await begin(store, conversation_id, now, request_id="req-4")

    # When the owner deletes it and the turn then tries to commit
    await store.delete(conversation_id, ALICE)
    committed = await store.commit_turn(
        in_flight, "req-4", make_turn(4), now=now, release_lease=True
    )

    # Then the commit is refused and no item of the conversation remains
    assert not committed
    assert items(dynamodb, table) == {}
    with pytest.raises(NotFound):
        await store.get(conversation_id, ALICE, now)


async def test_a_conversation_whose_meta_expired_reads_as_not_found(
    store: DynamoConversationStore, dynamodb: DynamoDBClient, table: str, now: datetime
) -> None:
    # Given a conversation whose META expiry passed but TTL has not deleted it yet
    conversation_id = await start_conversation(store, now)
    dynamodb.update_item(
        TableName=table,
        Key={"pk": {"S": f"CONV#{conversation_id}"}, "sk": {"S": "META"}},
        UpdateExpression="SET expires_at = :past",
        ExpressionAttributeValues={":past": {"N": str(int(now.timestamp()) - 1)}},
    )

    # When it is read or continued, Then it is gone
    with pytest.raises(NotFound):
        await store.get(conversation_id, ALICE, now)
    with pytest.raises(NotFound):
        await begin(store, conversation_id, now)
    with pytest.raises(NotFound):
        await store.delete(conversation_id, ALICE)


async def test_idle_expiry_counts_from_the_last_turn(
    store: DynamoConversationStore, now: datetime
) -> None:
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


async def test_turn_items_always_outlive_the_meta_of_an_active_conversation(
    store: DynamoConversationStore, dynamodb: DynamoDBClient, table: str, now: datetime
) -> None:
    # Given a conversation with a turn every 29 days for half a year
    conversation_id = await start_conversation(store, now, turns=2)
    moment = now
    for number in range(3, 9):
        moment += timedelta(days=29)
        state = await begin(store, conversation_id, moment, request_id=f"req-{number}")
        assert await store.commit_turn(
            state, f"req-{number}", make_turn(number), now=moment, release_lease=True
        )

        # Then after every turn each turn item expires no earlier than META
        stored = items(dynamodb, table)
        meta_expiry = int(stored.pop("META")["expires_at"]["N"])
        assert meta_expiry == int((moment + timedelta(days=TTL_DAYS)).timestamp())
        assert all(int(item["expires_at"]["N"]) >= meta_expiry for item in stored.values())
    # And the whole conversation is still readable
    view = await store.get(conversation_id, ALICE, moment + timedelta(days=29))
    assert len(view.turns) == 8


async def test_a_saved_summary_replaces_the_turns_it_covers_in_the_next_prompt(
    store: DynamoConversationStore, now: datetime
) -> None:
    # Given a four-turn conversation whose fifth turn commits but keeps the lease
    conversation_id = await start_conversation(store, now, turns=4)
    state = await begin(store, conversation_id, now, request_id="req-5")
    assert len(state.turns) == 4
    assert await store.commit_turn(state, "req-5", make_turn(5), now=now, release_lease=False)

    # When the summary of turns 1-3 is saved
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
    store: DynamoConversationStore, now: datetime
) -> None:
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
    store: DynamoConversationStore, now: datetime
) -> None:
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


async def test_get_reads_every_page_of_a_long_conversation(
    store: DynamoConversationStore, dynamodb: DynamoDBClient, now: datetime
) -> None:
    # Given 30 turns of ~60 KB each: more than one 1 MB Query page
    conversation_id = await start_conversation(store, now, turns=30, assistant="x" * 60_000)
    queries: list[str] = []
    dynamodb.meta.events.register("before-call.dynamodb.Query", lambda **_: queries.append("query"))

    # When the owner reads it, Then every turn is there, in order, read page by page
    view = await store.get(conversation_id, ALICE, now)
    assert [turn.turn for turn in view.turns] == list(range(1, 31))
    assert len(queries) >= 2
    assert all(len(turn.assistant) == 60_000 for turn in view.turns)


async def test_an_unreachable_database_is_a_dependency_failure(table: str, now: datetime) -> None:
    # Given a client pointed at a port nobody listens on
    client = boto3.client(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{free_port()}",
        config=Config(connect_timeout=0.5, retries={"total_max_attempts": 1}),
    )
    store = DynamoConversationStore(table, client, ttl_days=TTL_DAYS)

    # When a turn begins, Then the outage is a 503-shaped domain error
    with pytest.raises(DependencyUnavailable) as raised:
        await begin(store, "0" * 32, now)
    assert raised.value.retry_after is not None


async def test_beginning_a_turn_takes_one_round_trip_and_loads_every_unsummarised_turn(
    store: DynamoConversationStore, dynamodb: DynamoDBClient, now: datetime
) -> None:
    # Given a conversation with more unsummarised turns than one newest-first page holds
    conversation_id = await start_conversation(store, now, turns=RECENT_TURNS + 5)
    calls: list[str] = []
    dynamodb.meta.events.register(
        "before-call.dynamodb.*", lambda event_name, **_: calls.append(event_name)
    )

    # When a turn begins, Then every turn is loaded in order
    state = await begin(store, conversation_id, now, request_id="req-long")
    assert [turn.turn for turn in state.turns] == list(range(1, RECENT_TURNS + 6))
    # And only the older ones needed a second query after the lease + newest page
    assert sorted(calls) == [
        "before-call.dynamodb.Query",
        "before-call.dynamodb.Query",
        "before-call.dynamodb.UpdateItem",
    ]


async def test_a_short_conversation_begins_with_the_lease_and_one_query(
    store: DynamoConversationStore, dynamodb: DynamoDBClient, now: datetime
) -> None:
    # Given a conversation of three turns
    conversation_id = await start_conversation(store, now, turns=3)
    calls: list[str] = []
    dynamodb.meta.events.register(
        "before-call.dynamodb.*", lambda event_name, **_: calls.append(event_name)
    )

    # When a turn begins, Then it takes the lease and reads the turns concurrently, nothing more
    state = await begin(store, conversation_id, now, request_id="req-short")
    assert [turn.turn for turn in state.turns] == [1, 2, 3]
    assert sorted(calls) == ["before-call.dynamodb.Query", "before-call.dynamodb.UpdateItem"]
