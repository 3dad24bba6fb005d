"""The aggregator's environment, validated once like the chat function's."""

from __future__ import annotations

from datetime import timedelta

import pytest
from pydantic import ValidationError

from tollgate.aggregation.settings import AggregatorSettings
from tollgate.observability import METRICS_NAMESPACE

REQUIRED = {"COST_LOG_GROUP": "/aws/lambda/chat", "ROLLUPS_TABLE": "r", "USAGE_TABLE": "u"}


@pytest.fixture(autouse=True)
def _clean(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        *REQUIRED,
        "AGGREGATION_WINDOW_MINUTES",
        "RECONCILIATION_TOLERANCE_USD",
        "ROLLUP_RETENTION_DAYS",
        "MAX_BACKFILL_WINDOWS",
        "POWERTOOLS_METRICS_NAMESPACE",
    ):
        monkeypatch.delenv(name, raising=False)


def given(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in {**REQUIRED, **values}.items():
        monkeypatch.setenv(name, value)


def test_defaults_and_derived_values(monkeypatch: pytest.MonkeyPatch) -> None:
    given(monkeypatch)
    settings = AggregatorSettings()
    assert settings.window == timedelta(hours=1)
    assert settings.tolerance_micros == 10_000
    assert settings.retention == timedelta(days=400)
    assert settings.max_backfill_windows == 24 * 7
    assert settings.powertools_metrics_namespace == METRICS_NAMESPACE


def test_the_template_values_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    given(
        monkeypatch,
        AGGREGATION_WINDOW_MINUTES="15",
        RECONCILIATION_TOLERANCE_USD="0.5",
        POWERTOOLS_METRICS_NAMESPACE="TollgateStaging",
    )
    settings = AggregatorSettings()
    assert settings.window == timedelta(minutes=15)
    assert settings.tolerance_micros == 500_000
    assert settings.powertools_metrics_namespace == "TollgateStaging"


@pytest.mark.parametrize(
    ("name", "value", "complaint"),
    [
        ("AGGREGATION_WINDOW_MINUTES", "sixty", "aggregation_window_minutes"),
        ("AGGREGATION_WINDOW_MINUTES", "7", "divide a day"),
        ("AGGREGATION_WINDOW_MINUTES", "0", "aggregation_window_minutes"),
        ("RECONCILIATION_TOLERANCE_USD", "-1", "reconciliation_tolerance_usd"),
        ("ROLLUP_RETENTION_DAYS", "1.5", "rollup_retention_days"),
        ("MAX_BACKFILL_WINDOWS", "0", "max_backfill_windows"),
        ("COST_LOG_GROUP", "", "cost_log_group"),
    ],
)
def test_invalid_values_are_refused_by_name(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, complaint: str
) -> None:
    given(monkeypatch, **{name: value})
    with pytest.raises(ValidationError, match=complaint):
        AggregatorSettings()


def test_a_missing_table_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    given(monkeypatch)
    monkeypatch.delenv("ROLLUPS_TABLE")
    with pytest.raises(ValidationError, match="rollups_table"):
        AggregatorSettings()
