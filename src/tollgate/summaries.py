"""Summary calls: fold aged turns into the running summary, charged like chat calls."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from tollgate import history
from tollgate.budget import Reservation, budget_expires_at, iso_z, reservation_for, utc_day
from tollgate.observability import CostRecord
from tollgate.ports import BudgetCounters, ConversationState, UpstreamStream

if TYPE_CHECKING:
    from tollgate.chat import ChatService

SUMMARY_PROMPT_NAME = "summarize"


async def summarise(
    service: ChatService,
    *,
    user_id: str,
    conversation: ConversationState,
    plan: history.SummaryPlan,
    parent_request_id: str,
    deadline: float,
) -> tuple[str, int, int, BudgetCounters | None] | None:
    """One summary call, reserved and charged like a chat call, with its own cost record."""
    config = service.config
    model = config.summary_model
    started_at = service.clock()
    started = time.monotonic()
    request_id = f"{parent_request_id}-summary"
    messages = history.summary_request_messages(
        service.prompts.summary, conversation.summary, plan.fold
    )
    prompt_tokens = service.tokens.count_messages(model, messages)
    cap = history.summary_max_tokens(config.history_token_target)
    price = service.prices.price(model)
    tokens, micros = reservation_for(prompt_tokens, cap, [price])
    reservation = Reservation(user_id, utc_day(started_at), request_id, tokens, micros)
    record = CostRecord(
        request_id=request_id,
        user_id=user_id,
        conversation_id=conversation.conversation_id,
        model=model,
        kind="summary",
        prompt=SUMMARY_PROMPT_NAME,
        started_at=iso_z(started_at),
    )
    try:
        admitted = await service.usage.reserve(
            user_id,
            reservation.day,
            request_id,
            tokens,
            micros,
            config.limits,
            budget_expires_at(reservation.day),
        )
    except Exception as exc:
        service.recorder.warning("summary_skipped", request_id=request_id, error=repr(exc))
        return None
    if admitted is None:
        record.outcome = "budget_refused"
        service.emit_record(record, started)
        return None
    parts: list[str] = []
    stream: UpstreamStream | None = None
    try:
        stream, tried = await service.upstream.open_stream(
            [model], messages, max_tokens=cap, deadline=deadline
        )
        record.models_tried = tried
        async for text in stream.deltas():
            if record.ttft_ms is None:
                record.ttft_ms = round((time.monotonic() - started) * 1000, 1)
            parts.append(text)
    except Exception as exc:
        record.outcome = "upstream_error"
        record.error = str(exc)[:500]
    finally:
        if stream is not None:
            await asyncio.shield(stream.aclose())
    if stream is None:
        await service.give_back(reservation, None, request_id)
        record.models_tried = record.models_tried or [model]
        service.emit_record(record, started)
        return None
    record.upstream_model = stream.upstream_model
    text = "".join(parts)
    if stream.usage is not None:
        record.input_tokens = stream.usage.input_tokens
        record.cached_input_tokens = stream.usage.cached_input_tokens
        record.output_tokens = stream.usage.output_tokens
    else:
        record.usage_source = "estimated"
        record.input_tokens = prompt_tokens
        record.output_tokens = service.tokens.count_text(model, text) if text else 0
    record.cost_micros = service.prices.price_for(record.upstream_model, model).cost_micros(
        record.input_tokens, record.cached_input_tokens, record.output_tokens
    )
    charged_tokens = record.input_tokens + record.output_tokens
    counters = await service.settle_reservation(reservation, (charged_tokens, record.cost_micros))
    service.emit_record(record, started)
    if record.outcome != "completed" or not text.strip():
        return None
    text = text.strip()
    summary_tokens = history.summary_history_tokens(
        lambda summary_messages: service.tokens.count_messages(model, summary_messages), text
    )
    return text, summary_tokens, charged_tokens, counters
