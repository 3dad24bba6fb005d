"""The chat session, independent of the web framework.

`ChatService.start` runs every check before a byte is sent (so refusals get real
statuses), then returns a `ChatStream` whose `frames()` are the SSE bytes of the
response. However the stream ends (completed, cancel, disconnect, timeout, upstream
cut), `ChatStream.finish` settles the budget, stores the turn and writes the cost
record exactly once, in its own task, so a cancelled caller cannot interrupt it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from tollgate import history, sse, summaries
from tollgate.budget import (
    Reservation,
    budget_expires_at,
    iso_z,
    reservation_for,
    seconds_to_reset,
    usage_view,
    utc_day,
)
from tollgate.chat_request import ChatRequest
from tollgate.errors import (
    BudgetExceeded,
    ConversationLimit,
    DependencyUnavailable,
    GatewayError,
    InvalidRequest,
    NotFound,
    RateLimited,
    TooLarge,
    TurnConflict,
    UnknownModel,
    UpstreamRejected,
)
from tollgate.observability import CostRecord, CostRecorder
from tollgate.ports import (
    BudgetCounters,
    ConversationState,
    ConversationStore,
    ConversationView,
    Limits,
    Message,
    RateWindow,
    RateWindowFull,
    RequestRegistry,
    Turn,
    Upstream,
    UpstreamStream,
    UsageStore,
)
from tollgate.pricing import ModelPrice, PriceTable, micros_to_usd
from tollgate.prompts import PromptLibrary
from tollgate.request_ids import new_request_id, owns_request

SETTLE_ATTEMPTS = 4
# Framing tokens of the messages around the history: system, summary, user.
PROMPT_FRAMING_TOKENS = 3 * 3 + 3
# Enough time after the stream's deadline to settle, store and summarise.
LEASE_MARGIN_S = 30.0
RATE_WINDOW_FORMAT = "%Y-%m-%dT%H:%M"
CANCEL_SIGNAL_TTL_S = 24 * 3600


class TokenCounter(Protocol):
    def is_loaded(self, model: str) -> bool: ...

    def count_text(self, model: str, text: str) -> int: ...

    def count_messages(self, model: str, messages: list[Message]) -> int: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


def utf8_bound(text: str) -> int:
    """At least the text's token count in any encoding: every token is one byte or more."""
    return len(text.encode("utf-8"))


def messages_bound(messages: list[Message]) -> int:
    """At least count_messages(): each string's bytes, 4 per message, 3 for the reply."""
    return 3 + sum(
        4 + sum(utf8_bound(value) for value in message.values() if isinstance(value, str))
        for message in messages
    )


class _RefusedOnBound(Exception):
    """Refused while the counts were upper bounds (the encoding still loading): recount."""


@dataclass(frozen=True, slots=True)
class ChatConfig:
    model_chain: tuple[str, ...]
    summary_model: str
    max_output_tokens: int
    max_input_tokens: int
    limits: Limits
    conversation_token_limit: int
    history_token_target: int
    stream_timeout_s: float
    openai_timeout_s: float
    cancel_poll_s: float
    rate_limit_per_minute: int


# A turn is stored when its reply is complete or deliberately cut, never half.
STORED_OUTCOMES = frozenset({"completed", "cancelled", "timeout"})
FAILURE_MESSAGES = {
    "timeout": "the response took longer than the stream time limit",
    "upstream_error": "the upstream model stream failed",
}


@dataclass(slots=True)
class Outcome:
    outcome: str
    text: str
    finish_reason: str | None
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    cost_micros: int
    budget: dict[str, Any]

    def failure(self) -> tuple[str, str] | None:
        """(code, message) when the stream ended in failure after it started."""
        if self.outcome not in FAILURE_MESSAGES:
            return None
        return self.outcome, FAILURE_MESSAGES[self.outcome]


@dataclass(slots=True)
class _Pending:
    """A request between its checks and its first byte."""

    user_id: str
    request_id: str
    models: tuple[str, ...]
    prices: list[ModelPrice]
    cap: int
    started_at: datetime
    started: float
    deadline: float
    record: CostRecord
    # False while the encoding loads: counts are byte bounds, a refusal is retried exactly
    exact: bool = True
    reservation: Reservation | None = None
    conversation: ConversationState | None = None


class ChatService:
    def __init__(
        self,
        config: ChatConfig,
        *,
        usage: UsageStore,
        requests: RequestRegistry,
        conversations: ConversationStore,
        upstream: Upstream,
        tokens: TokenCounter,
        prices: PriceTable,
        prompts: PromptLibrary,
        recorder: CostRecorder,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        prices.require([*config.model_chain, config.summary_model])
        self.config = config
        self.usage = usage
        self.requests = requests
        self.conversations = conversations
        self.upstream = upstream
        self.tokens = tokens
        self.prices = prices
        self.prompts = prompts
        self.recorder = recorder
        self.clock = clock
        self._active: dict[str, ChatStream] = {}
        # With lazy_encoding (set by the app), the first model's encoding loads in a thread
        # on first need; until then requests count with byte bounds (see _start).
        self.lazy_encoding = False
        self.warming: asyncio.Future[int] | None = None
        self._system_tokens: dict[tuple[str, str], int] = {}

    # ------------------------------------------------------------ queries

    async def usage_for(self, user_id: str) -> dict[str, Any]:
        now = self.clock()
        counters = await self.usage.counters(user_id, utc_day(now))
        return usage_view(counters, self.config.limits, now)

    async def conversation(self, user_id: str, conversation_id: str) -> dict[str, Any]:
        view = await self.conversations.get(conversation_id, user_id, self.clock())
        return conversation_json(view)

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        await self.conversations.delete(conversation_id, user_id)

    async def cancel(self, user_id: str, request_id: str) -> None:
        if not owns_request(request_id, user_id):
            raise NotFound("no such request")
        await self.requests.signal_cancel(
            request_id, int(self.clock().timestamp()) + CANCEL_SIGNAL_TTL_S
        )
        stream = self._active.get(request_id)
        if stream is not None and stream.user_id == user_id:
            stream.stop("cancelled")

    # ------------------------------------------------------------ chat

    def _count_system(self, model: str, prompt_name: str, text: str) -> int:
        key = (model, prompt_name)
        if key not in self._system_tokens:
            self._system_tokens[key] = self.tokens.count_text(model, text)
        return self._system_tokens[key]

    def _encoding_ready(self) -> bool:
        if self.warming is not None:
            return self.warming.done()
        return not self.lazy_encoding or self.tokens.is_loaded(self.config.model_chain[0])

    async def _encoding_loaded(self) -> None:
        if self._encoding_ready():
            return
        if self.warming is None:
            self.warming = asyncio.ensure_future(
                asyncio.to_thread(self.tokens.count_text, self.config.model_chain[0], "warm")
            )
        await asyncio.shield(self.warming)

    async def start(self, user_id: str, request: ChatRequest) -> ChatStream:
        """POST /chat: the server owns the system prompt and the history."""
        # On a cold instance the first requests do not wait for the encoding: they
        # reserve byte-length upper bounds, and settle to what upstream reports.
        try:
            return await self._start(user_id, request, exact=self._encoding_ready())
        except _RefusedOnBound:
            await self._encoding_loaded()
            return await self._start(user_id, request, exact=True)

    async def _start(self, user_id: str, request: ChatRequest, *, exact: bool) -> ChatStream:
        config = self.config
        system_prompt = self.prompts.get(request.prompt)
        if system_prompt is None:
            raise InvalidRequest(f"unknown prompt {request.prompt!r}")
        primary = config.model_chain[0]
        message_tokens = (
            self.tokens.count_text(primary, request.message)
            if exact
            else utf8_bound(request.message)
        )
        if message_tokens > config.max_input_tokens:
            if not exact:
                raise _RefusedOnBound
            raise TooLarge(
                f"message is {message_tokens} tokens; the limit is {config.max_input_tokens}"
            )
        pending = self._pending(user_id, request.max_tokens, config.model_chain, request.prompt)
        pending.exact = exact
        pending.record.conversation_id = request.conversation_id
        system_tokens = (
            self._count_system(primary, request.prompt, system_prompt)
            if exact
            else utf8_bound(system_prompt)
        )
        # An upper bound of the prompt known before the history is loaded lets the
        # reservation and the history load run concurrently. A new conversation has none.
        history_bound = config.history_token_target if request.conversation_id else 0
        prompt_bound = system_tokens + history_bound + message_tokens + PROMPT_FRAMING_TOKENS
        lease_until = pending.started_at + timedelta(
            seconds=config.stream_timeout_s + config.openai_timeout_s + LEASE_MARGIN_S
        )
        conversation = await self._admit(
            pending,
            prompt_bound,
            self.conversations.begin_turn(
                request.conversation_id,
                user_id,
                pending.request_id,
                lease_until=lease_until,
                token_limit=config.conversation_token_limit,
                now=pending.started_at,
            ),
        )
        assert conversation is not None
        pending.conversation = conversation
        pending.record.conversation_id = conversation.conversation_id
        turns = history.history_window(
            conversation.summary_tokens, conversation.turns, config.history_token_target
        )
        messages = history.build_messages(
            system_prompt, conversation.summary, turns, request.message
        )
        return await self._open(pending, messages, prompt_bound, user_message=request.message)

    async def start_completion(
        self,
        user_id: str,
        messages: list[Message],
        *,
        model: str,
        max_tokens: int | None,
        extra: dict[str, Any],
    ) -> ChatStream:
        """POST /v1/chat/completions: stateless, the caller owns the whole prompt."""
        chain = self.config.model_chain
        if model not in chain:
            raise UnknownModel(f"model {model!r} is not offered; use one of: {', '.join(chain)}")
        models = chain[chain.index(model) :]
        try:
            return await self._start_completion(
                user_id, messages, models, max_tokens, extra, exact=self._encoding_ready()
            )
        except _RefusedOnBound:
            await self._encoding_loaded()
            return await self._start_completion(
                user_id, messages, models, max_tokens, extra, exact=True
            )

    async def _start_completion(
        self,
        user_id: str,
        messages: list[Message],
        models: tuple[str, ...],
        max_tokens: int | None,
        extra: dict[str, Any],
        *,
        exact: bool,
    ) -> ChatStream:
        prompt_tokens = (
            self.tokens.count_messages(models[0], messages) if exact else messages_bound(messages)
        )
        if prompt_tokens > self.config.max_input_tokens + PROMPT_FRAMING_TOKENS:
            if not exact:
                raise _RefusedOnBound
            raise TooLarge(
                f"prompt is {prompt_tokens} tokens; the limit is {self.config.max_input_tokens}"
            )
        pending = self._pending(user_id, max_tokens, models, None)
        pending.exact = exact
        await self._admit(pending, prompt_tokens, None)
        return await self._open(pending, messages, prompt_tokens, user_message="", extra=extra)

    def _pending(
        self, user_id: str, max_tokens: int | None, models: tuple[str, ...], prompt: str | None
    ) -> _Pending:
        config = self.config
        started_at = self.clock()
        started = time.monotonic()
        request_id = new_request_id(user_id)
        return _Pending(
            user_id=user_id,
            request_id=request_id,
            models=models,
            prices=[self.prices.price(model) for model in models],
            cap=min(max_tokens or config.max_output_tokens, config.max_output_tokens),
            started_at=started_at,
            started=started,
            deadline=started + config.stream_timeout_s,
            record=CostRecord(
                request_id=request_id,
                user_id=user_id,
                conversation_id=None,
                model=models[0],
                kind="chat",
                prompt=prompt,
                started_at=iso_z(started_at),
            ),
        )

    async def _admit(
        self,
        pending: _Pending,
        prompt_bound: int,
        begin_turn: Coroutine[Any, Any, ConversationState] | None,
    ) -> ConversationState | None:
        """Reserve the budget (and take the conversation's lease, concurrently) or refuse."""
        tokens, micros = reservation_for(prompt_bound, pending.cap, pending.prices)
        reservation = Reservation(
            pending.user_id, utc_day(pending.started_at), pending.request_id, tokens, micros
        )
        started_at = pending.started_at
        minute = started_at.astimezone(UTC).replace(second=0, microsecond=0)
        rate = RateWindow(
            window=minute.strftime(RATE_WINDOW_FORMAT),
            previous=(minute - timedelta(minutes=1)).strftime(RATE_WINDOW_FORMAT),
            limit=self.config.rate_limit_per_minute,
        )
        reserving = self.usage.reserve(
            pending.user_id,
            reservation.day,
            pending.request_id,
            tokens,
            micros,
            self.config.limits,
            budget_expires_at(reservation.day),
            rate,
        )
        # The budget with the rate window, and the history: one round trip, concurrently.
        if begin_turn is None:
            (reserved,) = await asyncio.gather(reserving, return_exceptions=True)
            loaded: ConversationState | BaseException | None = None
        else:
            reserved, loaded = await asyncio.gather(reserving, begin_turn, return_exceptions=True)
        admitted = isinstance(reserved, BudgetCounters)
        conversation = loaded if isinstance(loaded, ConversationState) else None
        failure = next((r for r in (reserved, loaded) if isinstance(r, BaseException)), None)
        if failure is None and admitted:
            pending.reservation = reservation
            return conversation
        await self.give_back(reservation if admitted else None, conversation, pending.request_id)
        if isinstance(failure, RateWindowFull):
            raise RateLimited(
                f"more than {self.config.rate_limit_per_minute} requests in a minute",
                retry_after=60 - started_at.second,
            )
        if failure is None and not pending.exact:
            raise _RefusedOnBound
        record = pending.record
        if isinstance(failure, ConversationLimit | TurnConflict):
            record.outcome = (
                "conversation_cap" if isinstance(failure, ConversationLimit) else "turn_conflict"
            )
            self.emit_record(record, pending.started)
        if failure is not None:
            raise failure
        record.outcome = "budget_refused"
        self.emit_record(record, pending.started)
        raise BudgetExceeded(
            "daily budget exhausted", retry_after=seconds_to_reset(pending.started_at)
        )

    async def _open(
        self,
        pending: _Pending,
        messages: list[Message],
        prompt_bound: int,
        *,
        user_message: str,
        extra: dict[str, Any] | None = None,
    ) -> ChatStream:
        """Call upstream once the request is admitted; a refusal there gives everything back."""
        reservation = pending.reservation
        assert reservation is not None
        record = pending.record
        conversation = pending.conversation
        prompt_tokens = (
            self.tokens.count_messages(pending.models[0], messages)
            if pending.exact
            else messages_bound(messages)
        )
        try:
            if prompt_tokens > prompt_bound:
                # Only when the latest turn alone is longer than the history target.
                await self._top_up(pending, prompt_tokens - prompt_bound)
            opened = await self.upstream.open_stream(
                list(pending.models),
                messages,
                max_tokens=pending.cap,
                deadline=pending.deadline,
                extra=extra,
            )
        except BaseException as error:
            await self.give_back(reservation, conversation, pending.request_id)
            if isinstance(error, BudgetExceeded) and not pending.exact:
                raise _RefusedOnBound from error
            if isinstance(error, BudgetExceeded):
                record.outcome = "budget_refused"
                self.emit_record(record, pending.started)
            elif isinstance(error, GatewayError) and not isinstance(error, DependencyUnavailable):
                record.models_tried = list(getattr(error, "models_tried", []))
                record.outcome = (
                    "upstream_rejected" if isinstance(error, UpstreamRejected) else "upstream_error"
                )
                record.error = error.message
                self.emit_record(record, pending.started)
            raise

        upstream_stream, models_tried = opened
        record.model = upstream_stream.model
        record.models_tried = models_tried
        stream = ChatStream(
            service=self,
            user_message=user_message,
            record=record,
            reservation=reservation,
            conversation=conversation,
            upstream=upstream_stream,
            messages=messages,
            prompt_tokens=prompt_tokens if pending.exact else None,
            started=pending.started,
            deadline=pending.deadline,
        )
        self._active[pending.request_id] = stream
        return stream

    async def _top_up(self, pending: _Pending, extra_prompt_tokens: int) -> None:
        reservation = pending.reservation
        assert reservation is not None
        tokens, micros = reservation_for(extra_prompt_tokens, 0, pending.prices)
        topped = await self.usage.reserve(
            pending.user_id,
            reservation.day,
            pending.request_id,
            tokens,
            micros,
            self.config.limits,
            budget_expires_at(reservation.day),
        )
        if topped is None:
            raise BudgetExceeded(
                "daily budget exhausted", retry_after=seconds_to_reset(pending.started_at)
            )
        reservation.tokens += tokens
        reservation.micros += micros

    async def give_back(
        self,
        reservation: Reservation | None,
        conversation: ConversationState | None,
        request_id: str,
    ) -> None:
        """Give back what a refused request took: it is charged and stores nothing."""
        undo: list[Any] = []
        if reservation is not None:
            undo.append(
                self.usage.release(
                    reservation.user_id, reservation.day, request_id, reservation.amounts
                )
            )
        if conversation is not None:
            undo.append(self.conversations.release_turn(conversation, request_id))
        results = await asyncio.shield(asyncio.gather(*undo, return_exceptions=True))
        for result in results:
            if isinstance(result, Exception):
                self.recorder.error("release_failed", request_id=request_id, error=repr(result))

    def emit_record(self, record: CostRecord, started: float) -> None:
        record.latency_ms = round((time.monotonic() - started) * 1000, 1)
        self.recorder.emit(record)

    async def settle_reservation(
        self, reservation: Reservation, actual: tuple[int, int]
    ) -> BudgetCounters | None:
        """Idempotent settle, retried; if it never lands, the reservation stands."""
        delay = 0.1
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                counters = await self.usage.settle(
                    reservation.user_id,
                    reservation.day,
                    reservation.request_id,
                    reservation.amounts,
                    actual,
                )
                return counters
            except Exception as exc:
                if attempt == SETTLE_ATTEMPTS - 1:
                    self.recorder.error(
                        "settlement_failed",
                        request_id=reservation.request_id,
                        user_id=reservation.user_id,
                        reserved_tokens=reservation.tokens,
                        reserved_micros=reservation.micros,
                        actual_tokens=actual[0],
                        actual_micros=actual[1],
                        error=repr(exc),
                    )
                    return None
                await asyncio.sleep(delay)
                delay *= 2
        return None

    def _forget(self, request_id: str) -> None:
        self._active.pop(request_id, None)


class ChatStream:
    def __init__(
        self,
        *,
        service: ChatService,
        user_message: str,
        record: CostRecord,
        reservation: Reservation,
        conversation: ConversationState | None,
        upstream: UpstreamStream,
        messages: list[Message],
        prompt_tokens: int | None,
        started: float,
        deadline: float,
    ) -> None:
        self._service = service
        self._user_message = user_message
        self._record = record
        self._reservation = reservation
        self._conversation = conversation
        self._upstream = upstream
        self._messages = messages
        self._prompt_tokens = prompt_tokens  # None when only a bound was known at the start
        self._started = started
        self._deadline = deadline
        self._parts: list[str] = []
        self._stop_reason: str | None = None
        self._first_token_at: float | None = None
        self._finish_task: asyncio.Task[Outcome] | None = None
        self._closers: set[asyncio.Task[None]] = set()

    @property
    def request_id(self) -> str:
        return self._record.request_id

    @property
    def user_id(self) -> str:
        return self._record.user_id

    @property
    def conversation_id(self) -> str | None:
        return None if self._conversation is None else self._conversation.conversation_id

    @property
    def model(self) -> str:
        return self._upstream.model

    @property
    def upstream_model(self) -> str | None:
        return self._upstream.upstream_model

    def stop(self, reason: str) -> None:
        """End the stream early (cancel, disconnect, timeout): upstream is closed at once."""
        if self._stop_reason is not None or self._finish_task is not None:
            return
        self._stop_reason = reason
        closer = asyncio.get_running_loop().create_task(self._close_upstream())
        self._closers.add(closer)
        closer.add_done_callback(self._closers.discard)

    async def _close_upstream(self) -> None:
        with contextlib.suppress(Exception):
            await self._upstream.aclose()

    async def text(self) -> AsyncGenerator[str, None]:
        """The reply's text deltas, as upstream produces them, until it ends or is stopped."""
        watchdog = asyncio.get_running_loop().create_task(self._watch())
        try:
            async for text in self._upstream.deltas():
                if self._first_token_at is None:
                    self._first_token_at = time.monotonic()
                self._parts.append(text)
                yield text
                if self._stop_reason is not None:
                    break
        except Exception as exc:  # the upstream broke, or stop() closed it under us
            if self._stop_reason is None:
                self._stop_reason = "upstream_error"
                self._record.error = str(exc)[:500]
        finally:
            watchdog.cancel()

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """POST /chat's SSE: meta, deltas, usage, error (when it failed), [DONE]."""
        yield sse.event(
            "meta",
            {
                "conversation_id": self.conversation_id,
                "request_id": self.request_id,
                "model": self.model,
            },
        )
        async for text in self.text():
            yield sse.delta(text)
        outcome = await self.finish_now()
        yield sse.event(
            "usage",
            {
                "input_tokens": outcome.input_tokens,
                "cached_input_tokens": outcome.cached_input_tokens,
                "output_tokens": outcome.output_tokens,
                "cost_usd": micros_to_usd(outcome.cost_micros),
                "budget": outcome.budget,
            },
        )
        failure = outcome.failure()
        if failure is not None:
            yield sse.event("error", {"code": failure[0], "message": failure[1]})
        yield sse.DONE

    async def _watch(self) -> None:
        """Stop at the deadline, or when another instance signals a cancel through DynamoDB."""
        poll = self._service.config.cancel_poll_s
        while True:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                self.stop("timeout")
                return
            await asyncio.sleep(min(poll, remaining))
            if time.monotonic() >= self._deadline:
                continue
            try:
                cancelled = await self._service.requests.is_cancelled(self.request_id)
            except Exception:  # a missed poll is retried at the next tick
                continue
            if cancelled:
                self.stop("cancelled")
                return

    async def finish_now(self) -> Outcome:
        """Settle now: completed unless the stream was stopped or broke."""
        return await self.finish(self._stop_reason or "completed")

    async def finish(self, outcome: str) -> Outcome:
        """Settle, store and record exactly once, shielded from the caller's cancellation."""
        if self._finish_task is None:
            if self._stop_reason is None:
                self._stop_reason = outcome
            self._finish_task = asyncio.get_running_loop().create_task(self._settle(outcome))
        return await asyncio.shield(self._finish_task)

    async def _settle(self, outcome: str) -> Outcome:
        service = self._service
        record = self._record
        record.outcome = outcome
        await service._encoding_loaded()  # counting below must not block the loop
        try:
            await self._upstream.aclose()
        except Exception as exc:
            service.recorder.warning(
                "upstream_close_failed", request_id=self.request_id, error=repr(exc)
            )
        reply = "".join(self._parts)
        model = self._upstream.model
        record.upstream_model = self._upstream.upstream_model
        usage = self._upstream.usage
        if usage is not None:
            record.usage_source = "upstream"
            record.input_tokens = usage.input_tokens
            record.cached_input_tokens = usage.cached_input_tokens
            record.output_tokens = usage.output_tokens
        else:
            # Cut short before upstream reported usage: price what was produced.
            record.usage_source = "estimated"
            record.input_tokens = self._prompt_tokens or service.tokens.count_messages(
                model, self._messages
            )
            record.output_tokens = service.tokens.count_text(model, reply) if reply else 0
        price = service.prices.price_for(record.upstream_model, model)
        record.cost_micros = price.cost_micros(
            record.input_tokens, record.cached_input_tokens, record.output_tokens
        )
        if self._first_token_at is not None:
            record.ttft_ms = round((self._first_token_at - self._started) * 1000, 1)

        conversation = self._conversation
        turn = None
        if conversation is not None and reply and outcome in STORED_OUTCOMES:
            turn = self._turn(conversation, reply, model)
        plan = None
        if conversation is not None and turn is not None:
            plan = history.plan_summary(
                conversation.summary_tokens,
                [*conversation.turns, turn],
                service.config.history_token_target,
            )
        settled, stored = await asyncio.gather(
            self._settle_budget(),
            self._store_turn(turn, release_lease=plan is None),
            return_exceptions=True,
        )
        if isinstance(stored, BaseException):
            service.recorder.error(
                "turn_store_failed", request_id=self.request_id, error=repr(stored)
            )
            stored = False
        counters = settled if isinstance(settled, BudgetCounters) else None
        service.emit_record(record, self._started)
        if plan is not None and stored:
            counters = await self._summarise(plan) or counters
        elif plan is not None:
            await self._release_lease()
        if counters is None:
            with contextlib.suppress(Exception):
                counters = await service.usage.counters(self.user_id, self._reservation.day)
        service._forget(self.request_id)
        now = service.clock()
        budget = usage_view(
            counters or BudgetCounters(day=self._reservation.day), service.config.limits, now
        )
        return Outcome(
            outcome,
            reply,
            self._upstream.finish_reason,
            record.input_tokens,
            record.cached_input_tokens,
            record.output_tokens,
            record.cost_micros,
            budget,
        )

    async def _settle_budget(self) -> BudgetCounters | None:
        record = self._record
        actual_tokens = record.input_tokens + record.output_tokens
        return await self._service.settle_reservation(
            self._reservation,
            (actual_tokens, record.cost_micros),
        )

    def _turn(self, conversation: ConversationState, reply: str, model: str) -> Turn:
        service = self._service
        record = self._record
        return Turn(
            turn=conversation.turn_count + 1,
            user=self._user_message,
            assistant=reply,
            model=model,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cost_micros=record.cost_micros,
            created_at=iso_z(service.clock()),
            history_tokens=history.turn_history_tokens(
                lambda messages: service.tokens.count_messages(model, messages),
                self._user_message,
                reply,
            ),
        )

    async def _store_turn(self, turn: Turn | None, *, release_lease: bool) -> bool:
        service = self._service
        if self._conversation is None:
            return False
        if turn is None:
            await service.conversations.release_turn(self._conversation, self.request_id)
            return False
        return await service.conversations.commit_turn(
            self._conversation,
            self.request_id,
            turn,
            now=service.clock(),
            release_lease=release_lease,
        )

    async def _release_lease(self) -> None:
        if self._conversation is None:
            return
        with contextlib.suppress(Exception):
            await self._service.conversations.release_turn(self._conversation, self.request_id)

    async def _summarise(self, plan: history.SummaryPlan) -> BudgetCounters | None:
        """Fold aged turns into the summary; on any failure the history degrades to a window."""
        service = self._service
        assert self._conversation is not None
        summary = await summaries.summarise(
            service,
            user_id=self.user_id,
            conversation=self._conversation,
            plan=plan,
            parent_request_id=self.request_id,
            deadline=max(self._deadline, time.monotonic() + 5),
        )
        if summary is None:
            await self._release_lease()
            return None
        text, summary_tokens, charged_tokens, counters = summary
        try:
            saved = await service.conversations.save_summary(
                self._conversation,
                self.request_id,
                summary=text,
                through_turn=plan.through_turn,
                summary_tokens=summary_tokens,
                charged_tokens=charged_tokens,
                now=service.clock(),
            )
        except Exception as exc:
            service.recorder.error(
                "summary_store_failed", request_id=self.request_id, error=repr(exc)
            )
            saved = False
        if not saved:
            await self._release_lease()
        return counters

    async def aclose(self) -> None:
        """For the web layer's `finally`: make sure the stream is settled however it ended."""
        self.stop("client_disconnected")
        await self.finish(self._stop_reason or "client_disconnected")


def conversation_json(view: ConversationView) -> dict[str, Any]:
    return {
        "conversation_id": view.conversation_id,
        "created_at": view.created_at,
        "total_tokens": view.total_tokens,
        "summary": view.summary,
        "summary_through_turn": view.summary_through_turn,
        "turns": [
            {
                "turn": turn.turn,
                "user": turn.user,
                "assistant": turn.assistant,
                "model": turn.model,
                "input_tokens": turn.input_tokens,
                "output_tokens": turn.output_tokens,
                "cost_usd": micros_to_usd(turn.cost_micros),
                "created_at": turn.created_at,
            }
            for turn in view.turns
        ],
    }


def config_from_settings(settings: Any) -> ChatConfig:
    return ChatConfig(
        model_chain=tuple(settings.model_chain),
        summary_model=settings.summary_model,
        max_output_tokens=settings.max_output_tokens,
        max_input_tokens=settings.max_input_tokens,
        limits=Limits(settings.daily_token_limit, settings.daily_cost_limit_micros),
        conversation_token_limit=settings.conversation_token_limit,
        history_token_target=settings.history_token_target,
        stream_timeout_s=settings.stream_timeout_s,
        openai_timeout_s=settings.openai_timeout_s,
        cancel_poll_s=settings.cancel_poll_s,
        rate_limit_per_minute=settings.rate_limit_per_minute,
    )
