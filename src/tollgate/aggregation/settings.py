"""The aggregator's configuration: read from its environment, validated like the chat function's."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from pydantic import Field, model_validator

from tollgate.aggregation.rollups import usd_to_micros
from tollgate.aggregation.windows import validate_window_size
from tollgate.environment import EnvironmentSettings
from tollgate.observability import METRICS_NAMESPACE


class AggregatorSettings(EnvironmentSettings):
    """The aggregator function's variables (template.yaml's AggregatorFunction), by name."""

    cost_log_group: str = Field(min_length=1)
    rollups_table: str = Field(min_length=1)
    usage_table: str = Field(min_length=1)
    aggregation_window_minutes: int = Field(default=60, ge=1, le=24 * 60)
    reconciliation_tolerance_usd: Decimal = Field(default=Decimal("0.01"), ge=0)
    rollup_retention_days: int = Field(default=400, ge=1)
    max_backfill_windows: int = Field(default=24 * 7, ge=1)
    powertools_metrics_namespace: str = Field(default=METRICS_NAMESPACE, min_length=1)

    @model_validator(mode="after")
    def _window_divides_a_day(self) -> AggregatorSettings:
        validate_window_size(self.window)
        return self

    @property
    def window(self) -> timedelta:
        return timedelta(minutes=self.aggregation_window_minutes)

    @property
    def tolerance_micros(self) -> int:
        return usd_to_micros(self.reconciliation_tolerance_usd)

    @property
    def retention(self) -> timedelta:
        return timedelta(days=self.rollup_retention_days)
