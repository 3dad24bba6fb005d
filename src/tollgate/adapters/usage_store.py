"""DynamoDB: per-user daily budgets and the request registry (cross-instance cancel).

A budget item's `tokens` / `cost_micros` hold settled usage plus open reservations, so
one conditional UpdateItem can admit a request: `tokens <= limit - reservation`
(DynamoDB conditions cannot add). Each open reservation is also kept as its own pair
of attributes (`rt_<request_id>`, `rc_<request_id>`): settling removes them under
`attribute_exists`, which makes a retried settle a no-op instead of a double charge.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from tollgate.adapters.aws import (
    as_unavailable,
    dynamodb_client,
    is_condition_failure,
    item_on_failure,
    run_blocking,
)
from tollgate.ports import BudgetCounters, Limits, RateWindow, RateWindowFull

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

_COUNTERS = ("tokens", "cost_micros", "reserved_tokens", "reserved_micros", "requests")


def budget_key(user_id: str, day: str) -> dict[str, Any]:
    return {"pk": {"S": f"USER#{user_id}"}, "sk": {"S": f"DAY#{day}"}}


def request_key(request_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"REQ#{request_id}"}, "sk": {"S": "REQ"}}


def _reservation_names(request_id: str) -> dict[str, str]:
    return {"#rt": f"rt_{request_id}", "#rc": f"rc_{request_id}"}


def _counters(day: str, item: dict[str, Any] | None) -> BudgetCounters:
    item = item or {}
    values = {name: int(item[name]["N"]) for name in _COUNTERS if name in item}
    return BudgetCounters(day=day, **values)


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


class _Table:
    """One table's calls, off the event loop, with outages mapped to DependencyUnavailable."""

    def __init__(self, table_name: str, client: DynamoDBClient | None) -> None:
        self._table = table_name
        self._client = client or dynamodb_client()

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        method = getattr(self._client, operation)
        try:
            response: dict[str, Any] = await run_blocking(method, TableName=self._table, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and is_condition_failure(exc):
                raise
            unavailable = as_unavailable(exc)
            if unavailable is not None:
                raise unavailable from exc
            raise
        return response


class DynamoUsageStore:
    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self._table = _Table(table_name, client)

    async def reserve(
        self,
        user_id: str,
        day: str,
        request_id: str,
        tokens: int,
        micros: int,
        limits: Limits,
        expires_at: int,
        rate: RateWindow | None = None,
    ) -> BudgetCounters | None:
        if tokens > limits.tokens or (
            limits.cost_micros is not None and micros > limits.cost_micros
        ):
            return None
        names = {
            "#tokens": "tokens",
            "#cost": "cost_micros",
            "#day": "day",
            **_reservation_names(request_id),
        }
        values = {
            ":t": _n(tokens),
            ":c": _n(micros),
            ":tmax": _n(limits.tokens - tokens),
            ":day": {"S": day},
            ":user": {"S": user_id},
            ":exp": _n(expires_at),
        }
        update = (
            "ADD #tokens :t, #cost :c, reserved_tokens :t, reserved_micros :c, #rt :t, #rc :c "
            "SET #day = :day, user_id = :user, expires_at = :exp"
        )
        condition = "(attribute_not_exists(#tokens) OR #tokens <= :tmax)"
        if limits.cost_micros is not None:
            condition += " AND (attribute_not_exists(#cost) OR #cost <= :cmax)"
            values[":cmax"] = _n(limits.cost_micros - micros)
        if rate is not None:
            # The minute's count lives on the budget item: one update admits both.
            names.update({"#rate": f"rate_{rate.window}", "#previous": f"rate_{rate.previous}"})
            values.update({":one": _n(1), ":rate_max": _n(rate.limit)})
            update = update.replace("#rc :c ", "#rc :c, #rate :one ") + " REMOVE #previous"
            condition += " AND (attribute_not_exists(#rate) OR #rate < :rate_max)"
        try:
            response = await self._table.call(
                "update_item",
                Key=budget_key(user_id, day),
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            old = item_on_failure(exc) or {}
            if (
                rate is not None
                and int(old.get(f"rate_{rate.window}", {}).get("N", 0)) >= rate.limit
            ):
                raise RateWindowFull from exc
            return None
        return _counters(day, response["Attributes"])

    async def settle(
        self,
        user_id: str,
        day: str,
        request_id: str,
        reserved: tuple[int, int],
        actual: tuple[int, int],
    ) -> BudgetCounters | None:
        reserved_tokens, reserved_micros = reserved
        actual_tokens, actual_micros = actual
        try:
            response = await self._table.call(
                "update_item",
                Key=budget_key(user_id, day),
                UpdateExpression=(
                    "ADD #tokens :dt, #cost :dc, reserved_tokens :rt, reserved_micros :rc, "
                    "requests :one REMOVE #rt, #rc"
                ),
                ConditionExpression="attribute_exists(#rt)",
                ExpressionAttributeNames={
                    "#tokens": "tokens",
                    "#cost": "cost_micros",
                    **_reservation_names(request_id),
                },
                ExpressionAttributeValues={
                    ":dt": _n(actual_tokens - reserved_tokens),
                    ":dc": _n(actual_micros - reserved_micros),
                    ":rt": _n(-reserved_tokens),
                    ":rc": _n(-reserved_micros),
                    ":one": _n(1),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return None  # settled already: a retry must not count twice
            raise
        return _counters(day, response["Attributes"])

    async def release(
        self, user_id: str, day: str, request_id: str, reserved: tuple[int, int]
    ) -> None:
        """Give back a reservation whose request never reached upstream."""
        reserved_tokens, reserved_micros = reserved
        try:
            await self._table.call(
                "update_item",
                Key=budget_key(user_id, day),
                UpdateExpression=(
                    "ADD #tokens :rt, #cost :rc, reserved_tokens :rt, reserved_micros :rc "
                    "REMOVE #rtr, #rcr"
                ),
                ConditionExpression="attribute_exists(#rtr)",
                ExpressionAttributeNames={
                    "#tokens": "tokens",
                    "#cost": "cost_micros",
                    "#rtr": f"rt_{request_id}",
                    "#rcr": f"rc_{request_id}",
                },
                ExpressionAttributeValues={
                    ":rt": _n(-reserved_tokens),
                    ":rc": _n(-reserved_micros),
                },
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise

    async def counters(self, user_id: str, day: str) -> BudgetCounters:
        response = await self._table.call(
            "get_item", Key=budget_key(user_id, day), ConsistentRead=True
        )
        return _counters(day, response.get("Item"))


class DynamoRequestRegistry:
    """`REQ#<id>` items in the usage table, written only when a cancel is asked for."""

    def __init__(self, table_name: str, client: DynamoDBClient | None = None) -> None:
        self._table = _Table(table_name, client)

    async def signal_cancel(self, request_id: str, expires_at: int) -> None:
        await self._table.call(
            "put_item",
            Item={
                **request_key(request_id),
                "cancel_at": _n(int(time.time())),
                "expires_at": _n(expires_at),
            },
        )

    async def is_cancelled(self, request_id: str) -> bool:
        response = await self._table.call(
            "get_item",
            Key=request_key(request_id),
            ConsistentRead=True,
            ProjectionExpression="cancel_at",
        )
        return "cancel_at" in response.get("Item", {})
