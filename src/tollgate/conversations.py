"""The rules both conversation stores keep: ids, idle expiry, the turn lease, timestamps.

The DynamoDB store (tollgate.adapters.conversation_store) states them as condition
expressions, the in-memory one (tollgate.adapters.memory_store) as Python; both take
their constants and helpers from here, so the two cannot drift. No boto3 here: the
memory store must run without it.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime, timedelta

from tollgate.ports import ConversationState

CONVERSATION_ID = re.compile(r"[0-9a-f]{32}")
# A new conversation that is summarised right after its first turn keeps the lease this long.
SUMMARY_LEASE = timedelta(minutes=2)


def is_conversation_id(value: str) -> bool:
    """Anything else is NotFound without a lookup."""
    return CONVERSATION_ID.fullmatch(value) is not None


def iso_utc(moment: datetime) -> str:
    """Conversation timestamps: ISO-8601 UTC with milliseconds and a `Z`."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def epoch(moment: datetime) -> int:
    """Epoch seconds, rounded up: an expiry never comes earlier than asked for."""
    return math.ceil(moment.timestamp())


def idle_expiry(now: datetime, ttl: timedelta) -> int:
    """When a conversation whose last turn committed at `now` stops existing."""
    return epoch(now + ttl)


def is_live(owner: str, expires_at: int, user_id: str, now: datetime) -> bool:
    """Another user's or an expired conversation is NotFound (TTL deletes lazily)."""
    return owner == user_id and expires_at > now.timestamp()


def lease_is_free(
    lease_request: str | None, lease_until: float | None, request_id: str, now: datetime
) -> bool:
    """A turn may take the lease when none is held, the holder's ran out, or it holds the
    lease already (botocore resends a begin whose answer was lost: it must not conflict)."""
    return lease_until is None or lease_until < now.timestamp() or lease_request == request_id


def summary_lease_until(now: datetime) -> float:
    return (now + SUMMARY_LEASE).timestamp()


def new_conversation(user_id: str, now: datetime) -> ConversationState:
    """A conversation that exists only once its first turn commits."""
    return ConversationState(
        conversation_id=uuid.uuid4().hex,
        owner=user_id,
        is_new=True,
        created_at=iso_utc(now),
    )
