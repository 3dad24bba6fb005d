"""Aggregation windows: half-open UTC intervals, and which ones a Lambda event asks for."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

SECONDS_PER_DAY = 86_400


def parse_iso(text: str) -> datetime:
    """ISO-8601 timestamp -> aware UTC datetime (naive input is taken as UTC)."""
    parsed = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def to_ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


@dataclass(frozen=True, order=True)
class Window:
    """A half-open UTC interval [start, end)."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window bounds must be timezone-aware")
        if self.end <= self.start:
            raise ValueError("window end must be after its start")

    @property
    def start_ms(self) -> int:
        return to_ms(self.start)

    @property
    def end_ms(self) -> int:
        return to_ms(self.end)

    @property
    def day(self) -> str:
        """The UTC day the window starts on (windows never straddle midnight)."""
        return self.start.astimezone(UTC).date().isoformat()

    def contains_ms(self, timestamp_ms: int) -> bool:
        return self.start_ms <= timestamp_ms < self.end_ms


def validate_window_size(size: timedelta) -> None:
    seconds = size.total_seconds()
    if seconds < 60 or seconds % 60 or SECONDS_PER_DAY % seconds:
        raise ValueError("window size must be whole minutes that divide a day evenly")


def window_floor(moment: datetime, size: timedelta) -> datetime:
    seconds = int(size.total_seconds())
    epoch = int(moment.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def window_at(moment: datetime, size: timedelta) -> Window:
    start = window_floor(moment, size)
    return Window(start, start + size)


def last_complete_windows(now: datetime, size: timedelta, count: int = 2) -> list[Window]:
    """The last `count` complete windows before `now`, oldest first.

    The default two are the last complete window plus the one before it, re-aggregated
    because log events can arrive after their window closed.
    """
    validate_window_size(size)
    last_end = window_floor(now, size)
    return [Window(last_end - size * (i + 1), last_end - size * i) for i in reversed(range(count))]


def windows_between(
    start: datetime, end: datetime, size: timedelta, max_windows: int
) -> list[Window]:
    """Aligned windows covering [start, end): bounds are widened to window boundaries.

    Widening (rather than a partial first or last window) keeps every stored rollup a full
    window, so a backfill can never overwrite a full rollup with a partial one.
    """
    validate_window_size(size)
    if end <= start:
        raise ValueError("backfill end must be after its start")
    cursor = window_floor(start, size)
    windows: list[Window] = []
    while cursor < end:
        windows.append(Window(cursor, cursor + size))
        cursor += size
        if len(windows) > max_windows:
            raise ValueError(f"backfill spans more than {max_windows} windows; split it")
    return windows


def day_windows(day: str, size: timedelta) -> list[Window]:
    start = datetime.combine(date.fromisoformat(day), datetime.min.time(), tzinfo=UTC)
    return windows_between(start, start + timedelta(days=1), size, SECONDS_PER_DAY // 60)


def next_day(day: str) -> str:
    return (date.fromisoformat(day) + timedelta(days=1)).isoformat()


def plan_windows(
    event: Mapping[str, Any], now: datetime, size: timedelta, max_windows: int
) -> list[Window]:
    """Windows to aggregate for a Lambda event.

    - EventBridge scheduled event: the last complete window before the event's `time`
      (not the wall clock, so a delayed or retried invocation does the same work) plus
      the window before it;
    - `{"start": ISO, "end": ISO}`: a backfill of that span, one window at a time;
    - `{}`: as scheduled, relative to `now`.
    """
    if "start" in event or "end" in event:
        try:
            start, end = parse_iso(str(event["start"])), parse_iso(str(event["end"]))
        except (KeyError, ValueError) as error:
            raise ValueError("a backfill event needs ISO-8601 'start' and 'end'") from error
        return windows_between(start, end, size, max_windows)
    if event.get("detail-type") == "Scheduled Event" or event.get("source") == "aws.events":
        try:
            return last_complete_windows(parse_iso(str(event["time"])), size)
        except (KeyError, ValueError) as error:
            raise ValueError("a scheduled event needs an ISO-8601 'time'") from error
    if not event:
        return last_complete_windows(now, size)
    raise ValueError("unrecognised event: expected a scheduled event or {'start', 'end'}")
