"""CloudWatch metrics of the aggregator: per-window values at the window's own timestamp.

CloudWatch keeps every datapoint it is sent, so a re-run window adds a second, equal (or,
with late events, larger) datapoint at the same timestamp: read these metrics with the
`Maximum` statistic over a period of one window, never `Sum`. The day-to-date total
(`DailyCostUSD`) exists so that the daily-spend alarm can use `Maximum` too.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast

from tollgate.adapters.aws import BATCH_PROFILE, aws_client
from tollgate.aggregation.rollups import Reconciliation, Rollup
from tollgate.aggregation.windows import Window

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_cloudwatch.type_defs import DimensionTypeDef, MetricDatumTypeDef

# PutMetricData accepts up to 1000 metrics per call; stay well inside the 1 MB payload too.
MAX_DATUMS_PER_CALL = 500
# CloudWatch rejects datapoints older than two weeks; leave a margin for slow runs.
MAX_DATAPOINT_AGE = timedelta(days=14) - timedelta(hours=1)

# Every (metric name, dimension names) this publisher can emit, for the dashboard test.
PUBLISHED_METRICS: frozenset[tuple[str, tuple[str, ...]]] = frozenset(
    {
        ("WindowCostUSD", ()),
        ("WindowCostUSD", ("Model",)),
        ("WindowInputTokens", ()),
        ("WindowInputTokens", ("Model",)),
        ("WindowOutputTokens", ()),
        ("WindowOutputTokens", ("Model",)),
        ("WindowRequests", ()),
        ("WindowRequests", ("Model",)),
        ("WindowRequests", ("Outcome",)),
        ("WindowSavedUSD", ()),
        ("SkippedCostRecordLines", ()),
        ("DailyCostUSD", ()),
        ("ReconciliationDifferenceUSD", ()),
        ("ScopeCostUSD", ("Scope",)),
    }
)


def cloudwatch_client() -> CloudWatchClient:
    return cast("CloudWatchClient", aws_client("cloudwatch", BATCH_PROFILE))


def _datum(
    name: str,
    value: float,
    timestamp: datetime,
    unit: str = "None",
    dimensions: Iterable[tuple[str, str]] = (),
) -> MetricDatumTypeDef:
    dims: list[DimensionTypeDef] = [{"Name": k, "Value": v} for k, v in dimensions]
    return {
        "MetricName": name,
        "Dimensions": dims,
        "Timestamp": timestamp,
        "Value": value,
        "Unit": unit,  # type: ignore[typeddict-item]
    }


def window_metric_data(rollup: Rollup, day_to_date_micros: int) -> list[MetricDatumTypeDef]:
    at = rollup.window.start
    totals = rollup.totals
    data = [
        _datum("WindowCostUSD", totals.cost_micros / 1e6, at),
        _datum("WindowInputTokens", totals.input_tokens, at, "Count"),
        _datum("WindowOutputTokens", totals.output_tokens, at, "Count"),
        _datum("WindowRequests", totals.requests, at, "Count"),
        _datum("WindowSavedUSD", rollup.saved_micros / 1e6, at),
        _datum("SkippedCostRecordLines", rollup.skipped_lines, at, "Count"),
        _datum("DailyCostUSD", day_to_date_micros / 1e6, at),
        # Spend by budget scope: every request counts in the global scope, those of a
        # payer with a team also in the team scope.
        _datum("ScopeCostUSD", totals.cost_micros / 1e6, at, "None", [("Scope", "global")]),
        _datum("ScopeCostUSD", rollup.team_cost_micros / 1e6, at, "None", [("Scope", "team")]),
    ]
    for model, counts in sorted(rollup.by_model.items()):
        dims = [("Model", model)]
        data += [
            _datum("WindowCostUSD", counts.cost_micros / 1e6, at, "None", dims),
            _datum("WindowInputTokens", counts.input_tokens, at, "Count", dims),
            _datum("WindowOutputTokens", counts.output_tokens, at, "Count", dims),
            _datum("WindowRequests", counts.requests, at, "Count", dims),
        ]
    for outcome, n in sorted(rollup.by_outcome.items()):
        data.append(_datum("WindowRequests", n, at, "Count", [("Outcome", outcome)]))
    return data


def reconciliation_metric_data(result: Reconciliation, at: datetime) -> list[MetricDatumTypeDef]:
    return [_datum("ReconciliationDifferenceUSD", result.difference_micros / 1e6, at)]


def chunks(data: list[MetricDatumTypeDef], size: int) -> Iterator[list[MetricDatumTypeDef]]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


class MetricsPublisher:
    def __init__(self, client: CloudWatchClient, namespace: str) -> None:
        self._client = client
        self._namespace = namespace

    @staticmethod
    def accepts(window: Window, now: datetime | None = None) -> bool:
        """Whether CloudWatch still takes datapoints timestamped at the window's start."""
        return window.start >= (now or datetime.now(UTC)) - MAX_DATAPOINT_AGE

    def publish(self, data: list[MetricDatumTypeDef]) -> None:
        for chunk in chunks(data, MAX_DATUMS_PER_CALL):
            self._client.put_metric_data(Namespace=self._namespace, MetricData=chunk)
