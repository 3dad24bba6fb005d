"""What the chat domain needs from the outside world: one Protocol per dependency.

Each has one real adapter (tollgate.adapters) and fakes in the tests.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.type_defs import MetricDatumTypeDef

    from tollgate.adapters.rollup_store import DayRollup
    from tollgate.aggregation.rollups import LogEvent, Rollup
    from tollgate.aggregation.windows import Window as AggregationWindow
    from tollgate.stream import Outcome

Message = dict[str, Any]


# ---------------------------------------------------------------- budgets

Scope = Literal["user", "team", "global"]
Window = Literal["day", "month"]


@dataclass(frozen=True, slots=True)
class Amount:
    """Tokens (input + output) and micro-USD: what a request holds or is charged."""

    tokens: int
    micros: int

    def __add__(self, other: Amount) -> Amount:
        return Amount(self.tokens + other.tokens, self.micros + other.micros)


@dataclass(frozen=True, slots=True)
class Limits:
    """A window's limits; None means no limit in that unit."""

    tokens: int | None
    cost_micros: int | None


@dataclass(frozen=True, slots=True)
class Account:
    """One budget counter: a scope's owner over one window, e.g. a user's day or a team's month.

    `owner` is the user id, the team id, or the global scope's shard number.
    `period` is the window's UTC date (yyyy-mm-dd) or month (yyyy-mm).
    """

    scope: Scope
    owner: str
    window: Window
    period: str


@dataclass(frozen=True, slots=True)
class BudgetCounters:
    """An account's counters; `tokens`/`cost_micros` include open reservations."""

    period: str
    tokens: int = 0
    cost_micros: int = 0
    reserved_tokens: int = 0
    reserved_micros: int = 0
    requests: int = 0
    # The write was answered only after the client retried it: an earlier try may still
    # be in flight, so closing this hold must bar a late landing (UsageStore.release).
    retried: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class RateWindow:
    """The user's per-minute request count, kept on the same item as the user's day budget."""

    window: str  # yyyy-mm-ddThh:mm (UTC)
    previous: str  # the minute before, whose count can be dropped
    limit: int


class RateWindowFull(Exception):
    """The request would pass the per-minute rate limit (nothing was reserved)."""


class UsageStore(Protocol):
    """Budget counters. Every write is idempotent, because a client library may retry it."""

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
        """Make the request's hold on the account `hold` unless that would pass a limit (None).

        `previous` is the hold the caller knows the request already has (None: no hold yet);
        a larger `hold` then tops it up by the difference. A repeat of a write that already
        landed finds the hold equal to `hold` and changes nothing. With `rate`, the same
        write counts the request in its minute, and raises RateWindowFull when that is full.
        """

    async def settle(
        self,
        account: Account,
        request_id: str,
        held: Amount,
        actual: Amount,
        *,
        bar_late_writes: bool = False,
    ) -> BudgetCounters | None:
        """Replace the request's hold by its actual charge. None if no hold (settled already)."""

    async def release(
        self, account: Account, request_id: str, held: Amount, *, bar_late_writes: bool = False
    ) -> None:
        """Drop the request's hold without a charge (idempotent).

        `bar_late_writes`: the hold's write was never answered and may still land (a retry
        in flight): mark the request so that such a write cannot land afterwards.
        """

    async def counters(self, account: Account) -> BudgetCounters: ...

    async def count_rate(
        self, account: Account, request_id: str, rate: RateWindow, expires_at: int
    ) -> None:
        """Count the request in its minute without holding any budget (a cached reply).

        Raises RateWindowFull when the minute is full. A repeat of the write that already
        landed for this request changes nothing.
        """


class BudgetAlerts(Protocol):
    """Team and global utilisation: a notification once per threshold (80 %, 100 %) per
    window, and the BudgetUtilizationPercent metric. Never raises into the caller."""

    async def observe(self, account: Account, limits: Limits, counters: BudgetCounters) -> None: ...


class RequestRegistry(Protocol):
    """Cross-instance cancel signals: the streaming instance polls, any instance may cancel.

    Ownership is checked before (request ids carry their owner's tag), so only signals
    for a real owner's request ever reach the store.
    """

    async def signal_cancel(self, request_id: str, expires_at: int) -> None: ...

    async def is_cancelled(self, request_id: str) -> bool: ...


# ---------------------------------------------------------------- conversations


@dataclass(frozen=True, slots=True)
class Turn:
    turn: int
    user: str
    assistant: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_micros: int
    created_at: str
    # tokens the user + assistant messages take in the chat format, for history budgeting
    history_tokens: int


@dataclass(frozen=True, slots=True)
class ConversationState:
    """What a new turn needs: the summary and the turns it does not cover yet."""

    conversation_id: str
    owner: str
    is_new: bool
    created_at: str
    total_tokens: int = 0
    turn_count: int = 0
    summary: str | None = None
    summary_through_turn: int = 0
    summary_tokens: int = 0
    turns: list[Turn] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ConversationView:
    conversation_id: str
    created_at: str
    total_tokens: int
    summary: str | None
    summary_through_turn: int
    turns: list[Turn]


class ConversationStore(Protocol):
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
        """Take the conversation's turn lease and load what the prompt needs.

        None starts a new conversation (nothing is written until its first turn commits).
        Raises NotFound (missing, expired or another user's), ConversationLimit
        (total_tokens >= token_limit), TurnConflict (another turn holds a live lease).
        """

    async def release_turn(self, state: ConversationState, request_id: str) -> None:
        """Give the lease back without storing anything (idempotent)."""

    async def commit_turn(
        self,
        state: ConversationState,
        request_id: str,
        turn: Turn,
        *,
        now: datetime,
        release_lease: bool,
    ) -> bool:
        """Store the turn and update the metadata in one transaction.

        False when the conversation was deleted or the lease lost meanwhile (nothing written).
        """

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
        """Store a new summary, add the summary call's tokens to the total, release the lease."""

    async def get(self, conversation_id: str, user_id: str, now: datetime) -> ConversationView: ...

    async def delete(self, conversation_id: str, user_id: str) -> None: ...


# ---------------------------------------------------------------- response cache


@dataclass(frozen=True, slots=True)
class CachedReply:
    """A reply that completed normally, kept for identical first questions (tollgate.cache)."""

    text: str
    model: str  # the configured name that answered
    cost_micros: int  # what producing it cost: a hit saves this much
    expires_at: int  # epoch seconds; readers check it themselves (TTL deletes lazily)


class ReplyCache(Protocol):
    async def get(self, key: str, now: int) -> CachedReply | None:
        """The reply stored under `key`, None when there is none or it expired by `now`."""

    async def put(self, key: str, reply: CachedReply) -> None:
        """Store (or replace) the reply; the caller checked it fits (tollgate.cache)."""


# ---------------------------------------------------------------- upstream


@dataclass(slots=True)
class UpstreamUsage:
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int  # upstream's completion_tokens: reasoning tokens included
    reasoning_tokens: int = 0


@dataclass(frozen=True, slots=True)
class ToolCallDelta:
    """One fragment of a streamed tool call, as upstream sent it (OpenAI's `tool_calls` delta).

    The first fragment of a call carries its `id`, `type` and function `name`; later ones
    only `index` and a piece of `arguments`.
    """

    index: int
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: str | None = None


# What an upstream stream yields: text, or a fragment of a tool call (only when the
# request offered tools: /chat never does, so its streams are text only).
Delta = str | ToolCallDelta


class UpstreamStream(Protocol):
    """An upstream response whose status was 200; iterate for text and tool-call deltas."""

    model: str  # the configured name from the chain that answered
    upstream_model: str | None  # the snapshot upstream reported, once known
    usage: UpstreamUsage | None  # set when the final usage chunk arrived
    finish_reason: str | None
    # time.monotonic() when upstream answered 200, before any visible token (a reasoning
    # model may think for a minute after it)
    answered_at: float

    def deltas(self) -> AsyncIterator[Delta]: ...

    async def aclose(self) -> None: ...


class Upstream(Protocol):
    async def open_stream(
        self,
        models: list[str],
        messages: list[Message],
        *,
        max_tokens: int,
        deadline: float,
        extra: dict[str, Any] | None = None,
        reasoning_effort: str | None = None,
        sampling: Mapping[str, Any] | None = None,
    ) -> tuple[UpstreamStream, list[str]]:
        """Try models in order (429/5xx/timeouts move on); return the stream and models tried.

        Returns as soon as upstream answered 200. `max_tokens` is the cap (sent as
        `max_completion_tokens`, or `max_tokens` where configured, never to a reasoning
        model). `extra` (a /v1 client's parameters) passes through unchanged;
        `reasoning_effort` and `sampling` (the gateway's own choices) go only to models
        that accept them. Raises UpstreamRejected (400), UpstreamMisconfigured
        (401/403/404), UpstreamUnavailable (every model failed): UpstreamErrors carrying
        `models_tried`. `deadline` is a time.monotonic() value.
        """


# ---------------------------------------------------------------- tokens


class TokenCounter(Protocol):
    """tiktoken's counts per model, each model's encoding loaded on first use."""

    def is_loaded(self, model: str) -> bool: ...

    def encoding_name(self, model: str) -> str: ...

    def count_text(self, model: str, text: str) -> int: ...

    def count_messages(self, model: str, messages: Iterable[Mapping[str, object]]) -> int: ...


# ---------------------------------------------------------------- the reply on the wire


class ReplyStream(Protocol):
    """What the wire formats stream: an upstream reply (ChatStream) or a cached one."""

    cached: bool

    @property
    def request_id(self) -> str: ...

    @property
    def conversation_id(self) -> str | None: ...

    @property
    def model(self) -> str: ...

    def stop(self, reason: str) -> None: ...

    def events(self) -> AsyncGenerator[Delta, None]:
        """Text and tool-call deltas (tool calls on /v1 only); a cached reply is text only."""
        ...

    async def finish_now(self) -> Outcome: ...

    async def aclose(self) -> None: ...


# ---------------------------------------------------------------- the cost aggregator


class CostEventSource(Protocol):
    def read(self, window: AggregationWindow) -> Iterator[LogEvent]: ...


class RollupRepository(Protocol):
    def put_window(self, rollup: Rollup) -> None: ...
    def put_day(self, day: DayRollup) -> None: ...
    def get_windows(
        self, windows: Iterable[AggregationWindow]
    ) -> dict[AggregationWindow, Rollup]: ...


class SettledSpend(Protocol):
    def settled_micros(self, day: str) -> int: ...


class GlobalSettledSpend(Protocol):
    def settled_micros(self, day: str) -> int | None: ...


class MetricSink(Protocol):
    def accepts(self, window: AggregationWindow, now: datetime | None = None) -> bool: ...
    def publish(self, data: list[MetricDatumTypeDef]) -> None: ...
