"""STORE_BACKEND=memory builds its stores from the same settings as the DynamoDB ones."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from tests.conversation_steps import ALICE, begin, make_turn
from tollgate.dependencies import memory_stores
from tollgate.errors import NotFound
from tollgate.settings import Settings


def test_memory_conversations_expire_after_the_configured_idle_days() -> None:
    # Given the in-memory stores of a gateway configured to forget conversations after 2 days
    settings = Settings(
        usage_table="usage",
        conversations_table="conversations",
        jwt_secret="x",
        store_backend="memory",
        conversation_ttl_days=2,
    )
    store = memory_stores(settings).conversations
    now = datetime.now(UTC).replace(microsecond=0)

    async def scenario() -> None:
        # When a conversation's only turn commits
        state = await begin(store, None, now)
        assert await store.commit_turn(state, "req-1", make_turn(1), now=now, release_lease=True)

        # Then it is there one idle day later, and gone two idle days later
        await store.get(state.conversation_id, ALICE, now + timedelta(days=1))
        with pytest.raises(NotFound):
            await store.get(state.conversation_id, ALICE, now + timedelta(days=2))

    asyncio.run(scenario())
