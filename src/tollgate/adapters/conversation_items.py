"""The conversations table's items: keys, attribute values, turns and the META writes.

Plain functions over DynamoDB's wire shapes (no client): adapters/conversation_store.py
makes the calls.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from botocore.exceptions import ClientError

from tollgate.conversations import epoch, idle_expiry, is_live, iso_utc, summary_lease_until
from tollgate.ports import ConversationState, Turn

if TYPE_CHECKING:
    from mypy_boto3_dynamodb.type_defs import AttributeValueTypeDef, TransactWriteItemTypeDef

    Item = Mapping[str, AttributeValueTypeDef]

META = "META"
TURN_PREFIX = "TURN#"
LAST_TURN_KEY = f"{TURN_PREFIX}999999"


def attr_s(value: str) -> AttributeValueTypeDef:
    return {"S": value}


def attr_n(value: float) -> AttributeValueTypeDef:
    return {"N": str(value)}


def str_of(item: Item, name: str, default: str = "") -> str:
    value = item.get(name)
    return value["S"] if value is not None and "S" in value else default


def int_of(item: Item, name: str, default: int = 0) -> int:
    value = item.get(name)
    return int(float(value["N"])) if value is not None and "N" in value else default


def turn_key(turn: int) -> str:
    return f"{TURN_PREFIX}{turn:06d}"


def turn_from_item(item: Item) -> Turn:
    return Turn(
        turn=int_of(item, "turn"),
        user=str_of(item, "user"),
        assistant=str_of(item, "assistant"),
        model=str_of(item, "model"),
        input_tokens=int_of(item, "input_tokens"),
        output_tokens=int_of(item, "output_tokens"),
        cost_micros=int_of(item, "cost_micros"),
        created_at=str_of(item, "created_at"),
        history_tokens=int_of(item, "history_tokens"),
    )


def meta_is_live(meta: Item | None, user_id: str, now: datetime) -> bool:
    return meta is not None and is_live(
        str_of(meta, "owner"), int_of(meta, "expires_at"), user_id, now
    )


def cancelled_by_condition(exc: ClientError) -> bool:
    reasons = exc.response.get("CancellationReasons", [])
    return any(reason.get("Code") == "ConditionalCheckFailed" for reason in reasons)


def conversation_key(conversation_id: str, sk: str) -> dict[str, AttributeValueTypeDef]:
    return {"pk": attr_s(f"CONV#{conversation_id}"), "sk": attr_s(sk)}


def turn_expiry(now: datetime, ttl: timedelta) -> int:
    """Turn items outlive META (see conversation_store): twice the idle expiry."""
    return epoch(now + 2 * ttl)


def new_meta_put(
    table: str,
    ttl: timedelta,
    state: ConversationState,
    request_id: str,
    turn: Turn,
    tokens: int,
    now: datetime,
    release_lease: bool,
) -> TransactWriteItemTypeDef:
    item: dict[str, AttributeValueTypeDef] = {
        **conversation_key(state.conversation_id, META),
        "owner": attr_s(state.owner),
        "created_at": attr_s(state.created_at),
        "total_tokens": attr_n(tokens),
        "turn_count": attr_n(turn.turn),
        "summary_through_turn": attr_n(0),
        "summary_tokens": attr_n(0),
        "last_active": attr_s(iso_utc(now)),
        "expires_at": attr_n(idle_expiry(now, ttl)),
        "turns_expire_at": attr_n(turn_expiry(now, ttl)),
    }
    if not release_lease:
        item["lease_request"] = attr_s(request_id)
        item["lease_until"] = attr_n(summary_lease_until(now))
    return {
        "Put": {
            "TableName": table,
            "Item": item,
            "ConditionExpression": "attribute_not_exists(pk)",
        }
    }


def meta_update(
    table: str,
    ttl: timedelta,
    state: ConversationState,
    request_id: str,
    tokens: int,
    now: datetime,
    release_lease: bool,
) -> TransactWriteItemTypeDef:
    update = (
        "ADD total_tokens :tokens, turn_count :one SET last_active = :now, expires_at = :expires"
    )
    if release_lease:
        update += " REMOVE lease_request, lease_until"
    return {
        "Update": {
            "TableName": table,
            "Key": conversation_key(state.conversation_id, META),
            "UpdateExpression": update,
            # lease_request vanishes with a DELETE, so a deleted conversation stays deleted
            "ConditionExpression": "lease_request = :rid AND turns_expire_at >= :expires",
            "ExpressionAttributeValues": {
                ":tokens": attr_n(tokens),
                ":one": attr_n(1),
                ":now": attr_s(iso_utc(now)),
                ":rid": attr_s(request_id),
                ":expires": attr_n(idle_expiry(now, ttl)),
            },
        }
    }
