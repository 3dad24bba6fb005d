"""DynamoDB: rollups (rollups table) and the budget counters' settled spend (usage table).

Rollup items (rollups table, `pk`/`sk`, TTL `expires_at`):

| item | pk | sk |
|---|---|---|
| window rollup | `HOUR#<window start, ISO-8601 UTC>` | `ROLLUP` |
| day rollup | `DAY#<yyyy-mm-dd>` | `ROLLUP` |

Every item is a pure function of its records (no wall-clock attributes), and PutItem
overwrites, so re-running a window or a day writes identical items.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, cast

from boto3.dynamodb.types import TypeDeserializer, TypeSerializer

from tollgate.adapters.aws import BATCH_PROFILE, aws_client
from tollgate.adapters.budget_keys import budget_key, global_shard_accounts
from tollgate.aggregation.rollups import Counts, Rollup, UserTotal
from tollgate.aggregation.windows import Window, parse_iso, to_ms
from tollgate.budget import iso_z

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, KeysAndAttributesTypeDef

ROLLUP_SK = "ROLLUP"
USAGE_BY_DAY_INDEX = "by-day"
BUDGET_PK_PREFIX = "USER#"
# DynamoDB refuses items over 400 KB. A window item keeps its per-user totals (for exact
# day top spenders) in at most this many bytes, counted as DynamoDB counts them; beyond
# that the smallest spenders are dropped and the item says so. User ids are up to 128
# characters of any script, so a count of users would not bound the size.
MAX_ITEM_BYTES = 400 * 1024
USERS_MAP_MAX_BYTES = 300 * 1024
# Per-team totals (`by_team`), capped the same way; with the users they stay under the limit.
TEAMS_MAP_MAX_BYTES = 48 * 1024
TOP_USERS_PER_ITEM = 10
_BATCH_GET_LIMIT = 100
_UNPROCESSED_RETRIES = 8

_serializer = TypeSerializer()
_deserializer = TypeDeserializer()


def batch_dynamodb_client() -> DynamoDBClient:
    return cast("DynamoDBClient", aws_client("dynamodb", BATCH_PROFILE))


def window_key(window: Window) -> dict[str, AttributeValueTypeDef]:
    return {"pk": {"S": f"HOUR#{iso_z(window.start)}"}, "sk": {"S": ROLLUP_SK}}


def day_key(day: str) -> dict[str, AttributeValueTypeDef]:
    return {"pk": {"S": f"DAY#{day}"}, "sk": {"S": ROLLUP_SK}}


def _counts_attrs(counts: Counts) -> dict[str, int]:
    return {
        "requests": counts.requests,
        "input_tokens": counts.input_tokens,
        "output_tokens": counts.output_tokens,
        "cost_micros": counts.cost_micros,
        "reasoning_tokens": counts.reasoning_tokens,
    }


def _counts(values: Mapping[str, Any]) -> Counts:
    return Counts(
        requests=int(values["requests"]),
        input_tokens=int(values["input_tokens"]),
        output_tokens=int(values["output_tokens"]),
        cost_micros=int(values["cost_micros"]),
        reasoning_tokens=int(values.get("reasoning_tokens", 0)),  # absent in older items
    )


def attribute_size(value: Any) -> int:
    """An attribute value's size as DynamoDB counts it against the item limit (numbers at
    their upper bound: one byte per two significant digits, plus one)."""
    if isinstance(value, str):
        return len(value.encode("utf-8"))
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, int | Decimal):
        return len(str(abs(value))) // 2 + 2
    if isinstance(value, Mapping):
        return 3 + sum(attribute_size(k) + attribute_size(v) + 1 for k, v in value.items())
    if isinstance(value, list | tuple):
        return 3 + sum(attribute_size(v) + 1 for v in value)
    raise TypeError(f"no DynamoDB size for {type(value).__name__}")


def item_size(attributes: Mapping[str, Any]) -> int:
    return sum(attribute_size(name) + attribute_size(value) for name, value in attributes.items())


def _user_attrs(total: UserTotal) -> dict[str, int]:
    return {"cost_micros": total.cost_micros, "tokens": total.tokens}


def _fitting_users(ranked: list[tuple[str, UserTotal]]) -> list[tuple[str, UserTotal]]:
    """The biggest spenders whose entries fit in USERS_MAP_MAX_BYTES."""
    used = 3
    for kept, (user_id, total) in enumerate(ranked):
        used += attribute_size(user_id) + attribute_size(_user_attrs(total)) + 1
        if used > USERS_MAP_MAX_BYTES:
            return ranked[:kept]
    return ranked


def _fitting_teams(ranked: list[tuple[str, Counts]]) -> list[tuple[str, Counts]]:
    """The biggest team spenders whose entries fit in TEAMS_MAP_MAX_BYTES."""
    used = 3
    for kept, (team, counts) in enumerate(ranked):
        used += attribute_size(team) + attribute_size(_counts_attrs(counts)) + 1
        if used > TEAMS_MAP_MAX_BYTES:
            return ranked[:kept]
    return ranked


def rollup_attributes(rollup: Rollup, *, keep_users: bool) -> dict[str, Any]:
    """The rollup as plain attributes (integers, maps, lists) for an item."""
    if keep_users:
        ranked = _fitting_users(rollup.top_users(len(rollup.users)))
    else:
        ranked = rollup.top_users(TOP_USERS_PER_ITEM)
    teams = _fitting_teams(rollup.top_teams(None))
    attributes: dict[str, Any] = {
        "start": iso_z(rollup.window.start),
        "end": iso_z(rollup.window.end),
        **_counts_attrs(rollup.totals),
        "by_model": {k: _counts_attrs(v) for k, v in rollup.by_model.items()},
        "by_outcome": dict(rollup.by_outcome),
        "by_prompt": {k: _counts_attrs(v) for k, v in rollup.by_prompt.items()},
        "top_users": [
            {"user_id": user_id, **_user_attrs(total)}
            for user_id, total in ranked[:TOP_USERS_PER_ITEM]
        ],
        "users_complete": rollup.users_complete and len(ranked) == len(rollup.users),
        "by_team": {team: _counts_attrs(counts) for team, counts in teams},
        "teams_complete": rollup.teams_complete and len(teams) == len(rollup.teams),
        "cost_micros_by_budget_day": dict(rollup.cost_micros_by_budget_day),
        "skipped_lines": rollup.skipped_lines,
        "saved_micros": rollup.saved_micros,
    }
    if keep_users:
        attributes["users"] = {user_id: _user_attrs(total) for user_id, total in ranked}
    return attributes


def rollup_from_attributes(attributes: Mapping[str, Any]) -> Rollup:
    users = attributes.get("users", {})
    return Rollup(
        window=Window(parse_iso(attributes["start"]), parse_iso(attributes["end"])),
        totals=_counts(attributes),
        by_model={k: _counts(v) for k, v in attributes["by_model"].items()},
        by_outcome={k: int(v) for k, v in attributes["by_outcome"].items()},
        by_prompt={k: _counts(v) for k, v in attributes["by_prompt"].items()},
        users={
            k: UserTotal(cost_micros=int(v["cost_micros"]), tokens=int(v["tokens"]))
            for k, v in users.items()
        },
        users_complete=bool(attributes["users_complete"]),
        # Items written before teams were aggregated have neither attribute.
        teams={k: _counts(v) for k, v in attributes.get("by_team", {}).items()},
        teams_complete=bool(attributes.get("teams_complete", True)),
        cost_micros_by_budget_day={
            k: int(v) for k, v in attributes["cost_micros_by_budget_day"].items()
        },
        skipped_lines=int(attributes["skipped_lines"]),
        saved_micros=int(attributes.get("saved_micros", 0)),  # absent in older rollups
    )


def _to_item(attributes: Mapping[str, Any]) -> dict[str, AttributeValueTypeDef]:
    return {k: _serializer.serialize(v) for k, v in attributes.items()}


def _from_item(item: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deserializer.deserialize(v) for k, v in item.items()}


def batch_get(
    batch_get_item: Callable[..., Any],
    table: str,
    keys: list[dict[str, AttributeValueTypeDef]],
    *,
    projection: str | None = None,
) -> list[dict[str, Any]]:
    """The items of up to 100 keys (missing ones are absent), retrying unprocessed keys.

    Takes the client's bound `batch_get_item`, so the call is named in the class that owns
    the table (tests/unit/test_iam.py grants each call on its class's resource)."""
    items: list[dict[str, Any]] = []
    wanted: KeysAndAttributesTypeDef = {"Keys": keys, "ConsistentRead": True}
    if projection is not None:
        wanted["ProjectionExpression"] = projection
    request: dict[str, KeysAndAttributesTypeDef] = {table: wanted}
    for attempt in range(_UNPROCESSED_RETRIES):
        response = batch_get_item(RequestItems=request)
        items.extend(response.get("Responses", {}).get(table, []))
        unprocessed = response.get("UnprocessedKeys") or {}
        if not unprocessed:
            return items
        request = unprocessed
        time.sleep(min(0.05 * 2**attempt, 2.0))
    raise RuntimeError("BatchGetItem kept returning unprocessed keys")


@dataclass(frozen=True)
class DayRollup:
    rollup: Rollup
    windows_present: int
    windows_expected: int


class RollupStore:
    def __init__(
        self, client: DynamoDBClient, table_name: str, retention: timedelta = timedelta(days=400)
    ) -> None:
        self._client = client
        self._table = table_name
        self._retention = retention

    def _expires_at(self, window: Window) -> int:
        # Derived from the window, not the clock, so re-runs write identical items.
        return to_ms(window.end + self._retention) // 1000

    def put_window(self, rollup: Rollup) -> None:
        attributes = {
            **rollup_attributes(rollup, keep_users=True),
            "kind": "window",
            "expires_at": self._expires_at(rollup.window),
        }
        self._client.put_item(
            TableName=self._table, Item={**window_key(rollup.window), **_to_item(attributes)}
        )

    def put_day(self, day: DayRollup) -> None:
        attributes = {
            **rollup_attributes(day.rollup, keep_users=False),
            "kind": "day",
            "day": day.rollup.window.day,
            "windows_present": day.windows_present,
            "windows_expected": day.windows_expected,
            "expires_at": self._expires_at(day.rollup.window),
        }
        self._client.put_item(
            TableName=self._table,
            Item={**day_key(day.rollup.window.day), **_to_item(attributes)},
        )

    def get_windows(self, windows: Iterable[Window]) -> dict[Window, Rollup]:
        """The stored rollups of `windows`; windows never aggregated are absent."""
        wanted = sorted(set(windows))
        found: dict[Window, Rollup] = {}
        for offset in range(0, len(wanted), _BATCH_GET_LIMIT):
            keys = [window_key(w) for w in wanted[offset : offset + _BATCH_GET_LIMIT]]
            for item in batch_get(self._client.batch_get_item, self._table, keys):
                rollup = rollup_from_attributes(_from_item(item))
                found[rollup.window] = rollup
        return found


class UserSettledSpend:
    """The usage table's daily budget counters, read through its `by-day` index."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def settled_micros(self, day: str) -> int:
        """Sum over users of settled spend (cost_micros minus what is still reserved)."""
        total = 0
        start_key: Mapping[str, Any] | None = None
        while True:
            arguments: dict[str, Any] = {
                "TableName": self._table,
                "IndexName": USAGE_BY_DAY_INDEX,
                "KeyConditionExpression": "#day = :day AND begins_with(pk, :user)",
                "ExpressionAttributeNames": {"#day": "day"},
                "ExpressionAttributeValues": {
                    ":day": {"S": day},
                    ":user": {"S": BUDGET_PK_PREFIX},
                },
                "ProjectionExpression": "cost_micros, reserved_micros",
            }
            if start_key:
                arguments["ExclusiveStartKey"] = start_key
            page = self._client.query(**arguments)
            for item in page.get("Items", []):
                values = _from_item(item)
                total += int(values.get("cost_micros", Decimal(0))) - int(
                    values.get("reserved_micros", Decimal(0))
                )
            start_key = page.get("LastEvaluatedKey")
            if not start_key:
                return total


class GlobalShardCounters:
    """The global scope's day counters: one item per shard, read by key (BatchGetItem)."""

    def __init__(self, client: DynamoDBClient, table_name: str) -> None:
        self._client = client
        self._table = table_name

    def settled_micros(self, day: str) -> int | None:
        """Sum over the day's shards of settled spend; None when no shard item exists
        (the stack had no global day limit)."""
        keys = [budget_key(account) for account in global_shard_accounts("day", day)]
        items = batch_get(
            self._client.batch_get_item,
            self._table,
            keys,
            projection="cost_micros, reserved_micros",
        )
        if not items:
            return None
        return sum(
            int(values.get("cost_micros", 0)) - int(values.get("reserved_micros", 0))
            for values in map(_from_item, items)
        )
