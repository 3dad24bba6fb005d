"""Lambda entry of the scheduled cost aggregator, and the aggregation it runs.

For each window: read the window's cost records from CloudWatch Logs, aggregate them
exactly, overwrite the window's rollup item; then recompute each touched day's rollup
from its stored window rollups, publish per-window metrics, and reconcile every day the
run closed against the usage table's budget counters.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

from aws_lambda_powertools import Logger

from tollgate.adapters.cost_logs import CostLogReader, logs_client
from tollgate.adapters.rollup_metrics import (
    MetricsPublisher,
    cloudwatch_client,
    reconciliation_metric_data,
    window_metric_data,
)
from tollgate.adapters.rollup_store import (
    BudgetCounters,
    DayRollup,
    RollupStore,
    dynamodb_client,
)
from tollgate.rollups import (
    LogEvent,
    Reconciliation,
    Rollup,
    Window,
    aggregate,
    combine,
    day_windows,
    days_closed_by,
    next_day,
    plan_windows,
    reconcile,
    reconciliation_windows,
    usd_to_micros,
    validate_window_size,
)

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext
    from mypy_boto3_cloudwatch.type_defs import MetricDatumTypeDef

logger = Logger(service="tollgate-aggregator")


@dataclass(frozen=True)
class AggregatorSettings:
    cost_log_group: str
    rollups_table: str
    usage_table: str
    window: timedelta = timedelta(hours=1)
    tolerance_micros: int = 10_000
    retention: timedelta = timedelta(days=400)
    max_backfill_windows: int = 24 * 7

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> AggregatorSettings:
        missing = [n for n in ("COST_LOG_GROUP", "ROLLUPS_TABLE", "USAGE_TABLE") if not env.get(n)]
        if missing:
            raise ValueError(f"missing environment variables: {', '.join(missing)}")
        window = timedelta(minutes=int(env.get("AGGREGATION_WINDOW_MINUTES", "60")))
        validate_window_size(window)
        return cls(
            cost_log_group=env["COST_LOG_GROUP"],
            rollups_table=env["ROLLUPS_TABLE"],
            usage_table=env["USAGE_TABLE"],
            window=window,
            tolerance_micros=usd_to_micros(
                Decimal(env.get("RECONCILIATION_TOLERANCE_USD", "0.01"))
            ),
            retention=timedelta(days=int(env.get("ROLLUP_RETENTION_DAYS", "400"))),
            max_backfill_windows=int(env.get("MAX_BACKFILL_WINDOWS", str(24 * 7))),
        )


# ---------------------------------------------------------------------------- ports


class CostEventSource(Protocol):
    def read(self, window: Window) -> Iterator[LogEvent]: ...


class RollupRepository(Protocol):
    def put_window(self, rollup: Rollup) -> None: ...
    def put_day(self, day: DayRollup) -> None: ...
    def get_windows(self, windows: Iterable[Window]) -> dict[Window, Rollup]: ...


class SettledSpend(Protocol):
    def settled_micros(self, day: str) -> int: ...


class MetricSink(Protocol):
    def accepts(self, window: Window, now: datetime | None = None) -> bool: ...
    def publish(self, data: list[MetricDatumTypeDef]) -> None: ...


# ---------------------------------------------------------------------------- service


@dataclass
class AggregationResult:
    windows: list[Rollup] = field(default_factory=list)
    reconciliations: list[Reconciliation] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"windows": [rollup.summary() for rollup in self.windows]}


class Aggregator:
    def __init__(
        self,
        source: CostEventSource,
        store: RollupRepository,
        counters: SettledSpend,
        metrics: MetricSink,
        settings: AggregatorSettings,
    ) -> None:
        self._source = source
        self._store = store
        self._counters = counters
        self._metrics = metrics
        self._settings = settings

    def run(self, windows: list[Window]) -> AggregationResult:
        result = AggregationResult()
        for window in windows:
            rollup = aggregate(window, self._source.read(window))
            self._store.put_window(rollup)
            result.windows.append(rollup)
            if rollup.skipped_lines:
                logger.warning(
                    "malformed cost record lines skipped",
                    extra={"window_start": rollup.summary()["start"], "n": rollup.skipped_lines},
                )

        data: list[MetricDatumTypeDef] = []
        for day in sorted({w.day for w in windows}):
            day_to_date = self._write_day(day)
            for rollup in result.windows:
                if rollup.window.day == day and self._metrics.accepts(rollup.window):
                    data += window_metric_data(rollup, day_to_date(rollup.window))

        for day in days_closed_by(windows):
            reconciliation = self._reconcile(day)
            if reconciliation is None:
                continue
            result.reconciliations.append(reconciliation)
            closed_at = day_windows(next_day(day), self._settings.window)[0]
            if self._metrics.accepts(closed_at):
                data += reconciliation_metric_data(reconciliation, closed_at.start)

        self._metrics.publish(data)
        return result

    def _write_day(self, day: str) -> Callable[[Window], int]:
        """Recompute and store `day`'s rollup; return day-to-date spend per window."""
        expected = day_windows(day, self._settings.window)
        stored = self._store.get_windows(expected)
        whole_day = Window(expected[0].start, expected[-1].end)
        self._store.put_day(
            DayRollup(combine(whole_day, stored.values()), len(stored), len(expected))
        )

        def day_to_date(window: Window) -> int:
            return sum(r.totals.cost_micros for w, r in stored.items() if w.start <= window.start)

        return day_to_date

    def _reconcile(self, day: str) -> Reconciliation | None:
        needed = reconciliation_windows(day, self._settings.window)
        stored = self._store.get_windows(needed)
        if len(stored) < len(needed):
            logger.warning(
                "reconciliation skipped: windows of the day were never aggregated",
                extra={"day": day, "missing": len(needed) - len(stored)},
            )
            return None
        result = reconcile(
            day,
            stored.values(),
            self._counters.settled_micros(day),
            self._settings.tolerance_micros,
        )
        if result.within_tolerance:
            logger.info("reconciliation ok", extra=result.summary())
        else:
            logger.warning("cost records and budget counters disagree", extra=result.summary())
        return result


def build_aggregator(settings: AggregatorSettings) -> Aggregator:
    dynamodb = dynamodb_client()
    return Aggregator(
        source=CostLogReader(logs_client(), settings.cost_log_group),
        store=RollupStore(dynamodb, settings.rollups_table, settings.retention),
        counters=BudgetCounters(dynamodb, settings.usage_table),
        metrics=MetricsPublisher(cloudwatch_client()),
        settings=settings,
    )


# ---------------------------------------------------------------------------- handler


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = AggregatorSettings.from_env(os.environ)
    windows = plan_windows(event, datetime.now(UTC), settings.window, settings.max_backfill_windows)
    summary = build_aggregator(settings).run(windows).summary()
    logger.info("aggregation summary", extra=summary)
    return summary
