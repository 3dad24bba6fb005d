"""The response cache store's contract, against DynamoDB (moto, real HTTP) and memory."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tollgate.adapters.cache_store import DynamoReplyCache
from tollgate.adapters.memory_store import MemoryReplyCache
from tollgate.ports import CachedReply, ReplyCache

pytestmark = pytest.mark.integration

NOW = 1_900_000_000


@pytest.fixture(params=["memory", "dynamodb"])
def new_cache(request: pytest.FixtureRequest) -> Callable[[], ReplyCache]:
    if request.param == "memory":
        return MemoryReplyCache
    db = request.getfixturevalue("db")
    table = request.getfixturevalue("table_names")["ConversationsTable"]
    return lambda: DynamoReplyCache(table, db)


def test_a_reply_is_found_until_it_expires(new_cache) -> None:
    cache = new_cache()
    reply = CachedReply("Ünïcode and\nnewlines stay as they were.", "gpt-4o-mini", 321, NOW + 60)
    asyncio.run(cache.put("k1", reply))
    assert asyncio.run(cache.get("k1", NOW)) == reply
    assert asyncio.run(cache.get("k1", NOW + 59)) == reply
    # the reader checks expiry itself: TTL deletes lazily (moto never does)
    assert asyncio.run(cache.get("k1", NOW + 60)) is None
    assert asyncio.run(cache.get("other", NOW)) is None


def test_a_put_replaces_the_reply(new_cache) -> None:
    cache = new_cache()
    asyncio.run(cache.put("k1", CachedReply("old", "gpt-4o-mini", 1, NOW + 10)))
    newer = CachedReply("new", "gpt-4o", 2, NOW + 100)
    asyncio.run(cache.put("k1", newer))
    assert asyncio.run(cache.get("k1", NOW + 50)) == newer


def test_the_memory_cache_stays_bounded() -> None:
    cache = MemoryReplyCache(limit=2)
    for key in ("a", "b", "c"):
        asyncio.run(cache.put(key, CachedReply(key, "gpt-4o-mini", 1, 4_000_000_000)))
    assert asyncio.run(cache.get("a", NOW)) is None
    assert asyncio.run(cache.get("c", NOW)) is not None
