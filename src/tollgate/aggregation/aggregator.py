"""The cost aggregation run: for each window, read its cost records, aggregate them exactly,
overwrite the window's rollup; then recompute each touched day's rollup from its stored
window rollups, publish per-window metrics, and reconcile every day the run closed against
the usage table's budget counters.

The outside world comes in through the Protocols below (adapters/cost_logs.py,
rollup_store.py, rollup_metrics.py implement them); handler.py wires the real ones.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from tollgate.adapters.rollup_metrics import reconciliation_metric_data, window_metric_data
from tollgate.adapters.rollup_store import DayRollup
from tollgate.aggregation.rollups import (
    Reconciliation,
    Rollup,
    aggregate,
    combine,
    days_closed_by,
    reconcile,
    reconciliation_windows,
)
from tollgate.aggregation.windows import Window, day_windows, next_day
from tollgate.ports import (
    CostEventSource,
    GlobalSettledSpend,
    MetricSink,
    RollupRepository,
    SettledSpend,
)

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch.type_defs import MetricDatumTypeDef


# ---------------------------------------------------------------------------- service


@dataclass
class AggregationResult:
    windows: list[Rollup] = field(default_factory=list)
    reconciliations: list[Reconciliation] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "windows": [rollup.summary() for rollup in self.windows],
            "reconciliations": [r.summary() for r in self.reconciliations],
        }


class Aggregator:
    def __init__(
        self,
        source: CostEventSource,
        store: RollupRepository,
        counters: SettledSpend,
        global_counters: GlobalSettledSpend,
        metrics: MetricSink,
        *,
        window: timedelta,
        tolerance_micros: int,
        logger: Logger,
    ) -> None:
        self._source = source
        self._store = store
        self._counters = counters
        self._global_counters = global_counters
        self._metrics = metrics
        self._window = window
        self._tolerance_micros = tolerance_micros
        self._logger = logger

    def run(self, windows: list[Window]) -> AggregationResult:
        result = AggregationResult()
        for window in windows:
            rollup = aggregate(window, self._source.read(window))
            self._store.put_window(rollup)
            result.windows.append(rollup)
            if rollup.skipped_lines:
                self._logger.warning(
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
            closed_at = day_windows(next_day(day), self._window)[0]
            if self._metrics.accepts(closed_at):
                data += reconciliation_metric_data(reconciliation, closed_at.start)

        self._metrics.publish(data)
        return result

    def _write_day(self, day: str) -> Callable[[Window], int]:
        """Recompute and store `day`'s rollup; return day-to-date spend per window."""
        expected = day_windows(day, self._window)
        stored = self._store.get_windows(expected)
        whole_day = Window(expected[0].start, expected[-1].end)
        self._store.put_day(
            DayRollup(combine(whole_day, stored.values()), len(stored), len(expected))
        )

        def day_to_date(window: Window) -> int:
            return sum(r.totals.cost_micros for w, r in stored.items() if w.start <= window.start)

        return day_to_date

    def _reconcile(self, day: str) -> Reconciliation | None:
        needed = reconciliation_windows(day, self._window)
        stored = self._store.get_windows(needed)
        if len(stored) < len(needed):
            self._logger.warning(
                "reconciliation skipped: windows of the day were never aggregated",
                extra={"day": day, "missing": len(needed) - len(stored)},
            )
            return None
        result = reconcile(
            day,
            stored.values(),
            self._counters.settled_micros(day),
            self._tolerance_micros,
            self._global_counters.settled_micros(day),
        )
        if result.within_tolerance:
            self._logger.info("reconciliation ok", extra=result.summary())
        else:
            self._logger.warning(
                "cost records and budget counters disagree", extra=result.summary()
            )
        return result
