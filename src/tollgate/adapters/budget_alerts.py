"""Team and global budget alerts: the BudgetUtilizationPercent metric, and one notification
per threshold (80 %, 100 %) per window to the alarm SNS topic.

Once-ness across every instance comes from a conditional PutItem in the usage table
(`ALERT#<scope>#<owner>` / `<WINDOW>#<period>#<threshold>`, TTL `expires_at`): only the
instance whose put created the item publishes. If the publish then fails, the item is
deleted again so that a later settlement retries the notification.

The global scope is split over shards that fill evenly (each request picks one at random),
so one shard's use of its share stands for the window's. Its alert items are keyed by the
window with owner `all`, not by the shard: the first shard to pass a threshold notifies for
all of them.

Utilisation counts what admission counts: settled charges plus open holds. Admission never
lets that pass the limit, so 100 % means the window is full to its last reservation (or a
settlement came out above its hold); a window can refuse requests a little below 100 %, when
its room is smaller than one reservation.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import BotoCoreError, ClientError

from tollgate.adapters.aws import aws_client, is_condition_failure, request_profile, run_blocking
from tollgate.adapters.budget_keys import WINDOW_PREFIX
from tollgate.adapters.dynamodb_http import AsyncDynamoDB, shared_dynamodb
from tollgate.budget import expires_at
from tollgate.observability import CostRecorder
from tollgate.ports import Account, BudgetCounters, Limits
from tollgate.pricing import micros_to_usd

if TYPE_CHECKING:
    from mypy_boto3_sns import SNSClient

THRESHOLDS = (80, 100)
GLOBAL_OWNER = "all"
# Thresholds this process knows are notified already: skips a write that would fail anyway.
# Bounded: past this many entries the memory is dropped (the table still says no).
MAX_REMEMBERED = 10_000


def utilization_percent(limits: Limits, counters: BudgetCounters) -> float | None:
    """The largest share of a limit in use, in percent; None when no unit has a limit."""
    shares = [
        100.0 if limit == 0 else 100.0 * used / limit
        for used, limit in (
            (counters.tokens, limits.tokens),
            (counters.cost_micros, limits.cost_micros),
        )
        if limit is not None
    ]
    return max(shares) if shares else None


def alert_owner(account: Account) -> str:
    return GLOBAL_OWNER if account.scope == "global" else account.owner


def alert_key(account: Account, threshold: int) -> dict[str, Any]:
    return {
        "pk": {"S": f"ALERT#{account.scope}#{alert_owner(account)}"},
        "sk": {"S": f"{WINDOW_PREFIX[account.window]}#{account.period}#{threshold}"},
    }


class AlertLatch:
    """One item per (scope, owner, window, threshold): the first writer wins."""

    def __init__(self, table_name: str, db: AsyncDynamoDB | None = None) -> None:
        self._table = table_name
        self._db = db or shared_dynamodb()

    async def take(self, account: Account, threshold: int) -> bool:
        """True if this call created the item (and so must notify)."""
        try:
            await self._db.call(
                "PutItem",
                {
                    "TableName": self._table,
                    "Item": {
                        **alert_key(account, threshold),
                        "expires_at": {"N": str(expires_at(account))},
                    },
                    "ConditionExpression": "attribute_not_exists(pk)",
                },
            )
        except ClientError as exc:
            if is_condition_failure(exc):
                return False
            raise
        return True

    async def give_back(self, account: Account, threshold: int) -> None:
        await self._db.call(
            "DeleteItem", {"TableName": self._table, "Key": alert_key(account, threshold)}
        )


class SnsNotifier:
    def __init__(self, topic_arn: str, client: SNSClient | None = None) -> None:
        self._topic_arn = topic_arn
        self._client = client or cast("SNSClient", aws_client("sns", request_profile()))

    async def notify(self, subject: str, message: dict[str, Any]) -> None:
        await run_blocking(
            self._client.publish,
            TopicArn=self._topic_arn,
            Subject=subject,
            Message=json.dumps(message, indent=2),
        )


class BudgetAlertNotifier:
    """The BudgetAlerts of the chat function (tollgate.ports)."""

    def __init__(self, latch: AlertLatch, notifier: SnsNotifier, recorder: CostRecorder) -> None:
        self._latch = latch
        self._notifier = notifier
        self._recorder = recorder
        self._notified: set[tuple[Account, int]] = set()

    async def observe(self, account: Account, limits: Limits, counters: BudgetCounters) -> None:
        percent = utilization_percent(limits, counters)
        if percent is None or account.scope == "user":
            return
        self._recorder.budget_utilization(account.scope, round(percent, 2))
        window = Account(account.scope, alert_owner(account), account.window, account.period)
        for threshold in THRESHOLDS:
            if percent < threshold or (window, threshold) in self._notified:
                continue
            try:
                await self._notify_once(account, threshold, percent, limits, counters)
            except (ClientError, BotoCoreError) as exc:
                self._recorder.warning(
                    "budget_alert_failed",
                    scope=account.scope,
                    owner=alert_owner(account),
                    window=account.window,
                    period=account.period,
                    threshold_percent=threshold,
                    error=repr(exc),
                )
                return
            if len(self._notified) >= MAX_REMEMBERED:
                self._notified.clear()
            self._notified.add((window, threshold))

    async def _notify_once(
        self,
        account: Account,
        threshold: int,
        percent: float,
        limits: Limits,
        counters: BudgetCounters,
    ) -> None:
        if not await self._latch.take(account, threshold):
            return
        try:
            await self._notifier.notify(
                # SNS subjects are ASCII: the owner (any team id) is in the message only.
                f"Tollgate budget: {account.scope} {account.window} {account.period} "
                f"passed {threshold}%",
                alert_message(account, threshold, percent, limits, counters),
            )
        except Exception:
            await self._latch.give_back(account, threshold)
            raise


def alert_message(
    account: Account, threshold: int, percent: float, limits: Limits, counters: BudgetCounters
) -> dict[str, Any]:
    message: dict[str, Any] = {
        "scope": account.scope,
        "owner": alert_owner(account),
        "window": account.window,
        "period": account.period,
        "threshold_percent": threshold,
        "utilization_percent": round(percent, 2),
        "tokens_used": counters.tokens,
        "token_limit": limits.tokens,
        "cost_used_usd": micros_to_usd(counters.cost_micros),
        "cost_limit_usd": None if limits.cost_micros is None else micros_to_usd(limits.cost_micros),
    }
    if account.scope == "global":
        # Figures of the shard that passed the threshold, against its share of the limit.
        message["shard"] = account.owner
    return message
