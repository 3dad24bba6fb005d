"""DynamoDB: budget counters (one item per account) and the request registry (cancel signals).

A budget item's `tokens` / `cost_micros` hold settled usage plus open holds, so one
conditional UpdateItem can admit a request: `tokens <= limit - hold` (DynamoDB conditions
cannot add). Each open hold is also kept as its own pair of attributes (`rt_<request_id>`,
`rc_<request_id>`), written with SET under a condition on their previous value: a write
that the client retries after it landed finds the hold already in place and changes nothing;
settling and releasing remove the pair under the same kind of condition.
"""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tollgate.adapters.aws import as_unavailable, is_condition_failure, item_on_failure
from tollgate.adapters.budget_keys import budget_key
from tollgate.adapters.dynamodb_http import AsyncDynamoDB, shared_dynamodb
from tollgate.ports import Account, Amount, BudgetCounters, Limits, RateWindow, RateWindowFull

_COUNTERS = ("tokens", "cost_micros", "reserved_tokens", "reserved_micros", "requests")


def request_key(request_id: str) -> dict[str, Any]:
    return {"pk": {"S": f"REQ#{request_id}"}, "sk": {"S": "REQ"}}


def _hold_names(request_id: str) -> dict[str, str]:
    return {"#rt": f"rt_{request_id}", "#rc": f"rc_{request_id}"}


def _released_name(request_id: str) -> str:
    """Marks a request whose hold was given back: a delayed write of that hold cannot land."""
    return f"rx_{request_id}"


def _counters(period: str, item: dict[str, Any] | None, *, retried: bool = False) -> BudgetCounters:
    item = item or {}
    values = {name: int(item[name]["N"]) for name in _COUNTERS if name in item}
    return BudgetCounters(period, **values, retried=retried)


def _retried(response: dict[str, Any]) -> bool:
    return int(response.get("ResponseMetadata", {}).get("RetryAttempts", 0)) > 0


def _hold_in(item: dict[str, Any], request_id: str) -> Amount | None:
    tokens, micros = item.get(f"rt_{request_id}"), item.get(f"rc_{request_id}")
    if tokens is None or micros is None:
        return None
    return Amount(int(tokens["N"]), int(micros["N"]))


def _n(value: int) -> dict[str, str]:
    return {"N": str(value)}


class _Table:
    """One table's calls, with outages mapped to DependencyUnavailable."""

    def __init__(self, table_name: str, db: AsyncDynamoDB | None) -> None:
        self._table = table_name
        self._db = db or shared_dynamodb()

    async def call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._db.call(operation, {"TableName": self._table, **kwargs})
        except (ClientError, BotoCoreError) as exc:
            if isinstance(exc, ClientError) and is_condition_failure(exc):
                raise
            unavailable = as_unavailable(exc)
            if unavailable is not None:
                raise unavailable from exc
            raise
        return response


class DynamoUsageStore:
    def __init__(self, table_name: str, db: AsyncDynamoDB | None = None) -> None:
        self._table = _Table(table_name, db)

    async def reserve(
        self,
        account: Account,
        request_id: str,
        hold: Amount,
        limits: Limits,
        expires_at: int,
        *,
        previous: Amount | None = None,
        rate: RateWindow | None = None,
    ) -> BudgetCounters | None:
        before = previous or Amount(0, 0)
        extra = Amount(hold.tokens - before.tokens, hold.micros - before.micros)
        if (limits.tokens is not None and extra.tokens > limits.tokens) or (
            limits.cost_micros is not None and extra.micros > limits.cost_micros
        ):
            return None
        names = {"#tokens": "tokens", "#cost": "cost_micros", **_hold_names(request_id)}
        values = {
            ":dt": _n(extra.tokens),
            ":dc": _n(extra.micros),
            ":ht": _n(hold.tokens),
            ":hc": _n(hold.micros),
            ":period": {"S": account.period},
            ":owner": {"S": account.owner},
            ":exp": _n(expires_at),
        }
        sets = [
            "#rt = :ht",
            "#rc = :hc",
            "#period = :period",
            "#owner = :owner",
            "expires_at = :exp",
        ]
        names.update({"#period": "period", "#owner": "owner"})
        if account.window == "day":
            # The by-day index lets the aggregator reconcile a day's settled counters.
            sets.append("#day = :period")
            names["#day"] = "day"
        adds = ["#tokens :dt", "#cost :dc", "reserved_tokens :dt", "reserved_micros :dc"]
        removes: list[str] = []
        if previous is None:
            names["#rx"] = _released_name(request_id)
            conditions = ["attribute_not_exists(#rt)", "attribute_not_exists(#rx)"]
        else:
            conditions = ["#rt = :pt", "#rc = :pc"]
            values.update({":pt": _n(previous.tokens), ":pc": _n(previous.micros)})
        if limits.tokens is not None:
            conditions.append("(attribute_not_exists(#tokens) OR #tokens <= :tmax)")
            values[":tmax"] = _n(limits.tokens - extra.tokens)
        if limits.cost_micros is not None:
            conditions.append("(attribute_not_exists(#cost) OR #cost <= :cmax)")
            values[":cmax"] = _n(limits.cost_micros - extra.micros)
        if rate is not None:
            # The minute's count lives on the user's day item: one write admits both.
            names.update({"#rate": f"rate_{rate.window}", "#previous": f"rate_{rate.previous}"})
            values.update({":one": _n(1), ":rate_max": _n(rate.limit)})
            adds.append("#rate :one")
            removes.append("#previous")
            conditions.append("(attribute_not_exists(#rate) OR #rate < :rate_max)")
        update = f"SET {', '.join(sets)} ADD {', '.join(adds)}"
        if removes:
            update += f" REMOVE {', '.join(removes)}"
        try:
            response = await self._table.call(
                "UpdateItem",
                Key=budget_key(account),
                UpdateExpression=update,
                ConditionExpression=" AND ".join(conditions),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            old = item_on_failure(exc) or {}
            if _hold_in(old, request_id) == hold:
                # a retried write that had landed
                return _counters(account.period, old, retried=True)
            if (
                rate is not None
                and int(old.get(f"rate_{rate.window}", {}).get("N", 0)) >= rate.limit
            ):
                raise RateWindowFull from exc
            return None
        return _counters(account.period, response["Attributes"], retried=_retried(response))

    async def _close_hold(
        self,
        account: Account,
        request_id: str,
        held: Amount,
        charged: Amount,
        *,
        count: bool,
    ) -> BudgetCounters | None:
        """Remove the hold and add the charge in its place, only if the hold is still open."""
        adds = "ADD #tokens :dt, #cost :dc, reserved_tokens :rt, reserved_micros :rc"
        names = {"#tokens": "tokens", "#cost": "cost_micros", **_hold_names(request_id)}
        values = {
            ":dt": _n(charged.tokens - held.tokens),
            ":dc": _n(charged.micros - held.micros),
            ":rt": _n(-held.tokens),
            ":rc": _n(-held.micros),
            ":ht": _n(held.tokens),
            ":hc": _n(held.micros),
        }
        if count:
            values[":one"] = _n(1)
            adds += ", requests :one"
        try:
            response = await self._table.call(
                "UpdateItem",
                Key=budget_key(account),
                UpdateExpression=f"{adds} REMOVE #rt, #rc",
                ConditionExpression="#rt = :ht AND #rc = :hc",
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return None  # closed already: a retry must not count twice
            raise
        return _counters(account.period, response["Attributes"])

    async def settle(
        self,
        account: Account,
        request_id: str,
        held: Amount,
        actual: Amount,
        *,
        bar_late_writes: bool = False,
    ) -> BudgetCounters | None:
        if bar_late_writes:
            await self._bar(account, request_id)
        return await self._close_hold(account, request_id, held, actual, count=True)

    async def release(
        self, account: Account, request_id: str, held: Amount, *, bar_late_writes: bool = False
    ) -> None:
        if bar_late_writes:
            await self._bar(account, request_id)
        await self._close_hold(account, request_id, held, Amount(0, 0), count=False)

    async def _bar(self, account: Account, request_id: str) -> None:
        """Mark the request closed before closing its hold: no late write can land after."""
        await self._table.call(
            "UpdateItem",
            Key=budget_key(account),
            UpdateExpression="SET #rx = :one",
            ExpressionAttributeNames={"#rx": _released_name(request_id)},
            ExpressionAttributeValues={":one": _n(1)},
        )

    async def counters(self, account: Account) -> BudgetCounters:
        response = await self._table.call("GetItem", Key=budget_key(account), ConsistentRead=True)
        return _counters(account.period, response.get("Item"))

    async def count_rate(
        self, account: Account, request_id: str, rate: RateWindow, expires_at: int
    ) -> None:
        # `rate_counted` names the last request counted this way: a retried write that
        # had landed finds its own id there and adds nothing.
        names = {
            "#rate": f"rate_{rate.window}",
            "#previous": f"rate_{rate.previous}",
            "#period": "period",
            "#owner": "owner",
        }
        values = {
            ":one": _n(1),
            ":rate_max": _n(rate.limit),
            ":rid": {"S": request_id},
            ":period": {"S": account.period},
            ":owner": {"S": account.owner},
            ":exp": _n(expires_at),
        }
        sets = ["rate_counted = :rid", "#period = :period", "#owner = :owner", "expires_at = :exp"]
        if account.window == "day":
            sets.append("#day = :period")
            names["#day"] = "day"
        try:
            await self._table.call(
                "UpdateItem",
                Key=budget_key(account),
                UpdateExpression=f"SET {', '.join(sets)} ADD #rate :one REMOVE #previous",
                ConditionExpression=(
                    "(attribute_not_exists(#rate) OR #rate < :rate_max)"
                    " AND (attribute_not_exists(rate_counted) OR rate_counted <> :rid)"
                ),
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=values,
                ReturnValuesOnConditionCheckFailure="ALL_OLD",
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            old = item_on_failure(exc) or {}
            if old.get("rate_counted", {}).get("S") == request_id:
                return  # a retried write that had landed
            raise RateWindowFull from exc


class DynamoRequestRegistry:
    """`REQ#<id>` items in the usage table, written only when a cancel is asked for."""

    def __init__(self, table_name: str, db: AsyncDynamoDB | None = None) -> None:
        self._table = _Table(table_name, db)

    async def signal_cancel(self, request_id: str, expires_at: int) -> None:
        await self._table.call(
            "PutItem",
            Item={
                **request_key(request_id),
                "cancel_at": _n(int(time.time())),
                "expires_at": _n(expires_at),
            },
        )

    async def is_cancelled(self, request_id: str) -> bool:
        response = await self._table.call(
            "GetItem",
            Key=request_key(request_id),
            ConsistentRead=True,
            ProjectionExpression="cancel_at",
        )
        return "cancel_at" in response.get("Item", {})
