"""The budget stores' contract, run against both implementations: DynamoDB (on the moto
server, over real HTTP) and the in-memory store that promises the same semantics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate.adapters.memory_store import MemoryUsageStore
from tollgate.adapters.usage_store import DynamoUsageStore
from tollgate.ports import Account, Amount, Limits, RateWindow, RateWindowFull, UsageStore

pytestmark = pytest.mark.integration

DAY = "2026-03-01"
EXPIRES = 1_900_000_000
LIMITS = Limits(tokens=1000, cost_micros=None)

T = TypeVar("T")
StoreFactory = Callable[[], UsageStore]


@pytest.fixture(params=["memory", "dynamodb"])
def new_store(request: pytest.FixtureRequest) -> StoreFactory:
    if request.param == "memory":
        return MemoryUsageStore
    db = request.getfixturevalue("db")
    table = request.getfixturevalue("table_names")["UsageTable"]
    return lambda: DynamoUsageStore(table, db)


def user_day(user: str) -> Account:
    return Account("user", user, "day", DAY)


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def test_holds_never_pass_the_limit_and_grow_from_the_previous_one(new_store) -> None:
    store, alice = new_store(), user_day("alice")
    assert run(store.reserve(alice, "r1", Amount(600, 6), LIMITS, EXPIRES)) is not None
    assert run(store.reserve(alice, "r2", Amount(401, 4), LIMITS, EXPIRES)) is None
    topped = run(
        store.reserve(alice, "r1", Amount(1000, 10), LIMITS, EXPIRES, previous=Amount(600, 6))
    )
    assert topped is not None
    assert (topped.tokens, topped.reserved_tokens) == (1000, 1000)
    assert run(store.reserve(user_day("bob"), "r3", Amount(1000, 0), LIMITS, EXPIRES)) is not None
    # a dollar limit refuses on its own
    dollars = Limits(tokens=10_000, cost_micros=10)
    assert run(store.reserve(user_day("carol"), "r4", Amount(1, 11), dollars, EXPIRES)) is None


def test_a_repeated_write_that_landed_changes_nothing(new_store) -> None:
    # Given a hold whose write landed (botocore may send it again when the answer is lost)
    store, alice = new_store(), user_day("alice")
    first = run(store.reserve(alice, "r1", Amount(300, 30), LIMITS, EXPIRES))
    # When the same write arrives again, and again for a top-up
    again = run(store.reserve(alice, "r1", Amount(300, 30), LIMITS, EXPIRES))
    run(store.reserve(alice, "r1", Amount(400, 40), LIMITS, EXPIRES, previous=Amount(300, 30)))
    twice = run(
        store.reserve(alice, "r1", Amount(400, 40), LIMITS, EXPIRES, previous=Amount(300, 30))
    )
    # Then the hold is counted once
    assert first is not None
    assert again is not None
    assert twice is not None
    assert (again.tokens, twice.tokens) == (300, 400)
    assert run(store.counters(alice)).reserved_tokens == 400


def test_a_stale_previous_hold_is_refused(new_store) -> None:
    store, alice = new_store(), user_day("alice")
    run(store.reserve(alice, "r1", Amount(300, 30), LIMITS, EXPIRES))
    assert (
        run(store.reserve(alice, "r1", Amount(500, 50), LIMITS, EXPIRES, previous=Amount(100, 10)))
        is None
    )
    assert run(store.counters(alice)).tokens == 300


def test_concurrent_holds_admit_exactly_what_fits(new_store) -> None:
    store, crowd = new_store(), user_day("crowd")
    limits = Limits(tokens=1000, cost_micros=5_000)

    async def fifty() -> list[object]:
        return await asyncio.gather(
            *(store.reserve(crowd, f"r{i}", Amount(90, 400), limits, EXPIRES) for i in range(50))
        )

    admitted = [result for result in run(fifty()) if result is not None]
    assert len(admitted) == 11  # 11 * 90 = 990 tokens, 11 * 400 = 4400 micros
    counters = run(store.counters(crowd))
    assert (counters.tokens, counters.cost_micros) == (990, 4400)


def test_settle_is_idempotent_and_release_gives_back(new_store) -> None:
    store, alice = new_store(), user_day("alice")
    run(store.reserve(alice, "r1", Amount(500, 50), LIMITS, EXPIRES))
    run(store.reserve(alice, "r2", Amount(300, 30), LIMITS, EXPIRES))
    settled = run(store.settle(alice, "r1", Amount(500, 50), Amount(120, 12)))
    assert settled is not None
    assert (settled.tokens, settled.cost_micros, settled.requests) == (420, 42, 1)
    assert (settled.reserved_tokens, settled.reserved_micros) == (300, 30)
    assert run(store.settle(alice, "r1", Amount(500, 50), Amount(120, 12))) is None
    run(store.release(alice, "r2", Amount(300, 30)))
    run(store.release(alice, "r2", Amount(300, 30)))  # idempotent
    counters = run(store.counters(alice))
    assert (counters.tokens, counters.reserved_tokens, counters.requests) == (120, 0, 1)
    assert run(store.counters(user_day("bob"))).tokens == 0


def test_the_dollar_limit_binds_before_tokens(new_store) -> None:
    store, spender = new_store(), user_day("spender")
    limits = Limits(tokens=10_000, cost_micros=1_000)
    assert run(store.reserve(spender, "a", Amount(10, 600), limits, EXPIRES)) is not None
    assert run(store.reserve(spender, "b", Amount(10, 600), limits, EXPIRES)) is None


def test_accounts_of_other_scopes_and_windows_are_separate(new_store) -> None:
    store = new_store()
    accounts = [
        Account("user", "x", "day", DAY),
        Account("user", "x", "month", DAY[:7]),
        Account("team", "x", "day", DAY),
        Account("global", "0", "day", DAY),
    ]
    for account in accounts:
        assert run(store.reserve(account, "r1", Amount(1000, 1), LIMITS, EXPIRES)) is not None
    assert [run(store.counters(account)).tokens for account in accounts] == [1000] * 4
    assert run(store.counters(accounts[1])).period == "2026-03"


def test_the_rate_window_is_counted_in_the_same_write(new_store, request) -> None:
    store, rater = new_store(), user_day("rater")
    limits = Limits(tokens=10_000, cost_micros=None)
    minute = RateWindow(window="2026-03-01T12:00", previous="2026-03-01T11:59", limit=2)
    next_minute = RateWindow(window="2026-03-01T12:01", previous="2026-03-01T12:00", limit=2)
    for request_id in ("r1", "r2"):
        assert run(store.reserve(rater, request_id, Amount(10, 0), limits, EXPIRES, rate=minute))
    with pytest.raises(RateWindowFull):
        run(store.reserve(rater, "r3", Amount(10, 0), limits, EXPIRES, rate=minute))
    assert run(store.counters(rater)).tokens == 20  # the refused request held nothing
    assert run(store.reserve(rater, "r4", Amount(10, 0), limits, EXPIRES, rate=next_minute))
    if isinstance(store, DynamoUsageStore):
        dynamodb = request.getfixturevalue("dynamodb")
        item = dynamodb.get_item(
            TableName=request.getfixturevalue("table_names")["UsageTable"],
            Key={"pk": {"S": "USER#rater"}, "sk": {"S": f"DAY#{DAY}"}},
        )["Item"]
        assert "rate_2026-03-01T12:00" not in item  # the previous minute's count is dropped
        assert item["rate_2026-03-01T12:01"]["N"] == "1"
        assert item["day"]["S"] == DAY  # the aggregator's by-day index finds it


def test_a_request_can_be_counted_in_the_rate_window_alone(new_store) -> None:
    # Given a user whose minute already holds one request with a budget hold
    store, rater = new_store(), user_day("rater")
    limits = Limits(tokens=10_000, cost_micros=None)
    minute = RateWindow(window="2026-03-01T12:00", previous="2026-03-01T11:59", limit=4)
    assert run(store.reserve(rater, "r1", Amount(10, 0), limits, EXPIRES, rate=minute))
    # When three requests are counted without a hold, the second one's write arriving twice
    run(store.count_rate(rater, "r2", minute, EXPIRES))
    run(store.count_rate(rater, "r3", minute, EXPIRES))
    run(store.count_rate(rater, "r3", minute, EXPIRES))  # a retry of a write that landed
    run(store.count_rate(rater, "r4", minute, EXPIRES))
    # Then the minute is full (4 counted, the repeat once), and no budget was touched
    with pytest.raises(RateWindowFull):
        run(store.count_rate(rater, "r5", minute, EXPIRES))
    with pytest.raises(RateWindowFull):
        run(store.reserve(rater, "r6", Amount(10, 0), limits, EXPIRES, rate=minute))
    counters = run(store.counters(rater))
    assert (counters.tokens, counters.reserved_tokens, counters.requests) == (10, 10, 0)
    # And the next minute starts afresh, also for a user with no budget item yet
    next_minute = RateWindow(window="2026-03-01T12:01", previous="2026-03-01T12:00", limit=4)
    run(store.count_rate(rater, "r6", next_minute, EXPIRES))
    run(store.count_rate(user_day("newcomer"), "r7", minute, EXPIRES))
    assert run(store.counters(user_day("newcomer"))).tokens == 0


# An operation on request i: hold n tokens (a new hold or a top-up), settle at a fraction,
# release, or repeat the previous write as a retry would.
operations = st.lists(
    st.one_of(
        st.tuples(st.just("hold"), st.integers(0, 4), st.integers(1, 400)),
        st.tuples(st.just("settle"), st.integers(0, 4), st.floats(0, 1.5)),
        st.tuples(st.just("release"), st.integers(0, 4), st.just(0)),
        st.tuples(st.just("repeat"), st.just(0), st.just(0)),
    ),
    max_size=30,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ops=operations, limit=st.integers(100, 1500))
def test_retried_and_duplicated_writes_keep_usage_equal_to_settled_charges(
    new_store, ops, limit
) -> None:
    store = new_store()
    account = Account("user", f"u-{abs(hash((tuple(ops), limit)))}", "day", DAY)
    limits = Limits(tokens=limit, cost_micros=None)
    held: dict[str, int] = {}
    settled_total = 0
    # request ids are never reused: a settled or released request's index gets a new one
    generation: dict[int, int] = {}

    async def scenario() -> None:
        nonlocal settled_total
        last = None
        for kind, index, value in ops:
            request_id = f"r{index}-{generation.get(index, 0)}"
            if kind == "repeat":
                if last is not None:
                    await last()  # the same write again: must change nothing
            elif kind == "hold":
                previous = held.get(request_id)
                new = (previous or 0) + int(value)

                def write(request_id=request_id, new=new, previous=previous):
                    return store.reserve(
                        account,
                        request_id,
                        Amount(new, 0),
                        limits,
                        EXPIRES,
                        previous=None if previous is None else Amount(previous, 0),
                    )

                before = (await store.counters(account)).tokens
                if await write() is None:
                    assert before + new - (previous or 0) > limit
                else:
                    held[request_id] = new
                    assert (await store.counters(account)).tokens <= limit
                last = write
            elif request_id in held:
                amount = held.pop(request_id)
                generation[index] = generation.get(index, 0) + 1
                if kind == "settle":
                    actual = int(amount * value)

                    def write(request_id=request_id, amount=amount, actual=actual):
                        return store.settle(
                            account, request_id, Amount(amount, 0), Amount(actual, 0)
                        )

                    assert await write() is not None
                    settled_total += actual
                else:

                    def write(request_id=request_id, amount=amount):
                        return store.release(account, request_id, Amount(amount, 0))

                    await write()
                last = write
            counters = await store.counters(account)
            assert counters.tokens == settled_total + sum(held.values())
            assert counters.reserved_tokens == sum(held.values())
            assert counters.tokens - counters.reserved_tokens == settled_total

    asyncio.run(scenario())


def test_a_release_before_its_hold_landed_bars_the_late_write(new_store) -> None:
    # Given a give-back that finds no hold (its write was lost or is still in flight)
    store, alice = new_store(), user_day("alice")
    run(store.release(alice, "r1", Amount(300, 30), bar_late_writes=True))
    # When the delayed write of that hold arrives
    late = run(store.reserve(alice, "r1", Amount(300, 30), LIMITS, EXPIRES))
    # Then it cannot land: nothing is held
    assert late is None
    assert run(store.counters(alice)).tokens == 0


def test_a_barred_release_of_a_landed_hold_also_bars_its_retries(new_store) -> None:
    # Given a hold that landed, given back while a retry of its write is still in flight
    store, alice = new_store(), user_day("alice")
    run(store.reserve(alice, "r1", Amount(300, 30), LIMITS, EXPIRES))
    run(store.release(alice, "r1", Amount(300, 30), bar_late_writes=True))
    # When the retry lands
    assert run(store.reserve(alice, "r1", Amount(300, 30), LIMITS, EXPIRES)) is None
    # Then nothing is held
    assert run(store.counters(alice)).tokens == 0
