"""Cost rollups: parsing, exact aggregation, windows, reconciliation (pure, no I/O)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tollgate.aggregation.rollups import (
    NONE_LABEL,
    LogEvent,
    MalformedLineError,
    Rollup,
    aggregate,
    combine,
    days_closed_by,
    parse_cost_record,
    reconcile,
    reconciliation_windows,
)
from tollgate.aggregation.windows import (
    Window,
    day_windows,
    last_complete_windows,
    plan_windows,
    windows_between,
)

HOUR = timedelta(hours=1)
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
WINDOW = Window(T0, T0 + HOUR)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def record_line(**overrides: Any) -> str:
    fields: dict[str, Any] = {
        "level": "INFO",
        "location": "chat:settle:1",
        "message": "cost_record",
        "timestamp": "2026-03-10 12:00:00,000+0000",
        "service": "tollgate",
        "request_id": "r1",
        "user_id": "alice",
        "conversation_id": "c1",
        "model": "gpt-4o-mini",
        "models_tried": ["gpt-4o-mini"],
        "input_tokens": 100,
        "cached_input_tokens": 0,
        "output_tokens": 50,
        "cost_usd": 0.000045,
        "usage_source": "upstream",
        "ttft_ms": 120,
        "latency_ms": 900,
        "outcome": "completed",
        "kind": "chat",
        "prompt": "default",
        "upstream_model": "gpt-4o-mini-2024-07-18",
        "started_at": "2026-03-10T12:00:00Z",
    }
    fields.update(overrides)
    return json.dumps(fields)


def event(line: str, at: datetime = T0 + timedelta(minutes=5)) -> LogEvent:
    return LogEvent(ms(at), line)


class TestParsing:
    def test_reads_a_cost_record_exactly(self) -> None:
        # Given a Powertools cost record line whose cost is not exact in binary floating point
        line = record_line(cost_usd=0.000003)
        # When it is parsed
        record = parse_cost_record(event(line))
        # Then the cost is exact integer micros and the budget day is the request's start day
        assert record is not None
        assert record.cost_micros == 3
        assert (record.user_id, record.model, record.outcome, record.prompt) == (
            "alice",
            "gpt-4o-mini",
            "completed",
            "default",
        )
        assert record.budget_day == "2026-03-10"

    def test_other_json_log_lines_are_not_cost_records(self) -> None:
        # Given a JSON log line that mentions cost_record but is another message
        line = json.dumps({"level": "ERROR", "message": "could not write cost_record"})
        # When / Then it is not a record and not malformed
        assert parse_cost_record(event(line)) is None

    @pytest.mark.parametrize(
        "line",
        [
            "cost_record but not JSON",
            record_line()[:-20],  # truncated by the log pipeline
            '["cost_record"]',
            record_line(cost_usd="0.1"),
            record_line(cost_usd=-0.5),
            record_line(input_tokens=-1),
            record_line(output_tokens=True),
            record_line(user_id=None),
            record_line(outcome=""),
            record_line(cost_usd=float("nan")),
            record_line(team=7),
            record_line(team=""),
        ],
    )
    def test_unreadable_cost_records_are_malformed(self, line: str) -> None:
        # Given a line that should be a cost record but cannot be read
        # When / Then parsing raises, so the caller can count it
        with pytest.raises(MalformedLineError):
            parse_cost_record(event(line))

    def test_null_model_and_prompt_fall_into_a_none_bucket(self) -> None:
        # Given a budget refusal recorded before any model was chosen
        line = record_line(model=None, prompt=None, outcome="budget_refused", cost_usd=0)
        # When it is parsed
        record = parse_cost_record(event(line))
        # Then it is kept, under the none label
        assert record is not None
        assert (record.model, record.prompt) == (NONE_LABEL, NONE_LABEL)


class TestAggregation:
    def test_sums_exactly_per_model_outcome_prompt_and_user(self) -> None:
        # Given ten records whose float costs would drift when summed as floats
        events = [
            event(
                record_line(
                    user_id="alice", team="acme", cost_usd=0.1, input_tokens=10, output_tokens=1
                )
            )
            for _ in range(10)
        ]
        events += [
            event(
                record_line(
                    user_id="bob",
                    model="gpt-4o",
                    outcome="cancelled",
                    prompt="tutor",
                    cost_usd=0.2,
                    input_tokens=5,
                    output_tokens=0,
                )
            ),
            event(
                record_line(
                    user_id="carol", team="zeta", outcome="budget_refused", cost_usd=0, model=None
                )
            ),
        ]
        # When they are aggregated
        summary = aggregate(WINDOW, events).summary()
        # Then every total is exact
        assert summary == {
            "start": "2026-03-10T12:00:00Z",
            "end": "2026-03-10T13:00:00Z",
            "requests": 12,
            "input_tokens": 10 * 10 + 5 + 100,
            "output_tokens": 10 * 1 + 0 + 50,
            "reasoning_tokens": 0,
            "cost_usd": 1.2,
            "by_model": {
                NONE_LABEL: {
                    "requests": 1,
                    "input_tokens": 100,
                    "output_tokens": 50,
                    "reasoning_tokens": 0,
                    "cost_usd": 0.0,
                },
                "gpt-4o": {
                    "requests": 1,
                    "input_tokens": 5,
                    "output_tokens": 0,
                    "reasoning_tokens": 0,
                    "cost_usd": 0.2,
                },
                "gpt-4o-mini": {
                    "requests": 10,
                    "input_tokens": 100,
                    "output_tokens": 10,
                    "reasoning_tokens": 0,
                    "cost_usd": 1.0,
                },
            },
            "by_outcome": {"budget_refused": 1, "cancelled": 1, "completed": 10},
            "cache_hits": 0,
            "saved_usd": 0.0,
            "by_prompt": {
                "default": {
                    "requests": 11,
                    "input_tokens": 200,
                    "output_tokens": 60,
                    "reasoning_tokens": 0,
                    "cost_usd": 1.0,
                },
                "tutor": {
                    "requests": 1,
                    "input_tokens": 5,
                    "output_tokens": 0,
                    "reasoning_tokens": 0,
                    "cost_usd": 0.2,
                },
            },
            "top_users": [
                {"user_id": "alice", "cost_usd": 1.0, "tokens": 110},
                {"user_id": "bob", "cost_usd": 0.2, "tokens": 5},
                {"user_id": "carol", "cost_usd": 0.0, "tokens": 150},
            ],
            # bob has no team: his spend is in no team's
            "by_team": {
                "acme": {
                    "requests": 10,
                    "input_tokens": 100,
                    "output_tokens": 10,
                    "reasoning_tokens": 0,
                    "cost_usd": 1.0,
                },
                "zeta": {
                    "requests": 1,
                    "input_tokens": 100,
                    "output_tokens": 50,
                    "reasoning_tokens": 0,
                    "cost_usd": 0.0,
                },
            },
            "skipped_lines": 0,
        }

    def test_malformed_lines_are_counted_and_other_lines_ignored(self) -> None:
        # Given a record, two malformed lines and an unrelated JSON line
        events = [
            event(record_line()),
            event("not json cost_record"),
            event(record_line()[:40]),
            event(json.dumps({"message": "retrying cost_record write"})),
        ]
        # When they are aggregated
        rollup = aggregate(WINDOW, events)
        # Then only the malformed lines are counted as skipped
        assert (rollup.totals.requests, rollup.skipped_lines) == (1, 2)

    def test_a_record_belongs_to_the_window_of_its_log_timestamp(self) -> None:
        # Given records at the window's first and last millisecond and one at its end
        events = [
            event(record_line(user_id="first"), T0),
            event(record_line(user_id="last"), T0 + HOUR - timedelta(milliseconds=1)),
            event(record_line(user_id="next"), T0 + HOUR),
            event(record_line(user_id="before"), T0 - timedelta(milliseconds=1)),
        ]
        # When the window is aggregated
        rollup = aggregate(WINDOW, events)
        # Then the window is half-open: [start, end)
        assert sorted(rollup.users) == ["first", "last"]

    def test_reasoning_tokens_are_summed_beside_the_output_they_are_part_of(self) -> None:
        # Given a reasoning model's record and one written before the field existed
        lines = [record_line(output_tokens=90, reasoning_tokens=64), record_line()]
        # Then the window counts the hidden reasoning, per model too
        summary = aggregate(WINDOW, [event(line) for line in lines]).summary()
        assert summary["reasoning_tokens"] == 64
        assert summary["output_tokens"] == 140
        assert summary["by_model"]["gpt-4o-mini"]["reasoning_tokens"] == 64

    def test_empty_window(self) -> None:
        summary = aggregate(WINDOW, []).summary()
        assert summary["requests"] == 0
        assert summary["cost_usd"] == 0.0
        assert summary["by_model"] == summary["by_outcome"] == summary["by_prompt"] == {}
        assert summary["top_users"] == []

    def test_top_users_are_limited_and_stably_ordered(self) -> None:
        # Given twelve users, two of them tied
        events = [event(record_line(user_id=f"u{i:02}", cost_usd=i / 100)) for i in range(12)]
        events.append(event(record_line(user_id="u10b", cost_usd=0.1)))
        # When aggregated
        top = aggregate(WINDOW, events).summary()["top_users"]
        # Then the ten biggest come first, ties in user id order
        assert [u["user_id"] for u in top] == [
            "u11", "u10", "u10b", "u09", "u08", "u07", "u06", "u05", "u04", "u03",
        ]  # fmt: skip

    def test_combining_windows_equals_aggregating_them_together(self) -> None:
        # Given records in two adjacent windows
        later = Window(T0 + HOUR, T0 + 2 * HOUR)
        first = [event(record_line(user_id="a", cost_usd=0.3))]
        second = [event(record_line(user_id="a", cost_usd=0.4), T0 + HOUR + timedelta(minutes=1))]
        # When their rollups are combined
        both = Window(T0, T0 + 2 * HOUR)
        combined = combine(both, [aggregate(WINDOW, first), aggregate(later, second)])
        # Then the result equals one aggregation over both
        assert combined.summary() == aggregate(both, first + second).summary()


class TestWindows:
    def test_scheduled_run_takes_the_last_complete_window_and_the_one_before(self) -> None:
        now = datetime(2026, 3, 10, 13, 0, 7, tzinfo=UTC)
        assert last_complete_windows(now, HOUR) == [
            Window(T0 - HOUR, T0),
            Window(T0, T0 + HOUR),
        ]

    def test_at_an_exact_boundary_the_window_just_ended_is_complete(self) -> None:
        assert last_complete_windows(T0 + HOUR, HOUR)[-1] == WINDOW

    def test_scheduled_event_uses_its_own_time_not_the_clock(self) -> None:
        scheduled = {"detail-type": "Scheduled Event", "source": "aws.events",
                     "time": "2026-03-10T13:00:07Z"}  # fmt: skip
        windows = plan_windows(scheduled, datetime(2030, 1, 1, tzinfo=UTC), HOUR, 10)
        assert windows[-1] == WINDOW

    def test_backfill_is_widened_to_whole_windows(self) -> None:
        event_ = {"start": "2026-03-10T12:30:00Z", "end": "2026-03-10T14:00:01+00:00"}
        windows = plan_windows(event_, T0, HOUR, 10)
        assert [w.start.hour for w in windows] == [12, 13, 14]

    @pytest.mark.parametrize(
        "bad",
        [
            {"start": "2026-03-10T12:00:00Z"},
            {"start": "yesterday", "end": "today"},
            {"start": "2026-03-10T12:00:00Z", "end": "2026-03-10T11:00:00Z"},
            {"detail-type": "Scheduled Event"},
            {"unexpected": True},
        ],
    )
    def test_bad_events_are_refused(self, bad: dict[str, Any]) -> None:
        with pytest.raises(ValueError):  # noqa: PT011
            plan_windows(bad, T0, HOUR, 10)

    def test_backfills_are_bounded(self) -> None:
        with pytest.raises(ValueError, match="split it"):
            windows_between(T0, T0 + 11 * HOUR, HOUR, 10)

    def test_window_size_must_divide_a_day(self) -> None:
        with pytest.raises(ValueError, match="divide a day"):
            last_complete_windows(T0, timedelta(minutes=7))

    def test_a_day_has_24_hourly_windows(self) -> None:
        windows = day_windows("2026-03-10", HOUR)
        assert (len(windows), windows[0].start, windows[-1].end) == (
            24,
            datetime(2026, 3, 10, tzinfo=UTC),
            datetime(2026, 3, 11, tzinfo=UTC),
        )


class TestReconciliation:
    def test_a_day_is_closed_by_the_next_days_first_window(self) -> None:
        midnight = datetime(2026, 3, 11, tzinfo=UTC)
        assert days_closed_by([Window(midnight - HOUR, midnight)]) == []
        assert days_closed_by([Window(midnight, midnight + HOUR)]) == ["2026-03-10"]
        assert reconciliation_windows("2026-03-10", HOUR)[-1] == Window(midnight, midnight + HOUR)

    def test_records_count_toward_the_day_their_request_started(self) -> None:
        # Given a request that started before midnight and was logged after it
        midnight = datetime(2026, 3, 11, tzinfo=UTC)
        late = event(
            record_line(cost_usd=0.5, started_at="2026-03-10T23:59:30Z"),
            midnight + timedelta(seconds=20),
        )
        day_before = event(record_line(cost_usd=0.25), midnight - timedelta(minutes=1))
        rollups = [
            aggregate(Window(midnight - HOUR, midnight), [day_before]),
            aggregate(Window(midnight, midnight + HOUR), [late]),
        ]
        # When the day is reconciled against counters that settled both
        result = reconcile("2026-03-10", rollups, counters_micros=750_000, tolerance_micros=0)
        # Then both records count toward the 10th and nothing differs
        assert (result.logs_micros, result.difference_micros) == (750_000, 0)
        assert result.within_tolerance

    def test_a_difference_beyond_the_tolerance_is_reported(self) -> None:
        rollup = Rollup(WINDOW)
        rollup.cost_micros_by_budget_day["2026-03-10"] = 1_000_000
        result = reconcile("2026-03-10", [rollup], counters_micros=900_000, tolerance_micros=10)
        assert result.difference_micros == 100_000
        assert not result.within_tolerance
        assert result.summary()["difference_usd"] == 0.1

    def test_the_global_shards_are_reconciled_against_the_same_records(self) -> None:
        # Given a day whose records cost $1, users' counters agreeing, global shards short
        rollup = Rollup(WINDOW)
        rollup.cost_micros_by_budget_day["2026-03-10"] = 1_000_000
        result = reconcile(
            "2026-03-10",
            [rollup],
            counters_micros=1_000_000,
            tolerance_micros=10,
            global_counters_micros=400_000,
        )
        # Then the global difference is reported, and it alone breaks the tolerance
        assert result.difference_micros == 0
        assert result.global_difference_micros == 600_000
        assert not result.within_tolerance
        assert result.summary()["global_counters_cost_usd"] == 0.4
        assert result.summary()["global_difference_usd"] == 0.6

    def test_a_stack_without_global_shards_reports_no_global_figure(self) -> None:
        rollup = Rollup(WINDOW)
        result = reconcile("2026-03-10", [rollup], counters_micros=0, tolerance_micros=0)
        assert result.global_difference_micros is None
        assert result.within_tolerance
        assert result.summary()["global_difference_usd"] is None


class TestTeams:
    def test_day_rollups_merge_team_spend_and_rank_the_top_teams(self) -> None:
        first = aggregate(WINDOW, [event(record_line(team="acme", cost_usd=0.3))])
        second = aggregate(
            WINDOW,
            [
                event(record_line(team="acme", cost_usd=0.3)),
                event(record_line(team="beta", cost_usd=0.5)),
                event(record_line(cost_usd=9)),  # no team
            ],
        )
        day = combine(WINDOW, [first, second])
        assert [(team, c.cost_micros) for team, c in day.top_teams()] == [
            ("acme", 600_000),
            ("beta", 500_000),
        ]
        assert day.team_cost_micros == 1_100_000
        assert day.teams["acme"].requests == 2


class TestResponseCache:
    def test_hits_and_the_dollars_they_saved_are_summed(self) -> None:
        # Given a window with a paid reply, two cache hits and an older record without saved_usd
        events = [
            event(record_line(saved_usd=0)),
            event(record_line(outcome="cache_hit", cost_usd=0, saved_usd=0.000045)),
            event(record_line(outcome="cache_hit", cost_usd=0, saved_usd=0.000105)),
            event(record_line()),
        ]
        # When it is aggregated, also in two parts combined
        rollup = aggregate(WINDOW, events)
        halves = combine(WINDOW, [aggregate(WINDOW, events[:2]), aggregate(WINDOW, events[2:])])
        # Then the summary shows the hits and what they saved
        summary = rollup.summary()
        assert (summary["cache_hits"], summary["saved_usd"]) == (2, 0.00015)
        assert summary["by_outcome"]["cache_hit"] == 2
        assert halves.summary() == summary

    def test_a_malformed_saved_amount_is_a_skipped_line(self) -> None:
        rollup = aggregate(WINDOW, [event(record_line(saved_usd="lots")), event(record_line())])
        assert (rollup.skipped_lines, rollup.totals.requests) == (1, 1)
