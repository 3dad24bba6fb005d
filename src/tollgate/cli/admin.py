"""tollgate-admin: an operator's view of budgets and spend, with their own AWS credentials.

    tollgate-admin usage --user alice [--plan pro] [--day 2026-03-10 | --month 2026-03]
    tollgate-admin usage --team acme --month 2026-03
    tollgate-admin usage --global
    tollgate-admin top --day 2026-03-10

Reads the budget counters of the usage table by key (GetItem; the global scope's shards
with one BatchGetItem) and the aggregator's day rollups (GetItem): never a scan. boto3's
default credential chain and endpoint variables apply (AWS_ENDPOINT_URL_DYNAMODB for a
local server).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

import boto3
from boto3.dynamodb.types import TypeDeserializer

from tollgate.adapters.budget_keys import budget_key, global_shard_accounts
from tollgate.adapters.rollup_store import batch_get, day_key
from tollgate.budget import DEFAULT_PLAN, Budgets, WindowLimits, utc_day, utc_month
from tollgate.ports import Account, BudgetCounters, Limits, Scope, Window
from tollgate.pricing import micros_to_usd

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_deserializer = TypeDeserializer()
_COUNTER_NAMES = [f.name for f in fields(BudgetCounters) if f.name not in {"period", "retried"}]
DEFAULT_TOP = 10


def counters_of(period: str, items: list[dict[str, Any]]) -> BudgetCounters:
    """The sum of budget items' counters (one item, or a global window's shards)."""
    totals = dict.fromkeys(_COUNTER_NAMES, 0)
    for item in items:
        for name in _COUNTER_NAMES:
            if name in item:
                totals[name] += int(_deserializer.deserialize(item[name]))
    return BudgetCounters(period, **totals, retried=False)


@dataclass(frozen=True)
class Usage:
    scope: Scope
    owner: str
    window: Window
    period: str
    counters: BudgetCounters
    limits: Limits | None

    def as_json(self) -> dict[str, Any]:
        counters, limits = self.counters, self.limits
        return {
            "scope": self.scope,
            "owner": self.owner,
            "window": self.window,
            "period": self.period,
            "tokens_settled": counters.tokens - counters.reserved_tokens,
            "tokens_reserved": counters.reserved_tokens,
            "token_limit": None if limits is None else limits.tokens,
            "cost_settled_usd": micros_to_usd(counters.cost_micros - counters.reserved_micros),
            "cost_reserved_usd": micros_to_usd(counters.reserved_micros),
            "cost_limit_usd": None
            if limits is None or limits.cost_micros is None
            else micros_to_usd(limits.cost_micros),
            "requests": counters.requests,
        }


class BudgetReader:
    """The usage table's budget counters, read by key."""

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self._client = client
        self._table = table

    def counters(self, scope: Scope, owner: str, window: Window, period: str) -> BudgetCounters:
        if scope == "global":
            keys = [budget_key(account) for account in global_shard_accounts(window, period)]
            return counters_of(period, batch_get(self._client.batch_get_item, self._table, keys))
        response = self._client.get_item(
            TableName=self._table,
            Key=budget_key(Account(scope, owner, window, period)),
            ConsistentRead=True,
        )
        item = response.get("Item")
        return counters_of(period, [] if item is None else [cast(dict[str, Any], item)])


class RollupReader:
    """The aggregator's day rollups (rollups table), read by key."""

    def __init__(self, client: DynamoDBClient, table: str) -> None:
        self._client = client
        self._table = table

    def day(self, day: str) -> dict[str, Any] | None:
        response = self._client.get_item(TableName=self._table, Key=day_key(day))
        item = response.get("Item")
        if item is None:
            return None
        return {name: _deserializer.deserialize(value) for name, value in item.items()}


def window_limits(budgets: Budgets | None, scope: Scope, plan: str) -> WindowLimits | None:
    if budgets is None:
        return None
    if scope == "user":
        return budgets.plans.get(plan)
    return budgets.team if scope == "team" else budgets.global_


def budgets_from(text: str | None) -> Budgets | None:
    """BUDGETS as the chat function reads it; the DAILY_* variables fill `plans.default`."""
    if not text:
        return None
    tokens = int(os.environ.get("DAILY_TOKEN_LIMIT", "50000"))
    usd = os.environ.get("DAILY_COST_LIMIT_USD")
    default_day = Limits(tokens, None if not usd else round(float(usd) * 1_000_000))
    return Budgets.parse(text, default_day)


def top_spenders(rollup: dict[str, Any], limit: int) -> dict[str, Any]:
    teams = sorted(
        rollup.get("by_team", {}).items(), key=lambda item: (-item[1]["cost_micros"], item[0])
    )
    return {
        "day": rollup["day"],
        "cost_usd": micros_to_usd(int(rollup["cost_micros"])),
        "requests": int(rollup["requests"]),
        "windows_present": int(rollup["windows_present"]),
        "windows_expected": int(rollup["windows_expected"]),
        "top_users": [
            {
                "user_id": entry["user_id"],
                "cost_usd": micros_to_usd(int(entry["cost_micros"])),
                "tokens": int(entry["tokens"]),
            }
            for entry in rollup["top_users"][:limit]
        ],
        "top_teams": [
            {
                "team": team,
                "cost_usd": micros_to_usd(int(counts["cost_micros"])),
                "tokens": int(counts["input_tokens"]) + int(counts["output_tokens"]),
                "requests": int(counts["requests"]),
            }
            for team, counts in teams[:limit]
        ],
    }


# ---------------------------------------------------------------- output


def table(headers: list[str], rows: list[list[Any]]) -> str:
    cells = [headers, *[["-" if v is None else str(v) for v in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells
    )


def usage_text(usage: dict[str, Any]) -> str:
    title = f"{usage['scope']} {usage['owner']} - {usage['window']} {usage['period']}"
    rows = [
        ["tokens", usage["tokens_settled"], usage["tokens_reserved"], usage["token_limit"]],
        ["usd", usage["cost_settled_usd"], usage["cost_reserved_usd"], usage["cost_limit_usd"]],
    ]
    body = table(["unit", "settled", "reserved", "limit"], rows)
    return f"{title}\n{body}\nrequests: {usage['requests']}"


def top_text(top: dict[str, Any]) -> str:
    lines = [
        f"day {top['day']}: {top['cost_usd']} USD, {top['requests']} requests "
        f"({top['windows_present']}/{top['windows_expected']} hours aggregated)",
        "",
        table(
            ["user", "usd", "tokens"],
            [[u["user_id"], u["cost_usd"], u["tokens"]] for u in top["top_users"]],
        ),
        "",
        table(
            ["team", "usd", "tokens", "requests"],
            [[t["team"], t["cost_usd"], t["tokens"], t["requests"]] for t in top["top_teams"]],
        ),
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- commands


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser = argparse.ArgumentParser(
        prog="tollgate-admin", description="Budgets and spend of a Tollgate stack (read-only)."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    usage = commands.add_parser("usage", parents=[common], help="a scope's budget counters")
    usage.add_argument("--usage-table", default=os.environ.get("USAGE_TABLE"))
    usage.add_argument(
        "--budgets",
        default=os.environ.get("BUDGETS"),
        help="BUDGETS JSON, to print the limits (env BUDGETS)",
    )
    who = usage.add_mutually_exclusive_group(required=True)
    who.add_argument("--user")
    who.add_argument("--team")
    who.add_argument("--global", dest="stack", action="store_true", help="the whole stack")
    usage.add_argument("--plan", default=DEFAULT_PLAN, help="the user's plan, for its limits")
    when = usage.add_mutually_exclusive_group()
    when.add_argument("--day", help="YYYY-MM-DD (UTC; default today)")
    when.add_argument("--month", help="YYYY-MM (UTC)")

    top = commands.add_parser("top", parents=[common], help="a day's top spenders (rollups)")
    top.add_argument("--rollups-table", default=os.environ.get("ROLLUPS_TABLE"))
    top.add_argument("--day", help="YYYY-MM-DD (UTC; default today)")
    top.add_argument("--limit", type=int, default=DEFAULT_TOP)

    args = parser.parse_args(argv)
    table_name = args.usage_table if args.command == "usage" else args.rollups_table
    if not table_name:
        option = "--usage-table" if args.command == "usage" else "--rollups-table"
        parser.error(f"{option} (or {option[2:].upper().replace('-', '_')}) is required")
    for name, form in (("day", "%Y-%m-%d"), ("month", "%Y-%m")):
        value = getattr(args, name, None)
        if value is not None:
            try:
                datetime.strptime(value, form)
            except ValueError:
                parser.error(f"--{name} must be {form.replace('%', '').upper()}")
    return args


def usage_command(args: argparse.Namespace, client: DynamoDBClient) -> dict[str, Any]:
    now = datetime.now(UTC)
    window: Window = "month" if args.month else "day"
    period = args.month or args.day or (utc_month(now) if window == "month" else utc_day(now))
    scope: Scope = "user" if args.user else "team" if args.team else "global"
    owner = args.user or args.team or "all"
    counters = BudgetReader(client, args.usage_table).counters(scope, owner, window, period)
    limits = window_limits(budgets_from(args.budgets), scope, args.plan)
    return Usage(
        scope, owner, window, period, counters, None if limits is None else limits.of(window)
    ).as_json()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = boto3.client("dynamodb")
    if args.command == "usage":
        try:
            result = usage_command(args, client)
        except ValueError as exc:  # a malformed BUDGETS
            print(f"tollgate-admin: {exc}", file=sys.stderr)
            return 2
        text = usage_text(result)
    else:
        day = args.day or utc_day(datetime.now(UTC))
        rollup = RollupReader(client, args.rollups_table).day(day)
        if rollup is None:
            print(f"tollgate-admin: no rollup for {day} (has the aggregator run?)", file=sys.stderr)
            return 1
        result = top_spenders(rollup, args.limit)
        text = top_text(result)
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
