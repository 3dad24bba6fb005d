"""What only the DynamoDB conversation store has: item layout, round trips, paging, outages.

Against moto server over real HTTP, tables from template.yaml. The behaviour it shares
with the in-memory store is pinned once, for both, in test_store_contracts.py.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from tests.conversation_steps import ALICE, TTL_DAYS, begin, make_turn, start_conversation
from tests.observed_dynamodb import ObservedDynamoDB
from tests.servers import free_port
from tollgate.adapters.conversation_store import RECENT_TURNS, DynamoConversationStore
from tollgate.adapters.dynamodb_http import AsyncDynamoDB
from tollgate.errors import DependencyUnavailable, NotFound

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def table(table_names: dict[str, str]) -> str:
    return table_names["ConversationsTable"]


@pytest.fixture
def store(db: ObservedDynamoDB, table: str) -> DynamoConversationStore:
    return DynamoConversationStore(table, db, ttl_days=TTL_DAYS)


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


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


async def test_a_turn_whose_history_fails_to_load_gives_its_lease_back(
    store: DynamoConversationStore, db: ObservedDynamoDB, now: datetime
) -> None:
    # Given a conversation whose turns cannot be read right now
    conversation_id = await start_conversation(store, now)
    db.failing.add("Query")

    # When a turn begins, Then it fails as a dependency outage
    with pytest.raises(DependencyUnavailable):
        await begin(store, conversation_id, now, request_id="req-a")

    # And once the database is back the next turn is not blocked by a stale lease
    db.failing.clear()
    assert (await begin(store, conversation_id, now, request_id="req-b")).turn_count == 1


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


async def test_get_reads_every_page_of_a_long_conversation(
    store: DynamoConversationStore, db: ObservedDynamoDB, now: datetime
) -> None:
    # Given 30 turns of ~60 KB each: more than one 1 MB Query page
    conversation_id = await start_conversation(store, now, turns=30, assistant="x" * 60_000)
    queries_before = db.calls["Query"]

    # When the owner reads it, Then every turn is there, in order, read page by page
    view = await store.get(conversation_id, ALICE, now)
    assert [turn.turn for turn in view.turns] == list(range(1, 31))
    assert db.calls["Query"] - queries_before >= 2
    assert all(len(turn.assistant) == 60_000 for turn in view.turns)


async def test_an_unreachable_database_is_a_dependency_failure(table: str, now: datetime) -> None:
    # Given a client pointed at a port nobody listens on
    client = AsyncDynamoDB.from_environment(
        0.5, max_attempts=1, endpoint_url=f"http://127.0.0.1:{free_port()}"
    )
    store = DynamoConversationStore(table, client, ttl_days=TTL_DAYS)

    # When a turn begins, Then the outage is a 503-shaped domain error
    with pytest.raises(DependencyUnavailable) as raised:
        await begin(store, "0" * 32, now)
    assert raised.value.retry_after is not None


async def test_beginning_a_turn_takes_one_round_trip_and_loads_every_unsummarised_turn(
    store: DynamoConversationStore, db: ObservedDynamoDB, now: datetime
) -> None:
    # Given a conversation with more unsummarised turns than one newest-first page holds
    conversation_id = await start_conversation(store, now, turns=RECENT_TURNS + 5)
    db.calls.clear()

    # When a turn begins, Then every turn is loaded in order
    state = await begin(store, conversation_id, now, request_id="req-long")
    assert [turn.turn for turn in state.turns] == list(range(1, RECENT_TURNS + 6))
    # And only the older ones needed a second query after the lease + newest page
    assert db.calls == {"Query": 2, "UpdateItem": 1}


async def test_a_short_conversation_begins_with_the_lease_and_one_query(
    store: DynamoConversationStore, db: ObservedDynamoDB, now: datetime
) -> None:
    # Given a conversation of three turns
    conversation_id = await start_conversation(store, now, turns=3)
    db.calls.clear()

    # When a turn begins, Then it takes the lease and reads the turns concurrently, nothing more
    state = await begin(store, conversation_id, now, request_id="req-short")
    assert [turn.turn for turn in state.turns] == [1, 2, 3]
    assert db.calls == {"Query": 1, "UpdateItem": 1}
