"""Summary calls: fold aged turns into the running summary, charged like chat calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from tollgate import history
from tollgate.budget import Payer, hold_for, iso_z
from tollgate.errors import BudgetExceeded
from tollgate.ledger import Balance, Ledger
from tollgate.metering import Meter
from tollgate.observability import CostRecord
from tollgate.ports import ConversationState, Upstream, UpstreamStream

SUMMARY_PROMPT_NAME = "summarize"


@dataclass(frozen=True, slots=True)
class Summary:
    text: str
    summary_tokens: int  # what the summary takes in a prompt
    charge: SummaryCharge
    balances: list[Balance | None]


@dataclass(frozen=True, slots=True)
class SummaryCharge:
    """What a summary call cost the user (shown in the turn's `usage` event)."""

    input_tokens: int
    output_tokens: int
    cost_micros: int

    @property
    def tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class Summariser:
    def __init__(
        self,
        *,
        ledger: Ledger,
        upstream: Upstream,
        meter: Meter,
        instructions: str,
        model: str,
        history_token_target: int,
        timeout_s: float,
        clock: Callable[[], datetime],
    ) -> None:
        self._ledger = ledger
        self._upstream = upstream
        self._meter = meter
        self._instructions = instructions
        self._model = model
        self._cap = history.summary_max_tokens(history_token_target)
        self._timeout_s = timeout_s
        self._clock = clock

    async def summarise(
        self,
        payer: Payer,
        conversation: ConversationState,
        plan: history.SummaryPlan,
        *,
        parent_request_id: str,
    ) -> Summary | None:
        """One summary call, held and charged like a chat call, with its own cost record.

        Its stream has its own deadline (SUMMARY_TIMEOUT_S from its start), not the chat's."""
        model = self._model
        started_at = self._clock()
        clock_start = time.monotonic()
        deadline = clock_start + self._timeout_s
        request_id = f"{parent_request_id}-summary"
        messages = history.summary_request_messages(
            self._instructions, conversation.summary, plan.fold
        )
        await self._meter.counter.loaded(model)
        prompt_tokens = self._meter.counter.tokens.count_messages(model, messages)
        record = CostRecord(
            request_id=request_id,
            user_id=payer.user_id,
            conversation_id=conversation.conversation_id,
            model=model,
            kind="summary",
            prompt=SUMMARY_PROMPT_NAME,
            started_at=iso_z(started_at),
            plan=payer.plan,
            team=payer.team,
        )
        amount = hold_for(prompt_tokens, self._cap, [self._meter.prices.price(model)])
        try:
            hold = await self._ledger.admit(payer, request_id, amount, started_at, count_rate=False)
        except BudgetExceeded:
            record.outcome = "budget_refused"
            self._ledger.record(record, clock_start)
            return None
        except Exception as exc:
            self._ledger.warning("summary_skipped", request_id=request_id, error=repr(exc))
            return None
        parts: list[str] = []
        stream: UpstreamStream | None = None
        try:
            async with asyncio.timeout(self._timeout_s):
                stream, tried = await self._upstream.open_stream(
                    [model],
                    messages,
                    max_tokens=self._cap,
                    deadline=deadline,
                    reasoning_effort="low",
                )
                record.models_tried = tried
                async for text in stream.deltas():
                    if not isinstance(text, str):
                        continue  # a summary call offers no tools
                    if record.ttft_ms is None:
                        record.ttft_ms = round((time.monotonic() - clock_start) * 1000, 1)
                    parts.append(text)
        except TimeoutError:
            record.outcome = "timeout"
        except Exception as exc:
            record.outcome = "upstream_error"
            record.error = str(exc)[:500]
        finally:
            if stream is not None:
                await asyncio.shield(stream.aclose())
        if stream is None:
            await self._ledger.give_back(hold)
            record.models_tried = record.models_tried or [model]
            self._ledger.record(record, clock_start)
            return None
        text = "".join(parts)
        charged = await self._meter.charge(
            record,
            stream,
            reply=text,
            prompt_tokens=prompt_tokens,
            messages=messages,
            cap=self._cap,
        )
        balances = await self._ledger.settle(hold, charged)
        self._ledger.record(record, clock_start)
        if record.outcome != "completed" or not text.strip():
            return None
        text = text.strip()
        counter = self._meter.counter.tokens
        summary_tokens = history.summary_history_tokens(
            lambda summary_messages: counter.count_messages(model, summary_messages), text
        )
        charge = SummaryCharge(record.input_tokens, record.output_tokens, record.cost_micros)
        return Summary(text, summary_tokens, charge, balances)
