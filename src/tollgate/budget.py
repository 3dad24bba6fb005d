"""Budget rules: which accounts a request is charged to, their limits, windows and resets.

Scopes: `user` (limits from the user's plan), `team`, `global` (the whole stack, split
over shards so that no single DynamoDB item takes every write). Windows: `day` (UTC
date) and `month` (UTC calendar month). Pure arithmetic: no I/O here.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

from tollgate.errors import UnknownPlan
from tollgate.ports import Account, Amount, Limits, Scope, Window
from tollgate.pricing import ModelPrice

# Budget items outlive their window so the aggregator can reconcile late and backfilled windows.
BUDGET_RETENTION_DAYS = 35
MONTH_RETENTION_DAYS = 400
DEFAULT_PLAN = "default"
WINDOWS: tuple[Window, ...] = ("day", "month")
# The global scope's shards: enough to spread thousands of writes a second (one DynamoDB
# item takes about 1,000), few enough that a small limit still admits several requests.
MAX_GLOBAL_SHARDS = 32
RESERVATIONS_PER_SHARD = 4
NO_LIMITS = Limits(tokens=None, cost_micros=None)


def utc_day(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%d")


def utc_month(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m")


def period_of(window: Window, now: datetime) -> str:
    return utc_day(now) if window == "day" else utc_month(now)


def next_reset(now: datetime, window: Window = "day") -> datetime:
    moment = now.astimezone(UTC)
    today = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == "day":
        return today + timedelta(days=1)
    first = today.replace(day=1)
    return (
        first.replace(year=first.year + 1, month=1)
        if first.month == 12
        else first.replace(month=first.month + 1)
    )


def seconds_to_reset(now: datetime, window: Window = "day") -> int:
    return max(1, math.ceil((next_reset(now, window) - now).total_seconds()))


def iso_z(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lru_cache(maxsize=256)
def _period_start(window: Window, period: str) -> datetime:
    """The UTC start of a day (yyyy-mm-dd) or month (yyyy-mm) period; parsed once per period
    (strptime is the dearest step of a request's budget arithmetic)."""
    return datetime.strptime(period, "%Y-%m-%d" if window == "day" else "%Y-%m").replace(tzinfo=UTC)


def budget_expires_at(day: str) -> int:
    start = _period_start("day", day)
    return int((start + timedelta(days=BUDGET_RETENTION_DAYS)).timestamp())


def expires_at(account: Account) -> int:
    if account.window == "day":
        return budget_expires_at(account.period)
    start = _period_start("month", account.period)
    return int((start + timedelta(days=MONTH_RETENTION_DAYS)).timestamp())


def resets_at(account: Account) -> datetime:
    return next_reset(_period_start(account.window, account.period), account.window)


def reservation_for(
    prompt_tokens: int, max_output_tokens: int, prices: Iterable[ModelPrice]
) -> tuple[int, int]:
    """Tokens and micro-USD to hold: the whole prompt plus the response cap, at the
    priciest model the request may fall back to (cached input is never assumed)."""
    tokens = prompt_tokens + max_output_tokens
    micros = max(price.cost_micros(prompt_tokens, 0, max_output_tokens) for price in prices)
    return tokens, micros


def hold_for(prompt_tokens: int, cap: int, prices: Iterable[ModelPrice]) -> Amount:
    return Amount(*reservation_for(prompt_tokens, cap, prices))


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True, slots=True)
class Payer:
    """Who a request is charged to: the user, their plan and their team (if any)."""

    user_id: str
    plan: str = DEFAULT_PLAN
    team: str | None = None


@dataclass(frozen=True, slots=True)
class WindowLimits:
    """One scope's limits per window; a window without limits is not tracked."""

    day: Limits | None = None
    month: Limits | None = None

    def of(self, window: Window) -> Limits | None:
        return self.day if window == "day" else self.month


@dataclass(frozen=True, slots=True)
class Budgets:
    plans: Mapping[str, WindowLimits]
    team: WindowLimits | None = None
    global_: WindowLimits | None = None

    @classmethod
    def parse(cls, text: str, default_day: Limits) -> Budgets:
        """BUDGETS (JSON). Raises ValueError with a message that names what is wrong."""
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise ValueError(f"BUDGETS is not valid JSON: {exc}") from exc
        if not isinstance(raw, dict):
            raise ValueError("BUDGETS must be a JSON object")
        unknown = set(raw) - {"plans", "team", "global"}
        if unknown:
            raise ValueError(f"BUDGETS has unknown keys: {', '.join(sorted(unknown))}")
        plans_raw = raw.get("plans", {})
        if not isinstance(plans_raw, dict):
            raise ValueError("BUDGETS.plans must be an object of plan name -> limits")
        plans = {name: _window_limits(f"plans.{name}", value) for name, value in plans_raw.items()}
        plans.setdefault(DEFAULT_PLAN, WindowLimits(day=default_day))
        team = _window_limits("team", raw["team"]) if "team" in raw else None
        global_ = _window_limits("global", raw["global"]) if "global" in raw else None
        return cls(plans=plans, team=team, global_=global_)


def _window_limits(where: str, value: Any) -> WindowLimits:
    if not isinstance(value, dict):
        raise ValueError(f"BUDGETS.{where} must be an object with `day` and/or `month`")
    unknown = set(value) - set(WINDOWS)
    if unknown:
        raise ValueError(f"BUDGETS.{where} has unknown windows: {', '.join(sorted(unknown))}")
    return WindowLimits(**{window: _limits(f"{where}.{window}", value[window]) for window in value})


def _limits(where: str, value: Any) -> Limits:
    if not isinstance(value, dict) or not value:
        raise ValueError(f"BUDGETS.{where} must be an object with `tokens` and/or `usd`")
    unknown = set(value) - {"tokens", "usd"}
    if unknown:
        raise ValueError(f"BUDGETS.{where} has unknown units: {', '.join(sorted(unknown))}")
    tokens, usd = value.get("tokens"), value.get("usd")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or tokens < 0
    ):
        raise ValueError(f"BUDGETS.{where}.tokens must be a non-negative integer")
    if usd is not None and (isinstance(usd, bool) or not isinstance(usd, int | float) or usd < 0):
        raise ValueError(f"BUDGETS.{where}.usd must be a non-negative number")
    return Limits(tokens=tokens, cost_micros=None if usd is None else round(usd * 1_000_000))


# ---------------------------------------------------------------- policy


@dataclass(frozen=True, slots=True)
class BudgetLine:
    """One account a request is charged to, with its limits."""

    account: Account
    limits: Limits
    counts_rate: bool = False  # the user's day account also keeps the per-minute rate window


class BudgetPolicy:
    """Maps a payer and a moment to the accounts (and limits) a request must fit in."""

    def __init__(self, budgets: Budgets, typical_hold: Amount) -> None:
        self.budgets = budgets
        self._typical_hold = typical_hold

    def plan_limits(self, plan: str) -> WindowLimits:
        limits = self.budgets.plans.get(plan)
        if limits is None:
            raise UnknownPlan(f"plan {plan!r} is not defined")
        return limits

    def lines(self, payer: Payer, at: datetime) -> tuple[BudgetLine, ...]:
        plan = self.plan_limits(payer.plan)
        lines = [
            # The user's day is always tracked: it holds the rate window and GET /usage's day.
            BudgetLine(
                Account("user", payer.user_id, "day", utc_day(at)),
                plan.day or NO_LIMITS,
                counts_rate=True,
            )
        ]
        if plan.month is not None:
            lines.append(
                BudgetLine(Account("user", payer.user_id, "month", utc_month(at)), plan.month)
            )
        if payer.team is not None and self.budgets.team is not None:
            lines.extend(self._scope_lines("team", payer.team, self.budgets.team, at))
        if self.budgets.global_ is not None:
            for window in WINDOWS:
                limits = self.budgets.global_.of(window)
                if limits is not None:
                    shards = self.global_shards(limits)
                    shard = random.randrange(shards)
                    lines.append(
                        BudgetLine(
                            Account("global", str(shard), window, period_of(window, at)),
                            shard_limits(limits, shards, shard),
                        )
                    )
        return tuple(lines)

    def _scope_lines(
        self, scope: Scope, owner: str, limits: WindowLimits, at: datetime
    ) -> Iterable[BudgetLine]:
        for window in WINDOWS:
            window_limits = limits.of(window)
            if window_limits is not None:
                yield BudgetLine(
                    Account(scope, owner, window, period_of(window, at)), window_limits
                )

    def other_shards(self, line: BudgetLine) -> list[BudgetLine]:
        """For a global line: the same window's other shards, in random order (else none)."""
        account = line.account
        limits = None if self.budgets.global_ is None else self.budgets.global_.of(account.window)
        if account.scope != "global" or limits is None:
            return []
        shards = self.global_shards(limits)
        others = [shard for shard in range(shards) if str(shard) != account.owner]
        random.shuffle(others)
        return [
            BudgetLine(
                Account("global", str(shard), account.window, account.period),
                shard_limits(limits, shards, shard),
            )
            for shard in others
        ]

    def global_shards(self, limits: Limits) -> int:
        """How many shards a global limit spreads over: each holds several typical requests."""
        counts = []
        if limits.tokens is not None and self._typical_hold.tokens > 0:
            counts.append(limits.tokens // (RESERVATIONS_PER_SHARD * self._typical_hold.tokens))
        if limits.cost_micros is not None and self._typical_hold.micros > 0:
            counts.append(
                limits.cost_micros // (RESERVATIONS_PER_SHARD * self._typical_hold.micros)
            )
        return max(1, min([MAX_GLOBAL_SHARDS, *counts]))


def shard_limits(limits: Limits, shards: int, shard: int) -> Limits:
    """Shard `shard`'s share of a global limit; the shares add up to the limit exactly."""

    def share(total: int | None) -> int | None:
        if total is None:
            return None
        return total // shards + (1 if shard < total % shards else 0)

    return Limits(tokens=share(limits.tokens), cost_micros=share(limits.cost_micros))
