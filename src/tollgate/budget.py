"""Budget arithmetic: UTC days, reservations that cover the real charge, the usage view."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from tollgate.ports import BudgetCounters, Limits
from tollgate.pricing import ModelPrice, micros_to_usd

# Budget items outlive their day so the aggregator can reconcile late and backfilled windows.
BUDGET_RETENTION_DAYS = 35


@dataclass(slots=True)
class Reservation:
    """Tokens and micro-USD held for one request on its user's budget for its start day."""

    user_id: str
    day: str
    request_id: str
    tokens: int
    micros: int

    @property
    def amounts(self) -> tuple[int, int]:
        return self.tokens, self.micros


def utc_day(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%d")


def next_reset(now: datetime) -> datetime:
    today = now.astimezone(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=1)


def seconds_to_reset(now: datetime) -> int:
    return max(1, math.ceil((next_reset(now) - now).total_seconds()))


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def budget_expires_at(day: str) -> int:
    start = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=UTC)
    return int((start + timedelta(days=BUDGET_RETENTION_DAYS)).timestamp())


def reservation_for(
    prompt_tokens: int, max_output_tokens: int, prices: Iterable[ModelPrice]
) -> tuple[int, int]:
    """Tokens and micro-USD to hold: the whole prompt plus the response cap, at the
    priciest model the request may fall back to (cached input is never assumed)."""
    tokens = prompt_tokens + max_output_tokens
    micros = max(price.cost_micros(prompt_tokens, 0, max_output_tokens) for price in prices)
    return tokens, micros


def fits(counters: BudgetCounters, limits: Limits, tokens: int, micros: int) -> bool:
    if counters.tokens + tokens > limits.tokens:
        return False
    return limits.cost_micros is None or counters.cost_micros + micros <= limits.cost_micros


def usage_view(counters: BudgetCounters, limits: Limits, now: datetime) -> dict[str, Any]:
    """GET /usage and the `usage` event's `budget`: tokens_used includes open reservations."""
    cost_limit = limits.cost_micros
    return {
        "day": counters.day,
        "tokens_used": counters.tokens,
        "tokens_remaining": max(0, limits.tokens - counters.tokens),
        "token_limit": limits.tokens,
        "cost_used_usd": micros_to_usd(counters.cost_micros),
        "cost_remaining_usd": (
            None if cost_limit is None else micros_to_usd(max(0, cost_limit - counters.cost_micros))
        ),
        "cost_limit_usd": None if cost_limit is None else micros_to_usd(cost_limit),
        "resets_at": iso_z(next_reset(now)),
    }
