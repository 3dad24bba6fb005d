"""The bench's statistics and target checks: pure functions, no servers."""

from __future__ import annotations

import math
from decimal import Decimal

import pytest

from bench.operating_cost import request_units, template_memory_mb, token_cost_per_1000
from bench.stats import Call, percentile, ratio, round_trip_depth
from bench.targets import lambda_checks, round_trip_checks
from tollgate.pricing import ModelPrice, ModelSpec, PriceTable


def test_percentile_is_nearest_rank_and_nan_without_values() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.99) == 5.0
    assert percentile(values, 0.0) == 1.0
    assert math.isnan(percentile([], 0.5))


def test_ratio_is_nan_when_there_is_no_floor() -> None:
    assert ratio(3.0, 2.0) == 1.5
    assert math.isnan(ratio(3.0, 0.0))
    assert math.isnan(ratio(math.nan, 2.0))


def test_concurrent_calls_count_as_one_round_trip() -> None:
    # Given three calls that overlap, all between the request and the upstream call
    calls = [Call(10.00, 10.05), Call(10.01, 10.06), Call(10.02, 10.04)]
    # Then the user waited for one round trip
    assert round_trip_depth(calls, sent_at=9.99, upstream_at=10.10) == 1


def test_calls_one_after_another_count_each() -> None:
    # Given a lease, then a history load, then (overlapping) a reservation and a lookup
    calls = [
        Call(10.00, 10.05),
        Call(10.06, 10.11),
        Call(10.12, 10.17),
        Call(10.13, 10.16),
    ]
    assert round_trip_depth(calls, sent_at=9.99, upstream_at=10.20) == 3


def test_calls_outside_the_window_do_not_count() -> None:
    calls = [
        Call(9.00, 9.05),  # a previous request's settle
        Call(10.00, 10.05),
        Call(10.08, 10.30),  # still running when the upstream call went out
    ]
    assert round_trip_depth(calls, sent_at=9.99, upstream_at=10.10) == 1
    assert round_trip_depth([], sent_at=0.0, upstream_at=1.0) == 0


def test_round_trip_target_is_met_only_when_every_sample_took_one() -> None:
    trips = {
        "paths": [
            {"path": "new", "depth_p50": 1, "depth_max": 1},
            {"path": "continued", "depth_p50": 1, "depth_max": 2},
        ]
    }
    assert [check["met"] for check in round_trip_checks(trips)] == [True, False]
    assert round_trip_checks(None) == []


def lambda_size(mb: int, added_ms: float, cpu: float, cold_ms: float) -> dict[str, object]:
    return {
        "memory_mb": mb,
        "warm": {
            "tollgate-memory": {"ttft_added_p50_ms_over_floor": added_ms},
            "tollgate-dynamodb": {"cpu_vs_floor": cpu},
        },
        "cold_first_token_ms": {"floor": 1000.0, "tollgate-dynamodb": cold_ms},
    }


def test_lambda_checks_compare_with_the_floor_at_each_size() -> None:
    lam = {"status": "measured", "sizes": [lambda_size(512, 2.5, 1.8, 1200.0)]}
    checks = lambda_checks(lam)
    assert [(c["goal"], c["met"]) for c in checks[:3]] == [
        ("≤ 2 ms", False),
        ("≤ 2×", True),
        ("≤ 1.3×", True),
    ]
    assert checks[-1]["goal"] == "a size that keeps them"
    assert not checks[-1]["met"]
    assert lambda_checks({"status": "skipped: no cgroup v1"}) == []


def test_the_smallest_size_keeping_every_target_is_checked_against_the_template() -> None:
    sizes = [
        lambda_size(256, 1.0, 1.5, 1500.0),  # cold start 1.5x: not kept
        lambda_size(512, 1.5, 1.9, 1100.0),
        lambda_size(1024, 0.5, 1.7, 1000.0),
    ]
    verdict = lambda_checks({"status": "measured", "sizes": sizes})[-1]
    assert verdict["goal"] == "512 MB"
    assert verdict["met"] == (template_memory_mb() == 512)


@pytest.mark.parametrize(
    ("call", "units"),
    [
        ({"operation": "UpdateItem", "request_bytes": 700}, (1.0, 0.0)),
        ({"operation": "PutItem", "request_bytes": 2100}, (3.0, 0.0)),
        (
            {"operation": "TransactWriteItems", "request_bytes": 1400, "transact_items": 2},
            (4.0, 0.0),
        ),
        ({"operation": "Query", "response_bytes": 5000, "consistent_read": True}, (0.0, 2.0)),
        ({"operation": "GetItem", "response_bytes": 100, "consistent_read": False}, (0.0, 0.5)),
        ({"operation": "DescribeTable"}, (0.0, 0.0)),
    ],
)
def test_request_units_follow_dynamodb_on_demand_rules(
    call: dict[str, object], units: tuple[float, float]
) -> None:
    assert request_units(call) == units


def test_token_cost_reads_the_price_table_and_marks_missing_models() -> None:
    one = Decimal("1")
    spec = ModelSpec(ModelPrice(one, one, one), "o200k_base", False, "max_completion_tokens", None)
    prices = PriceTable(as_of="x", source="test", models={"gpt-4o-mini": spec})
    costs = token_cost_per_1000(prices)
    # 1,500 input + 500 output tokens at $1 per 1M tokens, 1,000 times
    assert costs["gpt-4o-mini"] == pytest.approx(2.0)
    assert costs["gpt-5-nano"] is None
