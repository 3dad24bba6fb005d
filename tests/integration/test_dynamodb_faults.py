"""DynamoDB made slow, paused or lossy by a proxy (tests/fault_proxy.py): writes stay exact."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.exceptions import BotoCoreError

from tests.conversation_steps import ALICE, TTL_DAYS, begin, make_turn, start_conversation
from tests.fault_proxy import FaultProxy
from tollgate.adapters.aws import request_profile
from tollgate.adapters.conversation_store import DynamoConversationStore
from tollgate.adapters.dynamodb_http import AsyncDynamoDB

if TYPE_CHECKING:
    pass

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def store(faulty_dynamodb: AsyncDynamoDB, table_names: dict[str, str]) -> DynamoConversationStore:
    return DynamoConversationStore(
        table_names["ConversationsTable"], faulty_dynamodb, ttl_days=TTL_DAYS
    )


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


async def test_a_first_turn_whose_answer_was_lost_is_committed_once(
    store: DynamoConversationStore, fault_proxy: FaultProxy, now: datetime
) -> None:
    # Given a new conversation, and a network that loses the commit's answer
    state = await begin(store, None, now)
    fault_proxy.drop_responses("TransactWriteItems")

    # When its first turn commits (botocore sends the transaction again)
    committed = await store.commit_turn(
        state, "req-1", make_turn(1, tokens=7), now=now, release_lease=True
    )

    # Then the commit reports what happened: stored, once
    assert fault_proxy.forwarded("TransactWriteItems") == 2
    assert committed
    view = await store.get(state.conversation_id, ALICE, now)
    assert (view.total_tokens, [turn.turn for turn in view.turns]) == (14, [1])


@pytest.mark.parametrize("release_lease", [True, False])
async def test_a_turn_whose_answer_was_lost_is_committed_once(
    store: DynamoConversationStore, fault_proxy: FaultProxy, now: datetime, release_lease: bool
) -> None:
    # Given a conversation with one turn, a second turn begun, and a lossy network
    conversation_id = await start_conversation(store, now)
    state = await begin(store, conversation_id, now, request_id="req-2")
    fault_proxy.drop_responses("TransactWriteItems")

    # When the second turn commits (botocore sends the transaction again)
    committed = await store.commit_turn(
        state, "req-2", make_turn(2), now=now, release_lease=release_lease
    )

    # Then it is stored once and reported as stored
    assert fault_proxy.forwarded("TransactWriteItems") == 3  # the first turn's, then 2 tries
    assert committed
    view = await store.get(conversation_id, ALICE, now)
    assert (view.total_tokens, [turn.turn for turn in view.turns]) == (40, [1, 2])


async def test_a_turn_whose_lease_answer_was_lost_still_begins(
    store: DynamoConversationStore, fault_proxy: FaultProxy, now: datetime
) -> None:
    # Given a conversation, and a network that loses the answer to taking its lease
    conversation_id = await start_conversation(store, now)
    fault_proxy.drop_responses("UpdateItem")

    # When a turn begins (botocore sends the lease update again)
    state = await begin(store, conversation_id, now, request_id="req-2")

    # Then the turn holds the lease instead of conflicting with its own first try
    assert fault_proxy.forwarded("UpdateItem") == 2
    assert state.turn_count == 1
    assert await store.commit_turn(state, "req-2", make_turn(2), now=now, release_lease=True)


async def test_writes_held_by_a_paused_server_land_after_their_client_gave_up(
    fault_proxy: FaultProxy, table_names: dict[str, str]
) -> None:
    # Given a client that waits 0.3 s per try, three tries, and a server paused for longer
    client = AsyncDynamoDB.from_environment(0.3, 3, endpoint_url=fault_proxy.url)
    table = table_names["UsageTable"]
    key = {"pk": {"S": "USER#held"}, "sk": {"S": "DAY#2026-03-01"}}
    fault_proxy.pause(1.5)

    # When a non-idempotent ADD is sent and the client gives up
    with pytest.raises(BotoCoreError):
        await client.call(
            "UpdateItem",
            {
                "TableName": table,
                "Key": key,
                "UpdateExpression": "ADD tokens :one",
                "ExpressionAttributeValues": {":one": {"N": "1"}},
            },
        )

    # Then every try it sent still lands once the server is back: the ADD counts three times
    for _ in range(200):
        if fault_proxy.forwarded("UpdateItem") >= 3:
            break
        await asyncio.sleep(0.05)
    read = {"TableName": table, "Key": key, "ConsistentRead": True}
    item = (await client.call("GetItem", read))["Item"]
    assert item["tokens"]["N"] == "3"


def test_the_proxy_serves_connections_concurrently(
    fault_proxy: FaultProxy, table_names: dict[str, str]
) -> None:
    # Given a proxy that slows every request, and botocore clients (one connection each)
    fault_proxy.delay_s = 0.5
    faulty_dynamodb = boto3.client(
        "dynamodb", endpoint_url=fault_proxy.url, config=request_profile().config()
    )

    # When eight clients read at once
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(
            pool.map(
                lambda _: faulty_dynamodb.describe_table(TableName=table_names["UsageTable"]),
                range(8),
            )
        )

    # Then all eight were in flight together, not one after another
    assert fault_proxy.max_in_flight == 8
