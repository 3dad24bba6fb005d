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
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar, cast

from botocore.exceptions import ClientError

from tollgate.adapters.aws import (
    as_unavailable,
    blocking_executor,
    dynamodb_client,
    is_condition_failure,
    item_on_failure,
)
from tollgate.conversations import (
    epoch,
    idle_expiry,
    is_conversation_id,
    is_live,
    iso_utc,
    new_conversation,
    summary_lease_until,
)
from tollgate.errors import ConversationLimit, DependencyUnavailable, NotFound, TurnConflict
from tollgate.ports import ConversationState, ConversationView, Turn

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_dynamodb.type_defs import (
        AttributeValueTypeDef,
        TransactWriteItemTypeDef,
        WriteRequestTypeDef,
    )

    Item = Mapping[str, AttributeValueTypeDef]

T = TypeVar("T")

META = "META"
TURN_PREFIX = "TURN#"
LAST_TURN_KEY = f"{TURN_PREFIX}999999"

# Turns outlive META by construction; this slack covers the turn in flight between
# begin_turn (which refreshes turn expiry) and commit_turn (which extends META's).
TURN_EXPIRY_SLACK = timedelta(days=1)
BATCH_WRITE_LIMIT = 25
# Turns read with the lease in one round trip; the hysteresis keeps fewer unsummarised.
RECENT_TURNS = 48
UNPROCESSED_RETRIES = 8


def _s(value: str) -> AttributeValueTypeDef:
    return {"S": value}


def _n(value: float) -> AttributeValueTypeDef:
    return {"N": str(value)}


def _str(item: Item, name: str, default: str = "") -> str:
    value = item.get(name)
    return value["S"] if value is not None and "S" in value else default


def _int(item: Item, name: str, default: int = 0) -> int:
    value = item.get(name)
    return int(float(value["N"])) if value is not None and "N" in value else default


def _turn_key(turn: int) -> str:
    return f"{TURN_PREFIX}{turn:06d}"


def _turn_from_item(item: Item) -> Turn:
    return Turn(
        turn=_int(item, "turn"),
        user=_str(item, "user"),
        assistant=_str(item, "assistant"),
        model=_str(item, "model"),
        input_tokens=_int(item, "input_tokens"),
        output_tokens=_int(item, "output_tokens"),
        cost_micros=_int(item, "cost_micros"),
        created_at=_str(item, "created_at"),
        history_tokens=_int(item, "history_tokens"),
    )


def _is_live(meta: Item | None, user_id: str, now: datetime) -> bool:
    return meta is not None and is_live(_str(meta, "owner"), _int(meta, "expires_at"), user_id, now)


def _cancelled_by_condition(exc: ClientError) -> bool:
    reasons = exc.response.get("CancellationReasons", [])
    return any(reason.get("Code") == "ConditionalCheckFailed" for reason in reasons)


class DynamoConversationStore:
    def __init__(
        self,
        table_name: str,
        client: DynamoDBClient | None = None,
        *,
        ttl_days: int,
        executor: Executor | None = None,
    ) -> None:
        self._table = table_name
        self._client = client or dynamodb_client()
        self._ttl = timedelta(days=ttl_days)
        self._executor = executor or blocking_executor()

    # ------------------------------------------------------------ plumbing

    def _turn_expiry(self, now: datetime) -> int:
        return epoch(now + 2 * self._ttl)

    async def _call(self, call: Callable[[], T]) -> T:
        """Run one blocking boto3 call in the executor; outages become DependencyUnavailable."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, call)
        except Exception as exc:
            unavailable = as_unavailable(exc)
            if unavailable is not None:
                raise unavailable from exc
            raise

    def _key(self, conversation_id: str, sk: str) -> dict[str, AttributeValueTypeDef]:
        return {"pk": _s(f"CONV#{conversation_id}"), "sk": _s(sk)}

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
            if summary_through_turn < (turn := _int(item, "turn")) <= turn_count
        }
        # Older unsummarised turns than one page holds (many tiny turns), or a turn
        # committed between the query and the lease: read what is missing.
        missing = [t for t in range(summary_through_turn + 1, turn_count + 1) if t not in by_turn]
        if missing:
            for item in await self._query_turns(
                conversation_id, after_turn=missing[0] - 1, through_turn=missing[-1]
            ):
                by_turn.setdefault(_int(item, "turn"), item)
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
        last = LAST_TURN_KEY if through_turn is None else _turn_key(through_turn)
        request: dict[str, Any] = {
            "TableName": self._table,
            "KeyConditionExpression": "pk = :pk AND sk BETWEEN :first AND :last",
            "ExpressionAttributeValues": {
                ":pk": _s(f"CONV#{conversation_id}"),
                ":first": _s(_turn_key(after_turn + 1)),
                ":last": _s(last),
            },
            "ConsistentRead": True,  # the turn committed just before must be in the next prompt
        }
        if keys_only:
            request["ProjectionExpression"] = "pk, sk"
        if newest_first is not None:
            request.update(ScanIndexForward=False, Limit=newest_first)
            page = await self._call(lambda: self._client.query(**request))
            return list(page.get("Items", []))
        while True:
            page = await self._call(lambda: self._client.query(**request))
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
            lambda: self._client.get_item(
                TableName=self._table, Key=self._key(conversation_id, META), ConsistentRead=True
            )
        )
        meta = response.get("Item")
        if meta is None or not _is_live(meta, user_id, now):
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
        summary_through_turn = _int(meta, "summary_through_turn")
        try:
            if isinstance(newest, BaseException):
                raise newest
            await self._keep_turns_alive(conversation_id, request_id, meta, now)
            turn_items = await self._complete_turns(
                conversation_id, newest, summary_through_turn, _int(meta, "turn_count")
            )
        except BaseException:
            # without this, a failed load would block the conversation until the lease ends
            with contextlib.suppress(Exception):
                await self._release(conversation_id, request_id)
            raise
        summary = _str(meta, "summary") or None
        return ConversationState(
            conversation_id=conversation_id,
            owner=user_id,
            is_new=False,
            created_at=_str(meta, "created_at"),
            total_tokens=_int(meta, "total_tokens"),
            turn_count=_int(meta, "turn_count"),
            summary=summary,
            summary_through_turn=summary_through_turn,
            summary_tokens=_int(meta, "summary_tokens") if summary else 0,
            turns=[_turn_from_item(item) for item in turn_items],
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
                lambda: self._client.update_item(
                    TableName=self._table,
                    Key=self._key(conversation_id, META),
                    UpdateExpression="SET lease_request = :rid, lease_until = :until",
                    ConditionExpression=(
                        "#owner = :user AND expires_at > :now AND total_tokens < :limit"
                        # conversations.lease_is_free
                        " AND (attribute_not_exists(lease_until) OR lease_until < :now"
                        " OR lease_request = :rid)"
                    ),
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={
                        ":rid": _s(request_id),
                        ":until": _n(lease_until.timestamp()),
                        ":user": _s(user_id),
                        ":now": _n(now.timestamp()),
                        ":limit": _n(token_limit),
                    },
                    ReturnValues="ALL_NEW",
                    ReturnValuesOnConditionCheckFailure="ALL_OLD",
                )
            )
        except ClientError as exc:
            if not is_condition_failure(exc):
                raise
            old = item_on_failure(exc)
            if old is None or not _is_live(old, user_id, now):
                raise NotFound("conversation not found") from exc
            if _int(old, "total_tokens") >= token_limit:
                raise ConversationLimit(
                    "this conversation has reached its size limit; start a new one"
                ) from exc
            raise TurnConflict("another turn of this conversation is in progress") from exc
        return response["Attributes"]

    async def _keep_turns_alive(
        self, conversation_id: str, request_id: str, meta: Item, now: datetime
    ) -> None:
        """Push the turns' expiry out when META, refreshed by this turn, could outlive them."""
        turns_expire_at = _int(meta, "turns_expire_at")
        if _int(meta, "turn_count") == 0 or turns_expire_at >= epoch(
            now + self._ttl + TURN_EXPIRY_SLACK
        ):
            return
        new_expiry = self._turn_expiry(now)
        keys = await self._query_turns(conversation_id, keys_only=True)

        async def refresh(key: dict[str, AttributeValueTypeDef]) -> None:
            try:
                await self._call(
                    lambda: self._client.update_item(
                        TableName=self._table,
                        Key={"pk": key["pk"], "sk": key["sk"]},
                        UpdateExpression="SET expires_at = :expires",
                        # never recreate a turn that a concurrent DELETE removed
                        ConditionExpression="attribute_exists(pk)",
                        ExpressionAttributeValues={":expires": _n(new_expiry)},
                    )
                )
            except ClientError as exc:
                if not is_condition_failure(exc):
                    raise

        await asyncio.gather(*(refresh(key) for key in keys))
        try:
            await self._call(
                lambda: self._client.update_item(
                    TableName=self._table,
                    Key=self._key(conversation_id, META),
                    UpdateExpression="SET turns_expire_at = :expires",
                    ConditionExpression="lease_request = :rid",
                    ExpressionAttributeValues={
                        ":expires": _n(new_expiry),
                        ":rid": _s(request_id),
                    },
                )
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
                lambda: self._client.update_item(
                    TableName=self._table,
                    Key=self._key(conversation_id, META),
                    UpdateExpression="REMOVE lease_request, lease_until",
                    ConditionExpression="lease_request = :rid",
                    ExpressionAttributeValues={":rid": _s(request_id)},
                )
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
                    **self._key(state.conversation_id, _turn_key(turn.turn)),
                    "turn": _n(turn.turn),
                    "user": _s(turn.user),
                    "assistant": _s(turn.assistant),
                    "model": _s(turn.model),
                    "input_tokens": _n(turn.input_tokens),
                    "output_tokens": _n(turn.output_tokens),
                    "cost_micros": _n(turn.cost_micros),
                    "created_at": _s(turn.created_at),
                    "history_tokens": _n(turn.history_tokens),
                    "request_id": _s(request_id),
                    "expires_at": _n(self._turn_expiry(now)),
                },
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }
        meta_write = (
            self._new_meta(state, request_id, turn, tokens, now, release_lease)
            if state.is_new
            else self._meta_update(state, request_id, tokens, now, release_lease)
        )
        try:
            await self._call(
                lambda: self._client.transact_write_items(TransactItems=[meta_write, turn_put])
            )
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "TransactionCanceledException":
                raise
            if not _cancelled_by_condition(exc):
                # a TransactionConflict with a concurrent write, or throttling: retry shortly
                raise DependencyUnavailable("the database is busy", retry_after=1) from exc
            # botocore resends a transaction whose answer was lost. DynamoDB answers the resend
            # from its ClientRequestToken (botocore keeps it across retries); a server that does
            # not (moto: the local run) refuses it on the conditions our first try changed.
            # The turn item says whether this request's commit landed.
            return await self._committed_by(state.conversation_id, turn.turn, request_id)
        return True

    async def _committed_by(self, conversation_id: str, turn: int, request_id: str) -> bool:
        response = await self._call(
            lambda: self._client.get_item(
                TableName=self._table,
                Key=self._key(conversation_id, _turn_key(turn)),
                ConsistentRead=True,
                ProjectionExpression="request_id",
            )
        )
        item = response.get("Item")
        return item is not None and _str(item, "request_id") == request_id

    def _new_meta(
        self,
        state: ConversationState,
        request_id: str,
        turn: Turn,
        tokens: int,
        now: datetime,
        release_lease: bool,
    ) -> TransactWriteItemTypeDef:
        item: dict[str, AttributeValueTypeDef] = {
            **self._key(state.conversation_id, META),
            "owner": _s(state.owner),
            "created_at": _s(state.created_at),
            "total_tokens": _n(tokens),
            "turn_count": _n(turn.turn),
            "summary_through_turn": _n(0),
            "summary_tokens": _n(0),
            "last_active": _s(iso_utc(now)),
            "expires_at": _n(idle_expiry(now, self._ttl)),
            "turns_expire_at": _n(self._turn_expiry(now)),
        }
        if not release_lease:
            item["lease_request"] = _s(request_id)
            item["lease_until"] = _n(summary_lease_until(now))
        return {
            "Put": {
                "TableName": self._table,
                "Item": item,
                "ConditionExpression": "attribute_not_exists(pk)",
            }
        }

    def _meta_update(
        self,
        state: ConversationState,
        request_id: str,
        tokens: int,
        now: datetime,
        release_lease: bool,
    ) -> TransactWriteItemTypeDef:
        update = (
            "ADD total_tokens :tokens, turn_count :one"
            " SET last_active = :now, expires_at = :expires"
        )
        if release_lease:
            update += " REMOVE lease_request, lease_until"
        return {
            "Update": {
                "TableName": self._table,
                "Key": self._key(state.conversation_id, META),
                "UpdateExpression": update,
                # lease_request vanishes with a DELETE, so a deleted conversation stays deleted
                "ConditionExpression": "lease_request = :rid AND turns_expire_at >= :expires",
                "ExpressionAttributeValues": {
                    ":tokens": _n(tokens),
                    ":one": _n(1),
                    ":now": _s(iso_utc(now)),
                    ":rid": _s(request_id),
                    ":expires": _n(idle_expiry(now, self._ttl)),
                },
            }
        }

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
                lambda: self._client.update_item(
                    TableName=self._table,
                    Key=self._key(state.conversation_id, META),
                    UpdateExpression=(
                        "SET summary = :summary, summary_through_turn = :through,"
                        " summary_tokens = :summary_tokens, last_active = :now"
                        " ADD total_tokens :charged REMOVE lease_request, lease_until"
                    ),
                    ConditionExpression="lease_request = :rid",
                    ExpressionAttributeValues={
                        ":summary": _s(summary),
                        ":through": _n(through_turn),
                        ":summary_tokens": _n(summary_tokens),
                        ":charged": _n(charged_tokens),
                        ":now": _s(iso_utc(now)),
                        ":rid": _s(request_id),
                    },
                )
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
        summary = _str(meta, "summary") or None
        return ConversationView(
            conversation_id=conversation_id,
            created_at=_str(meta, "created_at"),
            total_tokens=_int(meta, "total_tokens"),
            summary=summary,
            summary_through_turn=_int(meta, "summary_through_turn"),
            turns=[_turn_from_item(item) for item in turn_items],
        )

    async def delete(self, conversation_id: str, user_id: str) -> None:
        if not is_conversation_id(conversation_id):
            raise NotFound("conversation not found")
        now = datetime.now(UTC)
        try:
            # META first: an in-flight commit is conditioned on it and fails from here on.
            await self._call(
                lambda: self._client.delete_item(
                    TableName=self._table,
                    Key=self._key(conversation_id, META),
                    ConditionExpression="#owner = :user AND expires_at > :now",
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={
                        ":user": _s(user_id),
                        ":now": _n(now.timestamp()),
                    },
                )
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
            response = await self._call(
                partial(self._client.batch_write_item, RequestItems={self._table: pending})
            )
            unprocessed = response.get("UnprocessedItems", {}).get(self._table, [])
            pending = cast("list[WriteRequestTypeDef]", unprocessed)  # same shape, output type
            if not pending:
                return
            await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
        # Left to TTL: the META is already gone, so no read can see these turns.
        raise DependencyUnavailable("could not delete every turn", retry_after=1)
