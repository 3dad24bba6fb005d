"""DynamoDB made slow, paused or lossy by a proxy (tests/fault_proxy.py): writes stay exact."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import boto3
import pytest
from botocore.exceptions import BotoCoreError

from tests.conversation_steps import ALICE, TTL_DAYS, begin, make_turn, start_conversation
from tests.fault_proxy import FaultProxy
from tollgate.adapters.aws import dynamodb_config
from tollgate.adapters.conversation_store import DynamoConversationStore

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def store(faulty_dynamodb: DynamoDBClient, table_names: dict[str, str]) -> DynamoConversationStore:
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
