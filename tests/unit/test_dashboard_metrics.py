"""Every Tollgate metric the dashboard and alarms read is one that something publishes."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tollgate.adapters.rollup_metrics import PUBLISHED_METRICS
from tollgate.local.tables import load_template
from tollgate.observability import EMITTED_METRICS

Metric = tuple[str, tuple[str, ...]]
NAMESPACE = "Tollgate"
SEARCH = re.compile(r"\{(?P<schema>[^}]*)\}\s+MetricName=\"(?P<name>[^\"]+)\"")


@pytest.fixture(scope="module")
def resources() -> dict[str, Any]:
    resources: dict[str, Any] = load_template()["Resources"]
    return resources


def sub_text(value: Any) -> str:
    """The template string of a !Sub (short or long form), variables blanked out."""
    text = value["Sub"] if isinstance(value, dict) else value
    text = text[0] if isinstance(text, list) else text
    return re.sub(r"\$\{[^}]+\}", "X", text)


def dashboard_metrics(body: dict[str, Any]) -> set[Metric]:
    found: set[Metric] = set()
    for widget in body["widgets"]:
        for row in widget.get("properties", {}).get("metrics", []):
            plain = [part for part in row if not isinstance(part, dict)]
            if plain and plain[0] == NAMESPACE:
                found.add((plain[1], tuple(plain[2::2])))
            for options in (part for part in row if isinstance(part, dict)):
                for match in SEARCH.finditer(options.get("expression", "")):
                    namespace, *dimensions = match["schema"].split(",")
                    if namespace.strip() == NAMESPACE:
                        found.add((match["name"], tuple(d.strip() for d in dimensions)))
    return found


def alarm_metrics(properties: dict[str, Any]) -> set[Metric]:
    found: set[Metric] = set()
    if properties.get("Namespace") == NAMESPACE:
        dims = tuple(d["Name"] for d in properties.get("Dimensions", []))
        found.add((properties["MetricName"], dims))
    for query in properties.get("Metrics", []):
        metric = query.get("MetricStat", {}).get("Metric", {})
        if metric.get("Namespace") == NAMESPACE:
            found.add(
                (metric["MetricName"], tuple(d["Name"] for d in metric.get("Dimensions", [])))
            )
    return found


def test_dashboard_reads_only_published_metrics(resources: dict[str, Any]) -> None:
    # Given the dashboard body from the template
    dashboards = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    assert dashboards, "the template declares a dashboard"
    body = json.loads(sub_text(dashboards[0]["Properties"]["DashboardBody"]))
    # When its Tollgate metrics are collected (explicit and SEARCH expressions)
    referenced = dashboard_metrics(body)
    # Then each is emitted by the chat function or published by the aggregator
    assert referenced
    assert referenced - (EMITTED_METRICS | PUBLISHED_METRICS) == set()


def test_alarms_read_only_published_metrics(resources: dict[str, Any]) -> None:
    alarms = [r["Properties"] for r in resources.values() if r["Type"] == "AWS::CloudWatch::Alarm"]
    referenced = set().union(*(alarm_metrics(a) for a in alarms))
    assert referenced
    assert referenced - (EMITTED_METRICS | PUBLISHED_METRICS) == set()


def test_daily_spend_alarm_uses_the_metric_without_a_model_dimension(
    resources: dict[str, Any],
) -> None:
    alarm = resources["DailySpendAlarm"]["Properties"]
    assert (alarm["MetricName"], alarm.get("Dimensions", []), alarm["Statistic"]) == (
        "DailyCostUSD",
        [],
        "Maximum",
    )
    assert ("DailyCostUSD", ()) in PUBLISHED_METRICS


def test_the_aggregator_cannot_read_other_log_groups(resources: dict[str, Any]) -> None:
    statements = resources["AggregatorFunction"]["Properties"]["Policies"][0]["Statement"]
    logs = [s for s in statements if any(str(a).startswith("logs:") for a in [s["Action"]])]
    assert [s["Resource"] for s in logs] == [{"GetAtt": "ChatFunctionLogGroup.Arn"}]
