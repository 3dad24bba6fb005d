"""Cost rollups: cost records parsed from log events, aggregated exactly per time window.

Pure domain: no I/O. Money is integer micro-USD throughout and becomes a float of
USD (6 decimals) only in `summary()`.

Line classification (the reader fetches every event containing the term `cost_record`):
- a JSON object whose `message` is `"cost_record"` with valid fields -> a cost record;
- a JSON object whose `message` is anything else -> not a cost record, ignored and
  NOT counted (e.g. an error line that mentions `cost_record` in its text);
- anything else (not JSON, truncated JSON, a non-object, a cost record with missing or
  wrong-typed fields) -> malformed, counted in `skipped_lines`, never fatal. A truncated
  record is the usual cause, and counting it makes the loss visible.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any

from tollgate.aggregation.windows import Window, day_windows, next_day, parse_iso, window_floor
from tollgate.budget import iso_z
from tollgate.observability import COST_RECORD_MESSAGE
from tollgate.pricing import micros_to_usd

MICROS_PER_USD = 1_000_000
# Bucket name for records whose model or prompt is null (e.g. refused before a model was chosen).
NONE_LABEL = "(none)"
TOP_USERS = 10
# Teams in a window summary's `by_team`, biggest spenders first.
TOP_TEAMS = 20
CACHE_HIT = "cache_hit"


class MalformedLineError(ValueError):
    """A log line that should have been a cost record but cannot be read as one."""


# ---------------------------------------------------------------------------- records


@dataclass(frozen=True)
class LogEvent:
    timestamp_ms: int
    message: str


@dataclass(frozen=True)
class ParsedCostRecord:
    user_id: str
    model: str
    outcome: str
    prompt: str
    input_tokens: int
    output_tokens: int
    cost_micros: int
    # The UTC day the request started: the day its budget counter was charged.
    budget_day: str
    # The payer's team; None for a user without one (and for records older than the field).
    team: str | None = None
    # A response cache hit: what the reply it replayed had cost
    saved_micros: int = 0
    # Hidden reasoning of a reasoning model (part of output_tokens)
    reasoning_tokens: int = 0


def usd_to_micros(value: Decimal | int) -> int:
    return int((Decimal(value) * MICROS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


def _count(fields: Mapping[str, Any], name: str, *, default: int | None = None) -> int:
    value = fields.get(name, default)
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise MalformedLineError(f"{name} must be a non-negative integer")
    return value


def _label(fields: Mapping[str, Any], name: str, *, required: bool) -> str:
    value = fields.get(name)
    if value is None and not required:
        return NONE_LABEL
    if not isinstance(value, str) or not value:
        raise MalformedLineError(f"{name} must be a non-empty string")
    return value


def _optional_label(fields: Mapping[str, Any], name: str) -> str | None:
    value = fields.get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise MalformedLineError(f"{name} must be a non-empty string or null")
    return value


def _budget_day(fields: Mapping[str, Any], timestamp_ms: int) -> str:
    started_at = fields.get("started_at")
    if isinstance(started_at, str):
        try:
            return parse_iso(started_at).date().isoformat()
        except ValueError:
            pass
    return datetime.fromtimestamp(timestamp_ms / 1000, tz=UTC).date().isoformat()


def parse_cost_record(event: LogEvent) -> ParsedCostRecord | None:
    """The cost record in `event`, None when the line is some other JSON log line.

    Raises MalformedLineError for a line that cannot be read (see the module docstring).
    """
    try:
        # Decimal floats: cost_usd is read exactly, then converted to integer micros.
        fields = json.loads(event.message, parse_float=Decimal)
    except (ValueError, RecursionError) as error:
        raise MalformedLineError("not JSON") from error
    if not isinstance(fields, dict):
        raise MalformedLineError("not a JSON object")
    if fields.get("message") != COST_RECORD_MESSAGE:
        return None
    cost = fields.get("cost_usd")
    if isinstance(cost, bool) or not isinstance(cost, Decimal | int):
        raise MalformedLineError("cost_usd must be a number")
    try:
        cost_micros = usd_to_micros(cost)
    except (InvalidOperation, OverflowError) as error:
        raise MalformedLineError("cost_usd must be finite") from error
    if cost_micros < 0:
        raise MalformedLineError("cost_usd must not be negative")
    saved = fields.get("saved_usd", 0)  # records written before the response cache have none
    if isinstance(saved, bool) or not isinstance(saved, Decimal | int):
        raise MalformedLineError("saved_usd must be a number")
    try:
        saved_micros = usd_to_micros(saved)
    except (InvalidOperation, OverflowError) as error:
        raise MalformedLineError("saved_usd must be finite") from error
    if saved_micros < 0:
        raise MalformedLineError("saved_usd must not be negative")
    return ParsedCostRecord(
        user_id=_label(fields, "user_id", required=True),
        model=_label(fields, "model", required=False),
        outcome=_label(fields, "outcome", required=True),
        prompt=_label(fields, "prompt", required=False),
        input_tokens=_count(fields, "input_tokens"),
        output_tokens=_count(fields, "output_tokens"),
        cost_micros=cost_micros,
        budget_day=_budget_day(fields, event.timestamp_ms),
        team=_optional_label(fields, "team"),
        saved_micros=saved_micros,
        # records written before reasoning models were priced have none
        reasoning_tokens=_count(fields, "reasoning_tokens", default=0),
    )


# ---------------------------------------------------------------------------- aggregation


@dataclass
class Counts:
    requests: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    reasoning_tokens: int = 0  # part of output_tokens

    def add(self, record: ParsedCostRecord) -> None:
        self.requests += 1
        self.input_tokens += record.input_tokens
        self.output_tokens += record.output_tokens
        self.cost_micros += record.cost_micros
        self.reasoning_tokens += record.reasoning_tokens

    def merge(self, other: Counts) -> None:
        self.requests += other.requests
        self.input_tokens += other.input_tokens
        self.output_tokens += other.output_tokens
        self.cost_micros += other.cost_micros
        self.reasoning_tokens += other.reasoning_tokens

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cost_usd": micros_to_usd(self.cost_micros),
        }


@dataclass
class UserTotal:
    cost_micros: int = 0
    tokens: int = 0


@dataclass
class Rollup:
    """Exact totals of the cost records logged in `window`.

    `requests` counts cost records: one per chat call (covering its fallbacks) and one per
    summary call, as the chat function writes them.
    """

    window: Window
    totals: Counts = field(default_factory=Counts)
    by_model: dict[str, Counts] = field(default_factory=dict)
    by_outcome: dict[str, int] = field(default_factory=dict)
    by_prompt: dict[str, Counts] = field(default_factory=dict)
    users: dict[str, UserTotal] = field(default_factory=dict)
    # False when a stored rollup had to drop its smallest users (item size limits).
    users_complete: bool = True
    # Spend of the records that carry a team, per team.
    teams: dict[str, Counts] = field(default_factory=dict)
    teams_complete: bool = True
    cost_micros_by_budget_day: dict[str, int] = field(default_factory=dict)
    skipped_lines: int = 0
    # What response cache hits saved (their replies' cost when they were produced)
    saved_micros: int = 0

    def add(self, record: ParsedCostRecord) -> None:
        self.totals.add(record)
        self.saved_micros += record.saved_micros
        self.by_model.setdefault(record.model, Counts()).add(record)
        self.by_outcome[record.outcome] = self.by_outcome.get(record.outcome, 0) + 1
        self.by_prompt.setdefault(record.prompt, Counts()).add(record)
        user = self.users.setdefault(record.user_id, UserTotal())
        user.cost_micros += record.cost_micros
        user.tokens += record.input_tokens + record.output_tokens
        if record.team is not None:
            self.teams.setdefault(record.team, Counts()).add(record)
        self.cost_micros_by_budget_day[record.budget_day] = (
            self.cost_micros_by_budget_day.get(record.budget_day, 0) + record.cost_micros
        )

    def merge(self, other: Rollup) -> None:
        self.totals.merge(other.totals)
        self.saved_micros += other.saved_micros
        for model, counts in other.by_model.items():
            self.by_model.setdefault(model, Counts()).merge(counts)
        for outcome, n in other.by_outcome.items():
            self.by_outcome[outcome] = self.by_outcome.get(outcome, 0) + n
        for prompt, counts in other.by_prompt.items():
            self.by_prompt.setdefault(prompt, Counts()).merge(counts)
        for user_id, total in other.users.items():
            mine = self.users.setdefault(user_id, UserTotal())
            mine.cost_micros += total.cost_micros
            mine.tokens += total.tokens
        self.users_complete = self.users_complete and other.users_complete
        for team, counts in other.teams.items():
            self.teams.setdefault(team, Counts()).merge(counts)
        self.teams_complete = self.teams_complete and other.teams_complete
        for day, micros in other.cost_micros_by_budget_day.items():
            self.cost_micros_by_budget_day[day] = (
                self.cost_micros_by_budget_day.get(day, 0) + micros
            )
        self.skipped_lines += other.skipped_lines

    def top_users(self, limit: int = TOP_USERS) -> list[tuple[str, UserTotal]]:
        """Biggest spenders first; ties broken by tokens, then user id, so the order is stable."""
        ranked = sorted(
            self.users.items(), key=lambda item: (-item[1].cost_micros, -item[1].tokens, item[0])
        )
        return ranked[:limit]

    def top_teams(self, limit: int | None = TOP_TEAMS) -> list[tuple[str, Counts]]:
        """Biggest team spenders first (ties: tokens, then team id)."""
        ranked = sorted(
            self.teams.items(),
            key=lambda item: (
                -item[1].cost_micros,
                -(item[1].input_tokens + item[1].output_tokens),
                item[0],
            ),
        )
        return ranked if limit is None else ranked[:limit]

    @property
    def team_cost_micros(self) -> int:
        return sum(counts.cost_micros for counts in self.teams.values())

    def summary(self, top_users: int = TOP_USERS) -> dict[str, Any]:
        """The window summary of docs/CONTRACTS.md, dollars rounded to 6 decimals."""
        return {
            "start": iso_z(self.window.start),
            "end": iso_z(self.window.end),
            **self.totals.summary(),
            "by_model": {name: c.summary() for name, c in sorted(self.by_model.items())},
            "by_outcome": dict(sorted(self.by_outcome.items())),
            "cache_hits": self.by_outcome.get(CACHE_HIT, 0),
            "saved_usd": micros_to_usd(self.saved_micros),
            "by_prompt": {name: c.summary() for name, c in sorted(self.by_prompt.items())},
            "top_users": [
                {
                    "user_id": user_id,
                    "cost_usd": micros_to_usd(total.cost_micros),
                    "tokens": total.tokens,
                }
                for user_id, total in self.top_users(top_users)
            ],
            "by_team": {team: counts.summary() for team, counts in self.top_teams()},
            "skipped_lines": self.skipped_lines,
        }


def aggregate(window: Window, events: Iterable[LogEvent]) -> Rollup:
    """The rollup of the cost records among `events` whose log timestamp is in `window`."""
    rollup = Rollup(window)
    for event in events:
        if not window.contains_ms(event.timestamp_ms):
            continue
        try:
            record = parse_cost_record(event)
        except MalformedLineError:
            rollup.skipped_lines += 1
            continue
        if record is not None:
            rollup.add(record)
    return rollup


def combine(window: Window, parts: Iterable[Rollup]) -> Rollup:
    """One rollup for `window` from rollups of the windows it is made of."""
    combined = Rollup(window)
    for part in parts:
        combined.merge(part)
    return combined


# ---------------------------------------------------------------------------- reconciliation


def reconciliation_windows(day: str, size: timedelta) -> list[Window]:
    """Windows whose records can belong to `day`'s budget counters.

    A request is charged to the day it started but logged when it ends, so a request that
    runs past midnight is logged in the next day's first window (streams are capped far
    below one window by STREAM_TIMEOUT_S).
    """
    return [*day_windows(day, size), day_windows(next_day(day), size)[0]]


def days_closed_by(windows: Iterable[Window]) -> list[str]:
    """Days whose reconciliation window set ends in one of `windows` (a day's first window)."""
    closed = {
        (w.start - timedelta(days=1)).date().isoformat()
        for w in windows
        if w.start == window_floor(w.start, timedelta(days=1))
    }
    return sorted(closed)


@dataclass(frozen=True)
class Reconciliation:
    """A closed day's logged spend against its settled budget counters: the users' day
    counters, and the global scope's shards (None when the stack has no global day limit,
    so no shard was ever written)."""

    day: str
    logs_micros: int
    counters_micros: int
    tolerance_micros: int
    global_counters_micros: int | None = None

    @property
    def difference_micros(self) -> int:
        """Positive when the logs show more spend than the budget counters settled."""
        return self.logs_micros - self.counters_micros

    @property
    def global_difference_micros(self) -> int | None:
        """Positive when the logs show more spend than the global shards settled."""
        if self.global_counters_micros is None:
            return None
        return self.logs_micros - self.global_counters_micros

    @property
    def within_tolerance(self) -> bool:
        differences = [self.difference_micros, self.global_difference_micros]
        return all(abs(d) <= self.tolerance_micros for d in differences if d is not None)

    def summary(self) -> dict[str, Any]:
        global_difference = self.global_difference_micros
        return {
            "day": self.day,
            "logs_cost_usd": micros_to_usd(self.logs_micros),
            "counters_cost_usd": micros_to_usd(self.counters_micros),
            "difference_usd": micros_to_usd(self.difference_micros),
            "global_counters_cost_usd": None
            if self.global_counters_micros is None
            else micros_to_usd(self.global_counters_micros),
            "global_difference_usd": None
            if global_difference is None
            else micros_to_usd(global_difference),
            "within_tolerance": self.within_tolerance,
        }


def reconcile(
    day: str,
    window_rollups: Iterable[Rollup],
    counters_micros: int,
    tolerance_micros: int,
    global_counters_micros: int | None = None,
) -> Reconciliation:
    logs_micros = sum(r.cost_micros_by_budget_day.get(day, 0) for r in window_rollups)
    return Reconciliation(
        day, logs_micros, counters_micros, tolerance_micros, global_counters_micros
    )
