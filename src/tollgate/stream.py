"""One admitted request's reply, from upstream's first chunk to its settlement.

However the stream ends (completed, cancel, disconnect, timeout, upstream cut),
`ChatStream.finish` settles the budget, stores the turn and writes the cost record
exactly once, in its own task, so a cancelled caller cannot interrupt it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tollgate.budget import Payer
from tollgate.cache import ReplyKeeper
from tollgate.ledger import Balance, Hold, Ledger
from tollgate.metering import Meter
from tollgate.observability import CostRecord
from tollgate.ports import Delta, Message, ToolCallDelta, UpstreamStream
from tollgate.summaries import SummaryCharge
from tollgate.turns import TurnWriter

FAILURE_MESSAGES = {
    "timeout": "the response took longer than the stream time limit",
    "upstream_error": "the upstream model stream failed",
}


@dataclass(frozen=True, slots=True)
class Timing:
    """When a request started (wall clock, for its day; monotonic, for durations)."""

    started_at: datetime
    clock_start: float
    deadline: float  # time.monotonic() value: the stream's wall-clock limit


@dataclass(slots=True)
class Outcome:
    outcome: str
    text: str
    finish_reason: str | None
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micros: int
    # The user's day account after settlement (None when it could not be read)
    balance: Balance | None
    # A summary call this turn caused, charged to the same user
    summary: SummaryCharge | None = None
    # A cached reply: what producing it had cost (nothing was charged for it)
    saved_micros: int | None = None
    # Tool calls assembled from their deltas, in OpenAI's message format (/v1 only)
    tool_calls: list[dict[str, Any]] = field(default_factory=list)

    def failure(self) -> tuple[str, str] | None:
        """(code, message) when the stream ended in failure after it started."""
        if self.outcome not in FAILURE_MESSAGES:
            return None
        return self.outcome, FAILURE_MESSAGES[self.outcome]


@dataclass(frozen=True, slots=True)
class Prompt:
    """What was sent upstream: the messages and, when counted exactly, their tokens."""

    messages: list[Message]
    tokens: int | None
    cap: int  # the output cap sent upstream (reasoning included)
    beside_messages: int = 0  # billed prompt tokens not in the messages (tools, images)


class ChatStream:
    cached = False

    def __init__(
        self,
        *,
        upstream: UpstreamStream,
        payer: Payer,
        record: CostRecord,
        hold: Hold,
        ledger: Ledger,
        meter: Meter,
        prompt: Prompt,
        timing: Timing,
        turn: TurnWriter | None,
        cancel_requested: Callable[[], Awaitable[bool]],
        cancel_poll_s: float,
        on_finished: Callable[[ChatStream], None],
        keeper: ReplyKeeper | None = None,
    ) -> None:
        self._upstream = upstream
        self._payer = payer
        self._record = record
        self._hold = hold
        self._ledger = ledger
        self._meter = meter
        self._prompt = prompt
        self._timing = timing
        self._turn = turn
        self._cancel_requested = cancel_requested
        self._cancel_poll_s = cancel_poll_s
        self._on_finished = on_finished
        self._keeper = keeper
        self._parts: list[str] = []
        self._tool_calls: dict[int, dict[str, Any]] = {}
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
        return None if self._turn is None else self._turn.conversation_id

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

    async def events(self) -> AsyncGenerator[Delta, None]:
        """Text and tool-call deltas, as upstream produces them, until it ends or is stopped."""
        watchdog = asyncio.get_running_loop().create_task(self._watch())
        try:
            async for delta in self._upstream.deltas():
                if self._first_token_at is None:
                    self._first_token_at = time.monotonic()
                if isinstance(delta, str):
                    self._parts.append(delta)
                else:
                    self._add_tool_call(delta)
                yield delta
                if self._stop_reason is not None:
                    break
        except Exception as exc:  # the upstream broke, or stop() closed it under us
            if self._stop_reason is None:
                self._stop_reason = "upstream_error"
                self._record.error = str(exc)[:500]
        finally:
            watchdog.cancel()

    def _add_tool_call(self, delta: ToolCallDelta) -> None:
        call = self._tool_calls.setdefault(
            delta.index, {"id": "", "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if delta.id:
            call["id"] = delta.id
        if delta.type:
            call["type"] = delta.type
        if delta.name:
            call["function"]["name"] += delta.name
        if delta.arguments:
            call["function"]["arguments"] += delta.arguments

    def tool_calls(self) -> list[dict[str, Any]]:
        """The tool calls received so far, whole, in their index order."""
        return [self._tool_calls[index] for index in sorted(self._tool_calls)]

    async def _watch(self) -> None:
        """Stop at the deadline, or when another instance signals a cancel through DynamoDB."""
        deadline = self._timing.deadline
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.stop("timeout")
                return
            await asyncio.sleep(min(self._cancel_poll_s, remaining))
            if time.monotonic() >= deadline:
                continue
            try:
                cancelled = await self._cancel_requested()
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

    async def aclose(self) -> None:
        """For the web layer's `finally`: make sure the stream is settled however it ended."""
        self.stop("client_disconnected")
        await self.finish(self._stop_reason or "client_disconnected")

    async def _settle(self, outcome: str) -> Outcome:
        record = self._record
        record.outcome = outcome
        try:
            await self._upstream.aclose()
        except Exception as exc:
            self._ledger.warning(
                "upstream_close_failed", request_id=self.request_id, error=repr(exc)
            )
        reply = "".join(self._parts)
        tool_calls = self.tool_calls()
        # Cut short without usage, tool-call names and arguments are output produced too.
        produced = reply + "".join(
            call["function"]["name"] + call["function"]["arguments"] for call in tool_calls
        )
        charged = await self._meter.charge(
            record,
            self._upstream,
            reply=produced,
            prompt_tokens=self._prompt.tokens,
            messages=self._prompt.messages,
            cap=self._prompt.cap,
            beside_messages=self._prompt.beside_messages,
        )
        if self._first_token_at is not None:
            record.ttft_ms = round((self._first_token_at - self._timing.clock_start) * 1000, 1)

        # The hold goes first: a cold instance's byte-bound holds free room at once.
        settling = asyncio.ensure_future(self._ledger.settle(self._hold, charged))
        turn_writer = self._turn
        turn = None
        if turn_writer is not None:
            await self._meter.counter.loaded(
                self._upstream.model
            )  # counting the turn must not block the loop
            turn = turn_writer.turn_for(outcome, reply, self._upstream.model, record)
        settled, stored, _ = await asyncio.gather(
            settling,
            turn_writer.store(turn) if turn_writer is not None else _nothing(),
            self._keep(outcome, reply),
            return_exceptions=True,
        )
        if isinstance(stored, BaseException):
            self._ledger.error("turn_store_failed", request_id=self.request_id, error=repr(stored))
            stored = False
        self._ledger.record(record, self._timing.clock_start)
        # The user's day account is every hold's first line.
        balance = None if isinstance(settled, BaseException) or not settled else settled[0]
        summary = None
        if turn_writer is not None:
            summary = await turn_writer.fold(self._payer, stored=bool(stored))
            if summary is not None and summary.balances and summary.balances[0] is not None:
                balance = summary.balances[0]  # the summary call settled later
        if balance is None:
            balance = await self._ledger.balance_of(self._hold.lines[0])
        self._on_finished(self)
        return Outcome(
            outcome,
            reply,
            self._upstream.finish_reason,
            record.input_tokens,
            record.cached_input_tokens,
            record.output_tokens,
            record.reasoning_tokens,
            record.cost_micros,
            balance,
            None if summary is None else summary.charge,
            tool_calls=tool_calls,
        )

    async def _keep(self, outcome: str, reply: str) -> bool:
        """Offer a normally completed reply to the response cache (when it is on for this one)."""
        if self._keeper is None:
            return False
        return await self._keeper.offer(
            outcome,
            self._upstream.finish_reason,
            reply,
            self._upstream.model,
            self._record.cost_micros,
        )


async def _nothing() -> bool:
    return False
