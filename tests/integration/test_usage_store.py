"""The DynamoDB budget store against moto: the reservation/settlement arithmetic holds."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate.adapters.usage_store import DynamoUsageStore
from tollgate.ports import Limits, RateWindow, RateWindowFull

pytestmark = pytest.mark.integration

DAY = "2026-03-01"
EXPIRES = 1_900_000_000

# An operation: reserve request i for n tokens, or settle request i at a fraction of it.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("reserve"), st.integers(0, 5), st.integers(1, 400)),
        st.tuples(st.just("settle"), st.integers(0, 5), st.floats(0, 1)),
    ),
    max_size=25,
)


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(ops=operations, limit=st.integers(100, 1500))
def test_any_interleaving_keeps_committed_equal_to_settled_plus_open(
    dynamodb, table_names, ops, limit
) -> None:
    store = DynamoUsageStore(table_names["UsageTable"], dynamodb)
    user = f"user-{abs(hash((tuple(ops), limit)))}"
    limits = Limits(tokens=limit, cost_micros=None)
    open_reservations: dict[str, int] = {}
    settled_total = 0

    async def run() -> None:
        nonlocal settled_total
        for kind, index, amount in ops:
            request_id = f"r{index}"
            if kind == "reserve":
                before = (await store.counters(user, DAY)).tokens
                counters = await store.reserve(
                    user, DAY, request_id, int(amount), 0, limits, EXPIRES
                )
                if counters is None:
                    assert before + amount > limit
                else:
                    open_reservations[request_id] = open_reservations.get(request_id, 0) + int(
                        amount
                    )
            elif request_id in open_reservations:
                reserved = open_reservations.pop(request_id)
                actual = int(reserved * amount)
                assert await store.settle(user, DAY, request_id, (reserved, 0), (actual, 0))
                settled_total += actual
                # a retried settle is a no-op
                assert await store.settle(user, DAY, request_id, (reserved, 0), (actual, 0)) is None
            counters = await store.counters(user, DAY)
            assert counters.tokens == settled_total + sum(open_reservations.values())
            assert counters.reserved_tokens == sum(open_reservations.values())
            assert counters.tokens <= limit

    asyncio.run(run())


def test_concurrent_reservations_admit_exactly_what_fits(dynamodb, table_names) -> None:
    store = DynamoUsageStore(table_names["UsageTable"], dynamodb)
    limits = Limits(tokens=1000, cost_micros=5_000)

    async def run() -> list[object]:
        return await asyncio.gather(
            *(store.reserve("crowd", DAY, f"r{i}", 90, 400, limits, EXPIRES) for i in range(50))
        )

    results = asyncio.run(run())

    admitted = [r for r in results if r is not None]
    assert len(admitted) == 11  # 11 * 90 = 990 tokens, 11 * 400 = 4400 micros
    counters = asyncio.run(store.counters("crowd", DAY))
    assert counters.tokens == 990
    assert counters.cost_micros == 4400


def test_dollar_limit_binds_before_tokens(dynamodb, table_names) -> None:
    store = DynamoUsageStore(table_names["UsageTable"], dynamodb)
    limits = Limits(tokens=10_000, cost_micros=1_000)

    async def run() -> tuple[object, object]:
        first = await store.reserve("spender", DAY, "a", 10, 600, limits, EXPIRES)
        second = await store.reserve("spender", DAY, "b", 10, 600, limits, EXPIRES)
        return first, second

    first, second = asyncio.run(run())

    assert first is not None
    assert second is None


def test_release_returns_the_reservation_without_counting_a_request(dynamodb, table_names) -> None:
    store = DynamoUsageStore(table_names["UsageTable"], dynamodb)
    limits = Limits(tokens=1000, cost_micros=None)

    async def run() -> object:
        await store.reserve("u", DAY, "a", 300, 50, limits, EXPIRES)
        await store.release("u", DAY, "a", (300, 50))
        await store.release("u", DAY, "a", (300, 50))  # idempotent
        return await store.counters("u", DAY)

    counters = asyncio.run(run())

    assert counters.tokens == 0
    assert counters.cost_micros == 0
    assert counters.requests == 0


def test_the_rate_window_is_counted_in_the_same_update(dynamodb, table_names) -> None:
    store = DynamoUsageStore(table_names["UsageTable"], dynamodb)
    limits = Limits(tokens=10_000, cost_micros=None)
    minute = RateWindow(window="2026-03-01T12:00", previous="2026-03-01T11:59", limit=2)
    next_minute = RateWindow(window="2026-03-01T12:01", previous="2026-03-01T12:00", limit=2)

    async def run() -> tuple[list[object], object, object]:
        admitted = [
            await store.reserve("rater", DAY, f"r{i}", 10, 0, limits, EXPIRES, minute)
            for i in range(2)
        ]
        with pytest.raises(RateWindowFull):
            await store.reserve("rater", DAY, "r3", 10, 0, limits, EXPIRES, minute)
        counters = await store.counters("rater", DAY)
        later = await store.reserve("rater", DAY, "r4", 10, 0, limits, EXPIRES, next_minute)
        return admitted, counters, later

    admitted, counters, later = asyncio.run(run())

    assert all(admitted)
    assert counters.tokens == 20  # the refused request reserved nothing
    assert later is not None
    item = dynamodb.get_item(
        TableName=table_names["UsageTable"],
        Key={"pk": {"S": "USER#rater"}, "sk": {"S": f"DAY#{DAY}"}},
    )["Item"]
    assert "rate_2026-03-01T12:00" not in item  # the previous minute's count is dropped
    assert item["rate_2026-03-01T12:01"]["N"] == "1"
