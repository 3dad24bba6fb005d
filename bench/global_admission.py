"""The sharded global budget: admission throughput and the false-refusal margin.

Throughput: the real Ledger admitting and settling requests against a global day limit
spread over shards, with DynamoDB on the moto server (over HTTP) and with the in-memory
store (the ledger's own cost). moto answers one request at a time, so its figure is a
floor set by moto; what sharding buys on DynamoDB is the writes per item per second,
reported beside it (one item takes about 1,000 writes/s).

Margin: requests of one size admitted until the first refusal; the room still left in
the global window at that moment, in holds. A full shard sends a request on to the
window's other shards, so a refusal means no shard had room for it: the margin is below
one hold per shard.
"""

from __future__ import annotations

import asyncio
import io
import time
from datetime import UTC, datetime
from typing import Any

from tollgate.adapters.memory_store import MemoryUsageStore
from tollgate.budget import BudgetPolicy, Budgets, Payer, WindowLimits
from tollgate.errors import BudgetExceeded
from tollgate.ledger import Ledger
from tollgate.observability import CostRecorder, build_logger
from tollgate.ports import Account, Amount, Limits, UsageStore

HOLD = Amount(tokens=1_000, micros=1_000)
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)
DYNAMODB_ITEM_WRITES_PER_S = 1_000


def _ledger(store: UsageStore, global_tokens: int) -> Ledger:
    budgets = Budgets(
        plans={"default": WindowLimits(day=Limits(None, None))},
        global_=WindowLimits(day=Limits(global_tokens, None)),
    )
    log = io.StringIO()
    return Ledger(
        store,
        BudgetPolicy(budgets, typical_hold=HOLD),
        CostRecorder(logger=build_logger(log), stream=log),
        rate_limit_per_minute=10**9,
    )


async def _throughput(store: UsageStore, requests: int, concurrency: int) -> dict[str, Any]:
    ledger = _ledger(store, global_tokens=10**12)
    shards = ledger.policy.global_shards(Limits(10**12, None))
    semaphore = asyncio.Semaphore(concurrency)

    async def one(number: int) -> None:
        async with semaphore:
            hold = await ledger.admit(Payer(f"user-{number}"), f"bench-{number}", HOLD, NOW)
            await ledger.settle(hold, HOLD)

    started = time.perf_counter()
    await asyncio.gather(*(one(number) for number in range(requests)))
    elapsed = time.perf_counter() - started
    admits_per_s = requests / elapsed
    return {
        "requests": requests,
        "concurrency": concurrency,
        "shards": shards,
        "admissions_per_s": admits_per_s,
        # each admission writes its user's item and one shard, then settles both
        "shard_writes_per_s_at_dynamodb_item_limit": DYNAMODB_ITEM_WRITES_PER_S * shards / 2,
    }


async def _margin(global_tokens: int) -> dict[str, Any]:
    store = MemoryUsageStore()
    ledger = _ledger(store, global_tokens)
    shards = ledger.policy.global_shards(Limits(global_tokens, None))
    admitted = 0
    while True:
        try:
            await ledger.admit(Payer(f"user-{admitted}"), f"fill-{admitted}", HOLD, NOW)
        except BudgetExceeded:
            break
        admitted += 1
    used = 0
    for shard in range(shards):
        used += (await store.counters(Account("global", str(shard), "day", "2026-03-01"))).tokens
    room = global_tokens - used
    return {
        "global_limit_tokens": global_tokens,
        "shards": shards,
        "admitted": admitted,
        "room_left_tokens": room,
        "room_left_holds": room / HOLD.tokens,
        "bound_holds": shards,
    }


def global_admission(moto_url: str | None, *, requests: int = 400) -> dict[str, Any]:
    """Throughput (memory store, and DynamoDB on moto when given) and margins."""
    results: dict[str, Any] = {"hold_tokens": HOLD.tokens}
    results["memory"] = asyncio.run(_throughput(MemoryUsageStore(), requests * 5, 64))
    if moto_url is not None:
        from bench.processes import async_dynamodb, dynamodb_client
        from tollgate.adapters.usage_store import DynamoUsageStore
        from tollgate.local.tables import create_tables

        names = {"UsageTable": "bench-global-usage", "ConversationsTable": "bench-global-conv"}
        create_tables(dynamodb_client(moto_url), names)
        store = DynamoUsageStore(names["UsageTable"], async_dynamodb(moto_url))
        results["dynamodb_moto"] = asyncio.run(_throughput(store, requests, 64))
    results["margins"] = [
        asyncio.run(_margin(tokens)) for tokens in (10_000, 100_000, 1_000_000, 10_000_000)
    ]
    return results


def render(results: dict[str, Any]) -> list[str]:
    lines = [
        "## Global budget: sharded admission",
        "",
        f"bench/global_admission.py, holds of {results['hold_tokens']:,} tokens, the real Ledger "
        "admitting and settling at concurrency 64.",
        "",
        "| store | shards | admissions/s | shard writes/s DynamoDB allows |",
        "|---|---:|---:|---:|",
    ]
    for name in ("memory", "dynamodb_moto"):
        row = results.get(name)
        if row:
            lines.append(
                f"| {name} | {row['shards']} | {row['admissions_per_s']:,.0f} | "
                f"{row['shard_writes_per_s_at_dynamodb_item_limit']:,.0f} |"
            )
    lines += [
        "",
        "False-refusal margin: room left in the global window at the first refusal.",
        "",
        "| global limit (tokens) | shards | admitted | room left (holds) | bound (holds) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in results["margins"]:
        lines.append(
            f"| {row['global_limit_tokens']:,} | {row['shards']} | {row['admitted']:,} | "
            f"{row['room_left_holds']:.2f} | < {row['bound_holds']} |"
        )
    return [*lines, ""]


if __name__ == "__main__":
    print("\n".join(render(global_admission(None))))
