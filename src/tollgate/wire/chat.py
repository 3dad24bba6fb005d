"""POST /chat's wire format: the request body, the SSE events, and the JSON views of
budgets and conversations (GET /usage, GET /conversations/{id})."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Any

from tollgate.budget import iso_z, next_reset, resets_at
from tollgate.chat_config import ChatRequest
from tollgate.errors import InvalidRequest
from tollgate.ledger import Balance
from tollgate.ports import BudgetCounters, ConversationView, Limits, ReplyStream, Window
from tollgate.pricing import micros_to_usd
from tollgate.stream import Outcome
from tollgate.wire import sse
from tollgate.wire.body import json_object


def parse_chat_request(body: bytes) -> ChatRequest:
    """Validate a POST /chat body (unknown fields are ignored)."""
    payload = json_object(body)
    message = payload.get("message")
    if not isinstance(message, str) or not message.strip():
        raise InvalidRequest("`message` must be a non-empty string")
    conversation_id = payload.get("conversation_id")
    if conversation_id is not None and (
        not isinstance(conversation_id, str) or not conversation_id
    ):
        raise InvalidRequest("`conversation_id` must be a non-empty string or null")
    prompt = payload.get("prompt", "default")
    if prompt is None:
        prompt = "default"
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("`prompt` must be the name of a prompt")
    max_tokens = payload.get("max_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise InvalidRequest("`max_tokens` must be an integer or null")
        if max_tokens < 1:
            raise InvalidRequest("`max_tokens` must be at least 1")
    return ChatRequest(message, conversation_id, prompt, max_tokens)


# ---------------------------------------------------------------- budgets


def _remaining(limit: int | None, used: int) -> int | None:
    return None if limit is None else max(0, limit - used)


def _usd(micros: int | None) -> float | None:
    return None if micros is None else micros_to_usd(micros)


def _figures(counters: BudgetCounters, limits: Limits, resets: datetime) -> dict[str, Any]:
    return {
        "tokens_used": counters.tokens,
        "tokens_remaining": _remaining(limits.tokens, counters.tokens),
        "token_limit": limits.tokens,
        "cost_used_usd": micros_to_usd(counters.cost_micros),
        "cost_remaining_usd": _usd(_remaining(limits.cost_micros, counters.cost_micros)),
        "cost_limit_usd": _usd(limits.cost_micros),
        "resets_at": iso_z(resets),
    }


def usage_view(
    counters: BudgetCounters, limits: Limits, now: datetime, window: Window = "day"
) -> dict[str, Any]:
    """A budget account's figures as of `now`; `tokens_used` includes open reservations."""
    return {"day": counters.period, **_figures(counters, limits, next_reset(now, window))}


def balance_view(balance: Balance) -> dict[str, Any]:
    """The `usage` event's `budget`: the user's day account after settlement."""
    account = balance.line.account
    return {
        "day": account.period,
        **_figures(balance.counters, balance.line.limits, resets_at(account)),
    }


def usage_json(plan: str, balances: list[Balance]) -> dict[str, Any]:
    """GET /usage: the user's day (flat, as always), the plan, and each limited window."""
    day = balance_view(balances[0])
    budgets = []
    for balance in balances:
        limits = balance.line.limits
        if limits.tokens is None and limits.cost_micros is None:
            continue
        account = balance.line.account
        figures = _figures(balance.counters, limits, resets_at(account))
        budgets.append({"scope": account.scope, "window": account.window, **figures})
    return {**day, "plan": plan, "budgets": budgets}


# ---------------------------------------------------------------- SSE


def usage_event(outcome: Outcome) -> bytes:
    budget = None if outcome.balance is None else balance_view(outcome.balance)
    data: dict[str, Any] = {
        "input_tokens": outcome.input_tokens,
        "cached_input_tokens": outcome.cached_input_tokens,
        "output_tokens": outcome.output_tokens,
        "reasoning_tokens": outcome.reasoning_tokens,
        "cost_usd": micros_to_usd(outcome.cost_micros),
        "budget": budget,
    }
    if budget is None:
        data["budget_unavailable"] = "the budget store could not be read; try GET /usage"
    if outcome.summary is not None:
        # Folding older turns into the summary is charged to the same budget.
        data["summary"] = {
            "input_tokens": outcome.summary.input_tokens,
            "output_tokens": outcome.summary.output_tokens,
            "cost_usd": micros_to_usd(outcome.summary.cost_micros),
        }
    if outcome.saved_micros is not None:
        data["saved_usd"] = micros_to_usd(outcome.saved_micros)
    return sse.event("usage", data)


async def chat_frames(stream: ReplyStream) -> AsyncGenerator[bytes, None]:
    """POST /chat's SSE: meta, deltas, usage, error (when it failed), [DONE]."""
    meta: dict[str, Any] = {
        "conversation_id": stream.conversation_id,
        "request_id": stream.request_id,
        "model": stream.model,
    }
    if stream.cached:
        meta["cached"] = True
    yield sse.event("meta", meta)
    async for delta in stream.events():
        if isinstance(delta, str):
            yield sse.delta(delta)
    outcome = await stream.finish_now()
    yield usage_event(outcome)
    failure = outcome.failure()
    if failure is not None:
        yield sse.event("error", {"code": failure[0], "message": failure[1]})
    yield sse.DONE


# ---------------------------------------------------------------- conversations


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
