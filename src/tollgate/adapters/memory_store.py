"""Process-local stores behind the same Protocols as the DynamoDB adapters (STORE_BACKEND=memory).

For benchmarks (the gateway's own cost without DynamoDB round trips) and demos, never
for a deployment: nothing is shared between instances or survives a restart.

The semantics follow the DynamoDB adapters condition for condition: a reservation is
admitted only if it keeps the day's counters within the limits and adds to an open one;
settling is idempotent; a conversation's turn lease is taken only when free or expired;
another user's, an expired or a malformed conversation is NotFound; a commit or summary
after the lease was lost (or the conversation deleted) writes nothing.

asyncio-safe: no method awaits between reading and writing its state, so each one is
atomic on the event loop (the DynamoDB adapters get the same from conditional writes).
This module must not import boto3: `STORE_BACKEND=memory` keeps it out of the process.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tollgate.conversations import (
    idle_expiry,
    is_conversation_id,
    is_live,
    lease_is_free,
    new_conversation,
    summary_lease_until,
)
from tollgate.errors import ConversationLimit, NotFound, TurnConflict
from tollgate.ports import (
    Account,
    Amount,
    BudgetCounters,
    CachedReply,
    ConversationState,
    ConversationView,
    Limits,
    RateWindow,
    RateWindowFull,
    Turn,
)

# Expired cancel signals are dropped once there are this many.
REQUEST_REGISTRY_LIMIT = 100_000
REPLY_CACHE_LIMIT = 10_000


# ---------------------------------------------------------------- budgets


@dataclass(slots=True)
class _Budget:
    period: str
    tokens: int = 0
    cost_micros: int = 0
    reserved_tokens: int = 0
    reserved_micros: int = 0
    requests: int = 0
    # request_id -> the request's open hold
    open: dict[str, Amount] = field(default_factory=dict)
    # requests whose hold was given back: a late write of it cannot land
    released: set[str] = field(default_factory=set)
    # minute (yyyy-mm-ddThh:mm) -> requests counted in it
    rate: dict[str, int] = field(default_factory=dict)
    # the last request counted in the rate window alone (a repeat of its write is a no-op)
    rate_counted: str | None = None

    def counters(self) -> BudgetCounters:
        return BudgetCounters(
            period=self.period,
            tokens=self.tokens,
            cost_micros=self.cost_micros,
            reserved_tokens=self.reserved_tokens,
            reserved_micros=self.reserved_micros,
            requests=self.requests,
        )

    def add(self, charged: Amount, reserved: Amount) -> None:
        self.tokens += charged.tokens
        self.cost_micros += charged.micros
        self.reserved_tokens += reserved.tokens
        self.reserved_micros += reserved.micros


def _within(value: int, limit: int | None) -> bool:
    return limit is None or value <= limit


class MemoryUsageStore:
    def __init__(self) -> None:
        self._budgets: dict[Account, _Budget] = {}

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
        budget = self._budgets.get(account)
        held = None if budget is None else budget.open.get(request_id)
        if held == hold:
            return None if budget is None else budget.counters()  # a repeat that landed
        if held != previous or (budget is not None and request_id in budget.released):
            return None  # a stale view of the hold, or one given back: refuse, like a condition
        before = previous or Amount(0, 0)
        extra = Amount(hold.tokens - before.tokens, hold.micros - before.micros)
        if (
            budget is not None
            and rate is not None
            and budget.rate.get(rate.window, 0) >= rate.limit
        ):
            raise RateWindowFull
        used = budget.counters() if budget is not None else BudgetCounters(account.period)
        if not (
            _within(used.tokens + extra.tokens, limits.tokens)
            and _within(used.cost_micros + extra.micros, limits.cost_micros)
        ):
            return None
        if budget is None:
            budget = self._budgets[account] = _Budget(account.period)
        if rate is not None:
            budget.rate.pop(rate.previous, None)
            budget.rate[rate.window] = budget.rate.get(rate.window, 0) + 1
        budget.add(extra, extra)
        budget.open[request_id] = hold
        return budget.counters()

    async def settle(
        self,
        account: Account,
        request_id: str,
        held: Amount,
        actual: Amount,
        *,
        bar_late_writes: bool = False,
    ) -> BudgetCounters | None:
        budget = self._budgets.get(account)
        if budget is not None and bar_late_writes:
            budget.released.add(request_id)
        if budget is None or budget.open.get(request_id) != held:
            return None  # settled already: a retry must not count twice
        del budget.open[request_id]
        budget.add(
            Amount(actual.tokens - held.tokens, actual.micros - held.micros),
            Amount(-held.tokens, -held.micros),
        )
        budget.requests += 1
        return budget.counters()

    async def release(
        self, account: Account, request_id: str, held: Amount, *, bar_late_writes: bool = False
    ) -> None:
        budget = self._budgets.get(account)
        if budget is None:
            budget = self._budgets[account] = _Budget(account.period)
        if bar_late_writes:
            budget.released.add(request_id)
        if budget.open.get(request_id) != held:
            return
        del budget.open[request_id]
        budget.add(Amount(-held.tokens, -held.micros), Amount(-held.tokens, -held.micros))

    async def counters(self, account: Account) -> BudgetCounters:
        budget = self._budgets.get(account)
        return budget.counters() if budget is not None else BudgetCounters(account.period)

    async def count_rate(
        self, account: Account, request_id: str, rate: RateWindow, expires_at: int
    ) -> None:
        budget = self._budgets.get(account)
        if budget is not None and budget.rate_counted == request_id:
            return  # a repeat that landed
        if budget is not None and budget.rate.get(rate.window, 0) >= rate.limit:
            raise RateWindowFull
        if budget is None:
            budget = self._budgets[account] = _Budget(account.period)
        budget.rate.pop(rate.previous, None)
        budget.rate[rate.window] = budget.rate.get(rate.window, 0) + 1
        budget.rate_counted = request_id


# ---------------------------------------------------------------- request registry


class MemoryRequestRegistry:
    def __init__(self, *, limit: int = REQUEST_REGISTRY_LIMIT) -> None:
        self._cancelled: dict[str, int] = {}  # request id -> expires_at
        self._limit = limit

    async def signal_cancel(self, request_id: str, expires_at: int) -> None:
        if len(self._cancelled) >= self._limit:
            now = time.time()
            self._cancelled = {k: v for k, v in self._cancelled.items() if v > now}
        self._cancelled[request_id] = expires_at

    async def is_cancelled(self, request_id: str) -> bool:
        return request_id in self._cancelled


# ---------------------------------------------------------------- conversations


@dataclass(slots=True)
class _Conversation:
    owner: str
    created_at: str
    expires_at: int
    total_tokens: int = 0
    turn_count: int = 0
    summary: str | None = None
    summary_through_turn: int = 0
    summary_tokens: int = 0
    lease_request: str | None = None
    lease_until: float | None = None
    turns: dict[int, Turn] = field(default_factory=dict)

    def is_live(self, user_id: str, now: datetime) -> bool:
        return is_live(self.owner, self.expires_at, user_id, now)

    def ordered_turns(self, after_turn: int = 0) -> list[Turn]:
        return [self.turns[number] for number in sorted(self.turns) if number > after_turn]


class MemoryConversationStore:
    def __init__(self, *, ttl_days: int) -> None:
        self._conversations: dict[str, _Conversation] = {}
        self._ttl = timedelta(days=ttl_days)

    def _live(self, conversation_id: str, user_id: str, now: datetime) -> _Conversation:
        conversation = (
            self._conversations.get(conversation_id)
            if is_conversation_id(conversation_id)
            else None
        )
        if conversation is None or not conversation.is_live(user_id, now):
            raise NotFound("conversation not found")
        return conversation

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
        conversation = self._live(conversation_id, user_id, now)
        if conversation.total_tokens >= token_limit:
            raise ConversationLimit("this conversation has reached its size limit; start a new one")
        if not lease_is_free(conversation.lease_request, conversation.lease_until, request_id, now):
            raise TurnConflict("another turn of this conversation is in progress")
        conversation.lease_request = request_id
        conversation.lease_until = lease_until.timestamp()
        summary = conversation.summary or None
        return ConversationState(
            conversation_id=conversation_id,
            owner=user_id,
            is_new=False,
            created_at=conversation.created_at,
            total_tokens=conversation.total_tokens,
            turn_count=conversation.turn_count,
            summary=summary,
            summary_through_turn=conversation.summary_through_turn,
            summary_tokens=conversation.summary_tokens if summary else 0,
            turns=conversation.ordered_turns(conversation.summary_through_turn),
        )

    async def release_turn(self, state: ConversationState, request_id: str) -> None:
        if state.is_new:
            return
        conversation = self._conversations.get(state.conversation_id)
        if conversation is not None and conversation.lease_request == request_id:
            conversation.lease_request = conversation.lease_until = None

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
        conversation = self._conversations.get(state.conversation_id)
        if state.is_new:
            if conversation is not None:
                return False
            conversation = _Conversation(
                owner=state.owner,
                created_at=state.created_at,
                expires_at=idle_expiry(now, self._ttl),
                total_tokens=tokens,
                turn_count=turn.turn,
            )
            if not release_lease:
                conversation.lease_request = request_id
                conversation.lease_until = summary_lease_until(now)
            conversation.turns[turn.turn] = turn
            self._conversations[state.conversation_id] = conversation
            return True
        # lease_request vanishes with a delete, so a deleted conversation stays deleted
        if (
            conversation is None
            or conversation.lease_request != request_id
            or turn.turn in conversation.turns
        ):
            return False
        conversation.turns[turn.turn] = turn
        conversation.total_tokens += tokens
        conversation.turn_count += 1
        conversation.expires_at = idle_expiry(now, self._ttl)
        if release_lease:
            conversation.lease_request = conversation.lease_until = None
        return True

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
        conversation = self._conversations.get(state.conversation_id)
        if conversation is None or conversation.lease_request != request_id:
            return False
        conversation.summary = summary
        conversation.summary_through_turn = through_turn
        conversation.summary_tokens = summary_tokens
        conversation.total_tokens += charged_tokens
        conversation.lease_request = conversation.lease_until = None
        return True

    async def get(self, conversation_id: str, user_id: str, now: datetime) -> ConversationView:
        conversation = self._live(conversation_id, user_id, now)
        return ConversationView(
            conversation_id=conversation_id,
            created_at=conversation.created_at,
            total_tokens=conversation.total_tokens,
            summary=conversation.summary or None,
            summary_through_turn=conversation.summary_through_turn,
            turns=conversation.ordered_turns(),
        )

    async def delete(self, conversation_id: str, user_id: str) -> None:
        self._live(conversation_id, user_id, datetime.now(UTC))
        del self._conversations[conversation_id]

    def expire(self, conversation_id: str, expires_at: int) -> None:
        """Test seam: move a conversation's idle expiry (DynamoDB tests edit the item)."""
        self._conversations[conversation_id].expires_at = expires_at


# ---------------------------------------------------------------- response cache


class MemoryReplyCache:
    """Replies by key; expired ones are dropped once there are `limit` entries."""

    def __init__(self, *, limit: int = REPLY_CACHE_LIMIT) -> None:
        self._replies: dict[str, CachedReply] = {}
        self._limit = limit

    async def get(self, key: str, now: int) -> CachedReply | None:
        reply = self._replies.get(key)
        return reply if reply is not None and reply.expires_at > now else None

    async def put(self, key: str, reply: CachedReply) -> None:
        if len(self._replies) >= self._limit and key not in self._replies:
            now = time.time()
            self._replies = {k: v for k, v in self._replies.items() if v.expires_at > now}
            if len(self._replies) >= self._limit:
                self._replies.pop(next(iter(self._replies)))  # the oldest entry
        self._replies[key] = reply
