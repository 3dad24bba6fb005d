"""The dashboard body is one CloudWatch accepts, and its Logs Insights queries are valid.

Structure from CloudWatch's "Dashboard body structure and syntax" reference: top-level
`widgets` (plus optional `start`, `end`, `periodOverride`, `variables`); each widget a
`type`, a place on the 24-column grid and its `properties`; metric widgets `metrics`
arrays (strings, then one options object) with unique ids, log widgets a `query` and a
`region`, text widgets `markdown`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest

from tests.logs_insights import QueryError, check_query
from tollgate.local.tables import load_template

TOP_LEVEL_KEYS = {"widgets", "start", "end", "periodOverride", "variables"}
WIDGET_TYPES = {"metric", "text", "log", "alarm", "explorer", "custom"}
METRIC_VIEWS = {"timeSeries", "singleValue", "gauge", "bar", "pie", "table"}
LOG_VIEWS = {"table", "timeSeries", "bar", "pie"}
METRIC_OPTIONS = {
    "accountId", "color", "expression", "id", "label", "period", "region", "stat", "visible",
    "yAxis",
}  # fmt: skip
STATS = re.compile(r"^(SampleCount|Average|Sum|Minimum|Maximum|p\d{1,2}(\.\d+)?|IQM|tm\d+)$")


def dashboard_body() -> dict[str, Any]:
    resources = load_template()["Resources"]
    (dashboard,) = [r for r in resources.values() if r["Type"] == "AWS::CloudWatch::Dashboard"]
    text = dashboard["Properties"]["DashboardBody"]["Sub"]
    body: dict[str, Any] = json.loads(re.sub(r"\$\{[^}]+\}", "placeholder", text))
    return body


def widget_problems(widget: dict[str, Any]) -> list[str]:
    problems = []
    kind = widget.get("type")
    if kind not in WIDGET_TYPES:
        problems.append(f"type {kind!r}")
    for name, low, high in (("x", 0, 23), ("y", 0, 10_000), ("width", 1, 24), ("height", 1, 1000)):
        value = widget.get(name)
        if not isinstance(value, int) or not low <= value <= high:
            problems.append(f"{name}={value!r}")
    if widget.get("x", 0) + widget.get("width", 0) > 24:
        problems.append("wider than the 24-column grid")
    properties = widget.get("properties")
    if not isinstance(properties, dict):
        return [*problems, "no properties"]
    if kind == "text" and not isinstance(properties.get("markdown"), str):
        problems.append("text without markdown")
    if kind == "log":
        for required in ("query", "region"):
            if not isinstance(properties.get(required), str):
                problems.append(f"log widget without {required}")
        if properties.get("view", "table") not in LOG_VIEWS:
            problems.append(f"log view {properties.get('view')!r}")
    if kind == "metric":
        problems += metric_problems(properties)
    return problems


def metric_problems(properties: dict[str, Any]) -> list[str]:
    problems = []
    if properties.get("view", "timeSeries") not in METRIC_VIEWS:
        problems.append(f"view {properties.get('view')!r}")
    if not isinstance(properties.get("region"), str):
        problems.append("no region")
    if "stat" in properties and not STATS.match(properties["stat"]):
        problems.append(f"stat {properties['stat']!r}")
    period = properties.get("period", 300)
    if not isinstance(period, int) or not (period in (1, 5, 10, 30) or period % 60 == 0):
        problems.append(f"period {period!r}")
    rows = properties.get("metrics")
    if not isinstance(rows, list) or not rows:
        return [*problems, "no metrics"]
    ids = []
    for row in rows:
        options = [part for part in row if isinstance(part, dict)]
        plain = [part for part in row if not isinstance(part, dict)]
        if len(options) > 1 or (options and not isinstance(row[-1], dict)):
            problems.append(f"options must be one object at the end: {row}")
        if not all(isinstance(part, str) for part in plain):
            problems.append(f"non-string metric parts: {row}")
        option = options[0] if options else {}
        if set(option) - METRIC_OPTIONS:
            problems.append(f"unknown options {sorted(set(option) - METRIC_OPTIONS)}")
        if "expression" in option and plain:
            problems.append(f"an expression row has no metric parts: {row}")
        if "expression" not in option and (len(plain) < 2 or len(plain) % 2):
            problems.append(f"a metric row is namespace, name, then name/value pairs: {row}")
        if "id" in option:
            if not re.fullmatch(r"[a-z][A-Za-z0-9_]*", option["id"]):
                problems.append(f"id {option['id']!r} must start with a lowercase letter")
            ids.append(option["id"])
        if "stat" in option and not STATS.match(option["stat"]):
            problems.append(f"stat {option['stat']!r}")
    if len(ids) != len(set(ids)):
        problems.append(f"duplicate ids {ids}")
    return problems


def test_the_dashboard_body_has_cloudwatch_structure() -> None:
    body = dashboard_body()
    assert set(body) <= TOP_LEVEL_KEYS
    assert body.get("periodOverride", "auto") in ("auto", "inherit")
    assert re.fullmatch(r"-P(T\d+[HMS]|\d+[DWM])", body["start"])
    problems = {
        f"widget {n} ({w.get('properties', {}).get('title', w.get('type'))})": widget_problems(w)
        for n, w in enumerate(body["widgets"])
    }
    assert {name: found for name, found in problems.items() if found} == {}


def log_queries() -> list[str]:
    return [
        widget["properties"]["query"]
        for widget in dashboard_body()["widgets"]
        if widget["type"] == "log"
    ]


def test_the_dashboard_has_log_queries() -> None:
    assert log_queries()


@pytest.mark.parametrize("query", log_queries())
def test_every_logs_insights_query_uses_documented_syntax(query: str) -> None:
    check_query(query)


@pytest.mark.parametrize(
    "query",
    [
        "SOURCE 'g' | filter message = \"cost_record\" | stats count(*) by user_id",
        "SOURCE 'g' | fields a + b as c, user_id | stats sum(c) as total by user_id"
        " | sort total desc | limit 5",
        "SOURCE 'g' | stats avg(latency_ms), pct(latency_ms, 99) by bin(5m)",
        'SOURCE \'g\' | filter outcome in ["timeout", "upstream_error"] and ttft_ms > 100',
        "SOURCE 'g' | filter @message like /cost_record/ | display @timestamp, @message",
        "SOURCE 'g' | stats sum(input_tokens + output_tokens) as tokens by model",
    ],
)
def test_the_checker_accepts_documented_queries(query: str) -> None:
    check_query(query)


@pytest.mark.parametrize(
    ("query", "complaint"),
    [
        ("SOURCE 'g' | stats sum(a) + sum(b) as t by u", "one aggregation function"),
        ("SOURCE 'g' | stats sum(a) by u | sort cost desc", "not stats output"),
        ("SOURCE 'g' | fields sum(a)", "only `stats`"),
        ("SOURCE 'g' | stats sum(max(a)) by u", "only `stats`"),
        ("SOURCE 'g' | stats median(a) by u", "one aggregation function"),
        ("SOURCE 'g' | summarize count(*)", "unknown command"),
        ("filter a = 1", "SOURCE"),
        ("SOURCE 'g' | limit twenty", "whole number"),
        ("SOURCE 'g' | stats count(*) by u | limit 20 | limit", "whole number"),
    ],
)
def test_the_checker_refuses_what_logs_insights_refuses(query: str, complaint: str) -> None:
    with pytest.raises(QueryError, match=re.escape(complaint)):
        check_query(query)
