"""The ledger across scopes and shards: no account ever passes its limit, a refusal charges
nothing anywhere, and once everything settles each account holds exactly its settled
charges — also when every write is sent twice, as a retrying client would."""

from __future__ import annotations

import asyncio
import io
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.adapters.memory_store import MemoryUsageStore
from tollgate.budget import BudgetPolicy, Budgets, Payer, WindowLimits
from tollgate.errors import BudgetExceeded
from tollgate.ledger import Hold, Ledger
from tollgate.observability import CostRecorder, build_logger
from tollgate.ports import Account, Amount, BudgetCounters, Limits

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
USER_LIMIT, TEAM_LIMIT, GLOBAL_LIMIT = 900, 1500, 2400


class TwiceStore(MemoryUsageStore):
    """Every write is applied, then sent again (a lost answer retried): the second answer wins."""

    async def reserve(self, *args: Any, **kwargs: Any) -> BudgetCounters | None:
        await super().reserve(*args, **kwargs)
        return await super().reserve(*args, **kwargs)

    async def settle(self, *args: Any, **kwargs: Any) -> BudgetCounters | None:
        first = await super().settle(*args, **kwargs)
        await super().settle(*args, **kwargs)
        return first

    async def release(self, *args: Any, **kwargs: Any) -> None:
        await super().release(*args, **kwargs)
        await super().release(*args, **kwargs)


def ledger_over(store: MemoryUsageStore) -> Ledger:
    budgets = Budgets(
        plans={"default": WindowLimits(day=Limits(USER_LIMIT, None))},
        team=WindowLimits(day=Limits(TEAM_LIMIT, None)),
        global_=WindowLimits(day=Limits(GLOBAL_LIMIT, None)),
    )
    # A typical hold of 100 tokens spreads the global limit over 6 shards.
    policy = BudgetPolicy(budgets, typical_hold=Amount(100, 0))
    log = io.StringIO()
    return Ledger(
        store,
        policy,
        CostRecorder(logger=build_logger(log), stream=log),
        rate_limit_per_minute=10**6,
    )


def limit_of(account: Account, ledger: Ledger) -> int:
    if account.scope == "user":
        return USER_LIMIT
    if account.scope == "team":
        return TEAM_LIMIT
    shards = ledger.policy.global_shards(Limits(GLOBAL_LIMIT, None))
    share = GLOBAL_LIMIT // shards + (1 if int(account.owner) < GLOBAL_LIMIT % shards else 0)
    return share


def test_the_global_limit_spreads_over_several_shards_that_add_up_to_it() -> None:
    ledger = ledger_over(MemoryUsageStore())
    shards = ledger.policy.global_shards(Limits(GLOBAL_LIMIT, None))
    assert shards == 6
    accounts = [Account("global", str(s), "day", "2026-03-01") for s in range(shards)]
    assert sum(limit_of(account, ledger) for account in accounts) == GLOBAL_LIMIT


operations = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(0, 5), st.integers(1, 400)),
        st.tuples(st.just("settle"), st.integers(0, 20), st.floats(0, 1)),
        st.tuples(st.just("give_back"), st.integers(0, 20), st.just(0.0)),
    ),
    max_size=40,
)


@pytest.mark.parametrize("store_class", [MemoryUsageStore, TwiceStore])
@settings(max_examples=60, deadline=None)
@given(ops=operations)
def test_no_scope_passes_its_limit_and_totals_equal_settled_charges(
    store_class: type[MemoryUsageStore], ops: list[tuple[str, int, float]]
) -> None:
    store = store_class()
    ledger = ledger_over(store)
    open_holds: list[Hold] = []
    settled: dict[Account, int] = {}

    async def snapshot() -> dict[Account, int]:
        return {account: (await store.counters(account)).tokens for account in store._budgets}

    async def scenario() -> None:
        for number, (kind, index, value) in enumerate(ops):
            if kind == "admit":
                payer = Payer(f"user-{index}", team="blue" if index % 2 else None)
                before = await snapshot()
                try:
                    hold = await ledger.admit(payer, f"req-{number}", Amount(int(value), 0), NOW)
                except BudgetExceeded:
                    after = await snapshot()  # a refusal charges nothing anywhere
                    assert all(after[a] == before.get(a, 0) for a in after)
                else:
                    open_holds.append(hold)
            elif open_holds:
                hold = open_holds.pop(index % len(open_holds))
                if kind == "settle":
                    actual = int(hold.amount.tokens * value)
                    await ledger.settle(hold, Amount(actual, 0))
                    for line in hold.lines:
                        settled[line.account] = settled.get(line.account, 0) + actual
                else:
                    await ledger.give_back(hold)
            for account, tokens in (await snapshot()).items():
                assert tokens <= limit_of(account, ledger), account
        for hold in open_holds:
            await ledger.give_back(hold)
        totals = await snapshot()
        assert {a: t for a, t in totals.items() if t} == {a: t for a, t in settled.items() if t}

    asyncio.run(scenario())


def test_a_full_shard_sends_the_request_on_to_the_windows_other_shards() -> None:
    # Given a global day limit of exactly 24 holds of 100 tokens over 6 shards (4 each)
    async def fill() -> tuple[int, Ledger]:
        ledger = ledger_over(MemoryUsageStore())
        admitted = 0
        while True:
            try:
                await ledger.admit(
                    Payer(f"user-{admitted % 2}x{admitted}"), f"r{admitted}", Amount(100, 0), NOW
                )
            except BudgetExceeded as refusal:
                refused_by = (refusal.scope, refusal.window)
                break
            admitted += 1
        assert refused_by == ("global", "day")
        return admitted, ledger

    admitted, _ = asyncio.run(fill())
    # Then every shard fills before the first refusal: no room is lost to sharding
    assert admitted == GLOBAL_LIMIT // 100
