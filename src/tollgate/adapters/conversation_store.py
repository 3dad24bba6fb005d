"""DynamoDB conversation store: metadata, turns, summaries and the one-turn-at-a-time lease.

Items (table keys `pk`, `sk`; TTL attribute `expires_at`, epoch seconds):

    CONV#<id>  META         owner, created_at, total_tokens, turn_count, summary,
                            summary_through_turn, summary_tokens, lease_request,
                            lease_until, last_active, expires_at, turns_expire_at
    CONV#<id>  TURN#000001  the Turn fields (cost as integer cost_micros), expires_at

Expiry. META is the conversation's only liveness record: it expires `ttl_days` after
the last committed turn, and every read checks its `expires_at` itself (TTL deletes
lazily). Turn items are garbage for TTL to collect once META is gone, so they only
need to outlive META, never to match it. Each turn is written with twice the idle
expiry, META keeps the earliest turn expiry in `turns_expire_at`, and when that
comes closer than one idle period (plus a day of slack for the turn in flight),
`begin_turn` pushes every turn's expiry out again — once per ~`ttl_days` of
activity, not on every turn. Hence turns always outlive META: a conversation is
shown whole or not at all, and its turns are gone at most `ttl_days` after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from botocore.exceptions import ClientError

from tollgate.adapters.aws import as_unavailable, is_condition_failure, item_on_failure
from tollgate.adapters.conversation_items import (
    LAST_TURN_KEY,
    META,
    attr_n,
    attr_s,
    cancelled_by_condition,
    conversation_key,
    int_of,
    meta_is_live,
    meta_update,
    new_meta_put,
    str_of,
    turn_expiry,
    turn_from_item,
    turn_key,
)
from tollgate.adapters.dynamodb_http import AsyncDynamoDB, shared_dynamodb
from tollgate.conversations import (
    epoch,
    is_conversation_id,
    iso_utc,
    new_conversation,
)
from tollgate.errors import ConversationLimit, DependencyUnavailable, NotFound, TurnConflict
from tollgate.ports import ConversationState, ConversationView, Turn

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        TransactWriteItemTypeDef,
        WriteRequestTypeDef,
    )

    Item = Mapping[str, AttributeValueTypeDef]

# Turns outlive META by construction; this slack covers the turn in flight between
# begin_turn (which refreshes turn expiry) and commit_turn (which extends META's).
TURN_EXPIRY_SLACK = timedelta(days=1)
BATCH_WRITE_LIMIT = 25
# Turns read with the lease in one round trip; the hysteresis keeps fewer unsummarised.
RECENT_TURNS = 48
UNPROCESSED_RETRIES = 8


class DynamoConversationStore:
    def __init__(self, table_name: str, db: AsyncDynamoDB | None = None, *, ttl_days: int) -> None:
        self._table = table_name
        self._db = db or shared_dynamodb()
        self._ttl = timedelta(days=ttl_days)

    # ------------------------------------------------------------ plumbing

    async def _call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        """One DynamoDB call; outages become DependencyUnavailable."""
        try:
            return await self._db.call(operation, params)
        except Exception as exc:
            unavailable = as_unavailable(exc)
            if unavailable is not None:
                raise unavailable from exc
            raise

    async def _complete_turns(
        self,
        conversation_id: str,
        newest: list[dict[str, AttributeValueTypeDef]],
        summary_through_turn: int,
        turn_count: int,
    ) -> list[dict[str, AttributeValueTypeDef]]:
        """The turns after the summary, oldest first, from a newest-first page plus gaps."""
        by_turn = {
            turn: item
            for item in newest
            if summary_through_turn < (turn := int_of(item, "turn")) <= turn_count
        }
        # Older unsummarised turns than one page holds (many tiny turns), or a turn
        # committed between the query and the lease: read what is missing.
        missing = [t for t in range(summary_through_turn + 1, turn_count + 1) if t not in by_turn]
        if missing:
            for item in await self._query_turns(
                conversation_id, after_turn=missing[0] - 1, through_turn=missing[-1]
            ):
                by_turn.setdefault(int_of(item, "turn"), item)
        return [by_turn[turn] for turn in sorted(by_turn)]

    async def _query_turns(
        self,
        conversation_id: str,
        after_turn: int = 0,
        *,
        through_turn: int | None = None,
        keys_only: bool = False,
        newest_first: int | None = None,
    ) -> list[dict[str, AttributeValueTypeDef]]:
        """Turn items in order, or only the `newest_first` most recent ones, newest first."""
        items: list[dict[str, AttributeValueTypeDef]] = []
        last = LAST_TURN_KEY if through_turn is None else turn_key(through_turn)
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :first AND :last",
            "ExpressionAttributeValues": {
                ":pk": attr_s(f"CONV#{conversation_id}"),
                ":first": attr_s(turn_key(after_turn + 1)),
                ":last": attr_s(last),
            },
            "ConsistentRead": True,  # the turn committed just before must be in the next prompt
        }
        if keys_only:
            request["ProjectionExpression"] = "pk, sk"
        if newest_first is not None:
            request.update(ScanIndexForward=False, Limit=newest_first)
            page = await self._call("Query", request)
            return list(page.get("Items", []))
        while True:
            page = await self._call("Query", request)
            items.extend(page.get("Items", []))
            last_key = page.get("LastEvaluatedKey")
            if not last_key:
                return items
            request["ExclusiveStartKey"] = last_key

    async def _live_meta(
        self, conversation_id: str, user_id: str, now: datetime
    ) -> dict[str, AttributeValueTypeDef]:
        if not is_conversation_id(conversation_id):
            raise NotFound("conversation not found")
        response = await self._call(
            "GetItem",
            {
                "TableName": self._table,
                "Key": conversation_key(conversation_id, META),
                "ConsistentRead": True,
            },
        )
        meta: dict[str, AttributeValueTypeDef] | None = response.get("Item")
        if meta is None or not meta_is_live(meta, user_id, now):
            raise NotFound("conversation not found")
        return meta

    # ------------------------------------------------------------ turns

    async def begin_turn(
        self,
        conversation_id: str | None,
        user_id: str,
        request_id: str,
        *,
        lease_until: datetime,
        token_limit: int,
        now: datetime,
    ) -> ConversationState:
        if conversation_id is None:
            return new_conversation(user_id, now)
        if not is_conversation_id(conversation_id):
            raise NotFound("conversation not found")
        # The lease and the newest turns in one round trip; the turns are checked against
        # the metadata the lease returned (a commit may have landed in between).
        leased, newest = await asyncio.gather(
            self._take_lease(conversation_id, user_id, request_id, lease_until, token_limit, now),
            self._query_turns(conversation_id, newest_first=RECENT_TURNS),
            return_exceptions=True,
        )
        if isinstance(leased, BaseException):
            raise leased
        meta = leased
        summary_through_turn = int_of(meta, "summary_through_turn")
        try:
            if isinstance(newest, BaseException):
                raise newest
            await self._keep_turns_alive(conversation_id, request_id, meta, now)
            turn_items = await self._complete_turns(
                conversation_id, newest, summary_through_turn, int_of(meta, "turn_count")
            )
        except BaseException:
            # without this, a failed load would block the conversation until the lease ends
            with contextlib.suppress(Exception):
                await self._release(conversation_id, request_id)
            raise
        summary = str_of(meta, "summary") or None
        return ConversationState(
            conversation_id=conversation_id,
            owner=user_id,
            is_new=False,
            created_at=str_of(meta, "created_at"),
            total_tokens=int_of(meta, "total_tokens"),
            turn_count=int_of(meta, "turn_count"),
            summary=summary,
            summary_through_turn=summary_through_turn,
            summary_tokens=int_of(meta, "summary_tokens") if summary else 0,
            turns=[turn_from_item(item) for item in turn_items],
        )

    async def _take_lease(
        self,
        conversation_id: str,
        user_id: str,
        request_id: str,
        lease_until: datetime,
        token_limit: int,
        now: datetime,
    ) -> dict[str, AttributeValueTypeDef]:
        try:
            response = await self._call(
                "UpdateItem",
                {
                    "TableName": self._table,
                    "Key": conversation_key(conversation_id, META),
                    "UpdateExpression": "SET lease_request = :rid, lease_until = :until",
                    "ConditionExpression": (
                        "#owner = :user AND expires_at > :now AND total_tokens < :limit"
                        # conversations.lease_is_free
                        " AND (attribute_not_exists(lease_until) OR lease_until < :now"
                        " OR lease_request = :rid)"
                    ),
                    "ExpressionAttributeNames": {"#owner": "owner"},
                    "ExpressionAttributeValues": {
                        ":rid": attr_s(request_id),
                        ":until": attr_n(lease_until.timestamp()),
                        ":user": attr_s(user_id),
                        ":now": attr_n(now.timestamp()),
                        ":limit": attr_n(token_limit),
                    },
                    "ReturnValues": "ALL_NEW",
                    "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
                },
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            old = item_on_failure(exc)
            if old is None or not meta_is_live(old, user_id, now):
                raise NotFound("conversation not found") from exc
            if int_of(old, "total_tokens") >= token_limit:
                raise ConversationLimit(
                    "this conversation has reached its size limit; start a new one"
                ) from exc
            raise TurnConflict("another turn of this conversation is in progress") from exc
        attributes: dict[str, AttributeValueTypeDef] = response["Attributes"]
        return attributes

    async def _keep_turns_alive(
        self, conversation_id: str, request_id: str, meta: Item, now: datetime
    ) -> None:
        """Push the turns' expiry out when META, refreshed by this turn, could outlive them."""
        turns_expire_at = int_of(meta, "turns_expire_at")
        if int_of(meta, "turn_count") == 0 or turns_expire_at >= epoch(
            now + self._ttl + TURN_EXPIRY_SLACK
        ):
            return
        new_expiry = turn_expiry(now, self._ttl)
        keys = await self._query_turns(conversation_id, keys_only=True)

        async def refresh(key: dict[str, AttributeValueTypeDef]) -> None:
            try:
                await self._call(
                    "UpdateItem",
                    {
                        "TableName": self._table,
                        "Key": {"pk": key["pk"], "sk": key["sk"]},
                        "UpdateExpression": "SET expires_at = :expires",
                        # never recreate a turn that a concurrent DELETE removed
                        "ConditionExpression": "attribute_exists(pk)",
                        "ExpressionAttributeValues": {":expires": attr_n(new_expiry)},
                    },
                )
            except ClientError as exc:
                if not is_condition_failure(exc):
                    raise

        await asyncio.gather(*(refresh(key) for key in keys))
        try:
            await self._call(
                "UpdateItem",
                {
                    "TableName": self._table,
                    "Key": conversation_key(conversation_id, META),
                    "UpdateExpression": "SET turns_expire_at = :expires",
                    "ConditionExpression": "lease_request = :rid",
                    "ExpressionAttributeValues": {
                        ":expires": attr_n(new_expiry),
                        ":rid": attr_s(request_id),
                    },
                },
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            # deleted meanwhile: the commit will fail on the same condition

    async def release_turn(self, state: ConversationState, request_id: str) -> None:
        if not state.is_new:
            await self._release(state.conversation_id, request_id)

    async def _release(self, conversation_id: str, request_id: str) -> None:
        try:
            await self._call(
                "UpdateItem",
                {
                    "TableName": self._table,
                    "Key": conversation_key(conversation_id, META),
                    "UpdateExpression": "REMOVE lease_request, lease_until",
                    "ConditionExpression": "lease_request = :rid",
                    "ExpressionAttributeValues": {":rid": attr_s(request_id)},
                },
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise

    async def commit_turn(
        self,
        state: ConversationState,
        request_id: str,
        turn: Turn,
        *,
        now: datetime,
        release_lease: bool,
    ) -> bool:
        tokens = turn.input_tokens + turn.output_tokens
        turn_put: TransactWriteItemTypeDef = {
            "Put": {
                "TableName": self._table,
                "Item": {
                    **conversation_key(state.conversation_id, turn_key(turn.turn)),
                    "turn": attr_n(turn.turn),
                    "user": attr_s(turn.user),
                    "assistant": attr_s(turn.assistant),
                    "model": attr_s(turn.model),
                    "input_tokens": attr_n(turn.input_tokens),
                    "output_tokens": attr_n(turn.output_tokens),
                    "cost_micros": attr_n(turn.cost_micros),
                    "created_at": attr_s(turn.created_at),
                    "history_tokens": attr_n(turn.history_tokens),
                    "request_id": attr_s(request_id),
                    "expires_at": attr_n(turn_expiry(now, self._ttl)),
                },
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        meta_write = (
            new_meta_put(
                self._table, self._ttl, state, request_id, turn, tokens, now, release_lease
            )
            if state.is_new
            else meta_update(self._table, self._ttl, state, request_id, tokens, now, release_lease)
        )
        try:
            await self._call("TransactWriteItems", {"TransactItems": [meta_write, turn_put]})
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            if not cancelled_by_condition(exc):
                # a TransactionConflict with a concurrent write, or throttling: retry shortly
                raise DependencyUnavailable("the database is busy", retry_after=1) from exc
            # The client resends a transaction whose answer was lost. DynamoDB answers the resend
            # from its ClientRequestToken (kept across retries); a server that does
            # not (moto: the local run) refuses it on the conditions our first try changed.
            # The turn item says whether this request's commit landed.
            return await self._committed_by(state.conversation_id, turn.turn, request_id)
        return True

    async def _committed_by(self, conversation_id: str, turn: int, request_id: str) -> bool:
        response = await self._call(
            "GetItem",
            {
                "TableName": self._table,
                "Key": conversation_key(conversation_id, turn_key(turn)),
                "ConsistentRead": True,
                "ProjectionExpression": "request_id",
            },
        )
        item = response.get("Item")
        return item is not None and str_of(item, "request_id") == request_id

    async def save_summary(
        self,
        state: ConversationState,
        request_id: str,
        *,
        summary: str,
        through_turn: int,
        summary_tokens: int,
        charged_tokens: int,
        now: datetime,
    ) -> bool:
        try:
            await self._call(
                "UpdateItem",
                {
                    "TableName": self._table,
                    "Key": conversation_key(state.conversation_id, META),
                    "UpdateExpression": (
                        "SET summary = :summary, summary_through_turn = :through,"
                        " summary_tokens = :summary_tokens, last_active = :now"
                        " ADD total_tokens :charged REMOVE lease_request, lease_until"
                    ),
                    "ConditionExpression": "lease_request = :rid",
                    "ExpressionAttributeValues": {
                        ":summary": attr_s(summary),
                        ":through": attr_n(through_turn),
                        ":summary_tokens": attr_n(summary_tokens),
                        ":charged": attr_n(charged_tokens),
                        ":now": attr_s(iso_utc(now)),
                        ":rid": attr_s(request_id),
                    },
                },
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            return False
        return True

    # ------------------------------------------------------------ reads and deletes

    async def get(self, conversation_id: str, user_id: str, now: datetime) -> ConversationView:
        meta = await self._live_meta(conversation_id, user_id, now)
        turn_items = await self._query_turns(conversation_id)
        summary = str_of(meta, "summary") or None
        return ConversationView(
            conversation_id=conversation_id,
            created_at=str_of(meta, "created_at"),
            total_tokens=int_of(meta, "total_tokens"),
            summary=summary,
            summary_through_turn=int_of(meta, "summary_through_turn"),
            turns=[turn_from_item(item) for item in turn_items],
        )

    async def delete(self, conversation_id: str, user_id: str) -> None:
        if not is_conversation_id(conversation_id):
            raise NotFound("conversation not found")
        now = datetime.now(UTC)
        try:
            # META first: an in-flight commit is conditioned on it and fails from here on.
            await self._call(
                "DeleteItem",
                {
                    "TableName": self._table,
                    "Key": conversation_key(conversation_id, META),
                    "ConditionExpression": "#owner = :user AND expires_at > :now",
                    "ExpressionAttributeNames": {"#owner": "owner"},
                    "ExpressionAttributeValues": {
                        ":user": attr_s(user_id),
                        ":now": attr_n(now.timestamp()),
                    },
                },
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            raise NotFound("conversation not found") from exc
        keys = await self._query_turns(conversation_id, keys_only=True)
        for start in range(0, len(keys), BATCH_WRITE_LIMIT):
            batch: list[WriteRequestTypeDef] = [
                {"DeleteRequest": {"Key": {"pk": key["pk"], "sk": key["sk"]}}}
                for key in keys[start : start + BATCH_WRITE_LIMIT]
            ]
            await self._batch_delete(batch)

    async def _batch_delete(self, requests: list[WriteRequestTypeDef]) -> None:
        pending: Sequence[WriteRequestTypeDef] = requests
        for attempt in range(UNPROCESSED_RETRIES):
            response = await self._call("BatchWriteItem", {"RequestItems": {self._table: pending}})
            unprocessed = response.get("UnprocessedItems", {}).get(self._table, [])
            pending = cast("list[WriteRequestTypeDef]", unprocessed)  # same shape, output type
            if not pending:
                return
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        # Left to TTL: the META is already gone, so no read can see these turns.
        raise DependencyUnavailable("could not delete every turn", retry_after=1)
