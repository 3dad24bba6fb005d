"""Budget arithmetic (docs/CONTRACTS.md "Budgets": the accounting rule and GET /usage)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tollgate.budget import (
    budget_expires_at,
    iso_z,
    next_reset,
    reservation_for,
    seconds_to_reset,
    utc_day,
)
from tollgate.ports import BudgetCounters, Limits
from tollgate.pricing import price_table
from tollgate.wire.chat import usage_view

USAGE_FIELDS = {
    "day",
    "tokens_used",
    "tokens_remaining",
    "token_limit",
    "cost_used_usd",
    "cost_remaining_usd",
    "cost_limit_usd",
    "resets_at",
}

TOKYO = timezone(timedelta(hours=9))
NEW_YORK_WINTER = timezone(timedelta(hours=-5))


def test_utc_day_just_before_and_at_midnight() -> None:
    # Given moments either side of 00:00 UTC
    before = datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC)
    at = datetime(2026, 3, 2, 0, 0, tzinfo=UTC)
    # Then the day flips exactly at midnight
    assert utc_day(before) == "2026-03-01"
    assert utc_day(at) == "2026-03-02"


def test_utc_day_from_non_utc_aware_datetimes() -> None:
    # Given local times whose UTC date differs from their local date
    tokyo_morning = datetime(2026, 3, 2, 8, 0, tzinfo=TOKYO)  # 2026-03-01 23:00 UTC
    new_york_evening = datetime(2026, 3, 1, 20, 0, tzinfo=NEW_YORK_WINTER)  # 03-02 01:00 UTC
    # Then the UTC date is what counts
    assert utc_day(tokyo_morning) == "2026-03-01"
    assert utc_day(new_york_evening) == "2026-03-02"


def test_utc_day_across_year_end_and_leap_day() -> None:
    assert utc_day(datetime(2027, 1, 1, 4, 0, tzinfo=TOKYO)) == "2026-12-31"
    assert utc_day(datetime(2028, 2, 29, 12, tzinfo=UTC)) == "2028-02-29"


def test_next_reset_is_the_following_utc_midnight() -> None:
    # Given any moment of a UTC day, including its first instant
    for moment in (
        datetime(2026, 3, 1, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 34, 56, tzinfo=UTC),
        datetime(2026, 3, 1, 23, 59, 59, 999999, tzinfo=UTC),
    ):
        # Then the reset is 2026-03-02T00:00Z
        assert next_reset(moment) == datetime(2026, 3, 2, tzinfo=UTC)


def test_next_reset_from_non_utc_datetime_is_utc_midnight() -> None:
    # Given 08:00 in Tokyo (23:00 UTC the day before)
    moment = datetime(2026, 3, 2, 8, 0, tzinfo=TOKYO)
    # Then the reset is one hour later, at 00:00 UTC on the 2nd
    reset = next_reset(moment)
    assert reset == datetime(2026, 3, 2, tzinfo=UTC)
    assert reset - moment == timedelta(hours=1)
    assert reset.utcoffset() == timedelta(0)


def test_next_reset_across_month_and_year() -> None:
    assert next_reset(datetime(2026, 2, 28, 5, tzinfo=UTC)) == datetime(2026, 3, 1, tzinfo=UTC)
    assert next_reset(datetime(2026, 12, 31, 5, tzinfo=UTC)) == datetime(2027, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("moment", "expected"),
    [
        (datetime(2026, 3, 1, 0, 0, tzinfo=UTC), 86_400),
        (datetime(2026, 3, 1, 23, 0, tzinfo=UTC), 3_600),
        (datetime(2026, 3, 1, 23, 59, 59, tzinfo=UTC), 1),
        (datetime(2026, 3, 1, 23, 59, 58, 500_000, tzinfo=UTC), 2),  # rounded up
        (datetime(2026, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC), 1),  # never 0
        (datetime(2026, 3, 2, 8, 30, tzinfo=TOKYO), 1_800),  # 23:30 UTC
        (datetime(2026, 3, 1, 18, 0, tzinfo=NEW_YORK_WINTER), 3_600 * 1),  # 23:00 UTC
    ],
)
def test_seconds_to_reset(moment: datetime, expected: int) -> None:
    # Given a moment, the Retry-After for a budget refusal is whole seconds to midnight UTC
    assert seconds_to_reset(moment) == expected


def test_iso_z_is_utc_with_z_suffix() -> None:
    # Given a non-UTC aware datetime
    moment = datetime(2026, 3, 2, 9, 0, 5, tzinfo=TOKYO)
    # Then it is shown in UTC, ISO-8601, ending in Z
    text = iso_z(moment)
    assert text == "2026-03-02T00:00:05Z"
    assert text.endswith("Z")
    assert "+" not in text
    assert datetime.fromisoformat(text) == moment


def test_budget_expires_at_is_retention_days_after_the_day_start() -> None:
    # Given a day string
    expires = budget_expires_at("2026-03-01")
    # Then the TTL is an epoch in seconds, a fixed number of whole days after 00:00 UTC
    start = datetime(2026, 3, 1, tzinfo=UTC)
    assert isinstance(expires, int)
    delta = datetime.fromtimestamp(expires, UTC) - start
    assert delta.seconds == 0
    assert delta.days >= 2  # outlives the day so late aggregation can still reconcile
    assert budget_expires_at("2026-03-02") - expires == 86_400


def test_reservation_covers_prompt_plus_cap_at_the_priciest_model() -> None:
    # Given the default chain and a 1000-token prompt with an 800-token cap
    table = price_table()
    chain = [table.price(m) for m in ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo")]
    # When reserving
    tokens, micros = reservation_for(1000, 800, chain)
    # Then tokens = prompt + cap and dollars are gpt-4o's uncached price (the priciest)
    assert tokens == 1800
    assert micros == 1000 * 2.5 + 800 * 10  # 10_500 micro-USD
    assert micros >= max(p.cost_micros(1000, 0, 800) for p in chain)


def test_reservation_order_of_chain_does_not_matter() -> None:
    table = price_table()
    forward = [table.price(m) for m in ("gpt-4o-mini", "gpt-4o")]
    assert reservation_for(10, 5, forward) == reservation_for(10, 5, forward[::-1])


def test_reservation_for_cheap_single_model_rounds_up() -> None:
    # Given only gpt-4o-mini and a tiny request
    price = price_table().price("gpt-4o-mini")
    # When reserving 1 prompt token and 1 output token (0.75 micro-USD)
    tokens, micros = reservation_for(1, 1, [price])
    # Then the hold is never below the charge
    assert tokens == 2
    assert micros == 1


def test_usage_view_without_dollar_limit_has_null_cost_limit_fields() -> None:
    # Given a user with some usage and no dollar limit
    counters = BudgetCounters(period="2026-03-01", tokens=1200, cost_micros=1_234)
    limits = Limits(tokens=50_000, cost_micros=None)
    # When viewing usage
    view = usage_view(counters, limits, datetime(2026, 3, 1, 15, tzinfo=UTC))
    # Then exactly the documented fields, cost limit fields null
    assert set(view) == USAGE_FIELDS
    assert view == {
        "day": "2026-03-01",
        "tokens_used": 1200,
        "tokens_remaining": 48_800,
        "token_limit": 50_000,
        "cost_used_usd": 0.001234,
        "cost_remaining_usd": None,
        "cost_limit_usd": None,
        "resets_at": "2026-03-02T00:00:00Z",
    }


def test_usage_view_with_dollar_limit() -> None:
    # Given a $1 daily limit and $0.25 used
    counters = BudgetCounters(period="2026-03-01", tokens=10, cost_micros=250_000)
    limits = Limits(tokens=100, cost_micros=1_000_000)
    # When viewing usage
    view = usage_view(counters, limits, datetime(2026, 3, 1, 1, tzinfo=UTC))
    # Then the cost fields are in dollars
    assert view["cost_used_usd"] == 0.25
    assert view["cost_remaining_usd"] == 0.75
    assert view["cost_limit_usd"] == 1.0
    assert view["tokens_remaining"] == 90


def test_usage_view_for_a_new_user_is_zeros() -> None:
    # Given no requests today
    view = usage_view(
        BudgetCounters(period="2026-03-01"),
        Limits(tokens=50_000, cost_micros=2_000_000),
        datetime(2026, 3, 1, tzinfo=UTC),
    )
    # Then zeros, not missing fields
    assert view["tokens_used"] == 0
    assert view["cost_used_usd"] == 0
    assert view["tokens_remaining"] == 50_000
    assert view["cost_remaining_usd"] == 2.0


def test_usage_view_remaining_never_negative() -> None:
    # Given usage over both limits (e.g. a settlement beyond the reservation)
    counters = BudgetCounters(period="2026-03-01", tokens=60_000, cost_micros=3_000_000)
    limits = Limits(tokens=50_000, cost_micros=2_000_000)
    # When viewing usage
    view = usage_view(counters, limits, datetime(2026, 3, 1, tzinfo=UTC))
    # Then remaining is clamped at zero while used shows the truth
    assert view["tokens_remaining"] == 0
    assert view["cost_remaining_usd"] == 0
    assert view["tokens_used"] == 60_000
    assert view["cost_used_usd"] == 3.0


def test_usage_view_rounds_dollars_to_six_decimals() -> None:
    # Given micro-USD amounts
    counters = BudgetCounters(period="2026-03-01", tokens=0, cost_micros=1)
    limits = Limits(tokens=1, cost_micros=3_333_333)
    view = usage_view(counters, limits, datetime(2026, 3, 1, tzinfo=UTC))
    # Then each dollar field is the micros over 1e6, to 6 decimals
    assert view["cost_used_usd"] == 0.000001
    assert view["cost_remaining_usd"] == 3.333332
    assert view["cost_limit_usd"] == 3.333333
    for key in ("cost_used_usd", "cost_remaining_usd", "cost_limit_usd"):
        assert round(view[key], 6) == view[key]


def test_usage_view_resets_at_uses_now_in_utc() -> None:
    # Given "now" expressed in Tokyo time, 08:00 on the 2nd = 23:00 UTC on the 1st
    view = usage_view(
        BudgetCounters(period="2026-03-01"),
        Limits(tokens=1, cost_micros=None),
        datetime(2026, 3, 2, 8, tzinfo=TOKYO),
    )
    # Then resets_at is the next UTC midnight, in Z form
    assert view["resets_at"] == "2026-03-02T00:00:00Z"
