"""The in-memory usage store keeps the DynamoDB adapter's budget rules (the same checks, in short).

These mirror the budget rules of tollgate.adapters.usage_store, so the benchmark's fake
cannot drift silently. The conversation store and the request registry are held to
DynamoDB's semantics by one suite for both: tests/integration/test_store_contracts.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from tollgate.adapters.memory_store import MemoryUsageStore
from tollgate.ports import Limits, RateWindow, RateWindowFull

T = TypeVar("T")
ALICE, BOB = "alice", "bob"
DAY = "2026-03-01"
LIMITS = Limits(tokens=1000, cost_micros=None)
EXPIRES = 1_900_000_000


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


# ---------------------------------------------------------------- budgets


def test_reservations_never_pass_the_limit_and_add_to_an_open_one() -> None:
    store = MemoryUsageStore()
    assert run(store.reserve(ALICE, DAY, "r1", 600, 6, LIMITS, 0)) is not None
    assert run(store.reserve(ALICE, DAY, "r2", 401, 4, LIMITS, 0)) is None
    topped = run(store.reserve(ALICE, DAY, "r1", 400, 4, LIMITS, 0))
    assert topped is not None
    assert (topped.tokens, topped.reserved_tokens) == (1000, 1000)
    assert run(store.reserve(BOB, DAY, "r3", 1000, 0, LIMITS, 0)) is not None
    # a dollar limit refuses on its own
    dollars = Limits(tokens=10_000, cost_micros=10)
    assert run(store.reserve("carol", DAY, "r4", 1, 11, dollars, 0)) is None


def test_concurrent_reservations_admit_exactly_what_fits() -> None:
    store = MemoryUsageStore()

    async def fifty() -> list[Any]:
        return await asyncio.gather(
            *(store.reserve(ALICE, DAY, f"r{i}", 100, 1, LIMITS, 0) for i in range(50))
        )

    admitted = [result for result in run(fifty()) if result is not None]
    assert len(admitted) == 10
    assert run(store.counters(ALICE, DAY)).tokens == 1000


def test_settle_is_idempotent_and_release_gives_back() -> None:
    store = MemoryUsageStore()
    run(store.reserve(ALICE, DAY, "r1", 500, 50, LIMITS, 0))
    run(store.reserve(ALICE, DAY, "r2", 300, 30, LIMITS, 0))
    settled = run(store.settle(ALICE, DAY, "r1", (500, 50), (120, 12)))
    assert settled is not None
    assert (settled.tokens, settled.cost_micros, settled.requests) == (420, 42, 1)
    assert (settled.reserved_tokens, settled.reserved_micros) == (300, 30)
    assert run(store.settle(ALICE, DAY, "r1", (500, 50), (120, 12))) is None
    run(store.release(ALICE, DAY, "r2", (300, 30)))
    run(store.release(ALICE, DAY, "r2", (300, 30)))  # idempotent
    counters = run(store.counters(ALICE, DAY))
    assert (counters.tokens, counters.reserved_tokens, counters.requests) == (120, 0, 1)
    assert run(store.counters(BOB, DAY)).tokens == 0


def test_the_rate_window_refuses_past_its_limit_and_reserves_nothing() -> None:
    store = MemoryUsageStore()
    minute = RateWindow(window="2026-03-01T12:00", previous="2026-03-01T11:59", limit=2)
    for request_id in ("r1", "r2"):
        assert run(store.reserve(ALICE, DAY, request_id, 10, 1, LIMITS, EXPIRES, minute))
    with pytest.raises(RateWindowFull):
        run(store.reserve(ALICE, DAY, "r3", 10, 1, LIMITS, EXPIRES, minute))
    assert run(store.counters(ALICE, DAY)).tokens == 20
    next_minute = RateWindow(window="2026-03-01T12:01", previous="2026-03-01T12:00", limit=2)
    assert run(store.reserve(ALICE, DAY, "r4", 10, 1, LIMITS, EXPIRES, next_minute))
