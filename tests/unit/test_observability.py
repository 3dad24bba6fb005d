"""Cost records and EMF metrics (docs/CONTRACTS.md "Cost records and metrics")."""

from __future__ import annotations

import io
import json
import uuid
from typing import IO, Any

import pytest
from aws_lambda_powertools import Logger

from tollgate import observability
from tollgate.observability import (
    COST_RECORD_METRICS,
    EMITTED_METRICS,
    OUTCOMES,
    CostRecord,
    CostRecorder,
)

# Every field docs/CONTRACTS.md's "Cost records and metrics" lists.
REQUIRED_FIELDS = {
    "request_id",
    "user_id",
    "conversation_id",
    "model",
    "models_tried",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "cost_usd",
    "usage_source",
    "ttft_ms",
    "latency_ms",
    "outcome",
    "kind",
    "prompt",
    "upstream_model",
    "started_at",
}

DOCUMENTED_OUTCOMES = {
    "completed",
    "cancelled",
    "client_disconnected",
    "upstream_error",
    "upstream_rejected",
    "budget_refused",
    "conversation_cap",
    "turn_conflict",
    "timeout",
    "cache_hit",
}


def make_record(**overrides: Any) -> CostRecord:
    values: dict[str, Any] = {
        "request_id": "req-1",
        "user_id": "user-1",
        "conversation_id": "conv-1",
        "model": "gpt-4o-mini",
        "kind": "chat",
        "prompt": "default",
        "started_at": "2026-03-01T12:00:00.000Z",
        "outcome": "completed",
        "models_tried": ["gpt-4o-mini"],
        "upstream_model": "gpt-4o-mini-2024-07-18",
        "input_tokens": 120,
        "cached_input_tokens": 20,
        "output_tokens": 45,
        "cost_micros": 1_234_567,
        "usage_source": "upstream",
        "ttft_ms": 321.5,
        "latency_ms": 1500.25,
    }
    values.update(overrides)
    return CostRecord(**values)


def fresh_logger(stream: IO[str]) -> Logger:
    """The production Logger setup (the module's formatter), writing to this stream only.

    Powertools keys its underlying logging.Logger by `service` (`logger_name` is only a
    log key) and the first stream configured wins, so each test gets its own service."""
    return Logger(
        service=f"{observability.SERVICE}-test-{uuid.uuid4().hex}",
        stream=stream,
        logger_formatter=observability._KeepCostFieldNulls(utc=True),
        utc=True,
    )


def emit(record: CostRecord) -> list[dict[str, Any]]:
    """Emit through a fresh logger on a StringIO; return every JSON line written."""
    stream = io.StringIO()
    recorder = CostRecorder(fresh_logger(stream), stream=stream)
    recorder.emit(record)
    lines = [line for line in stream.getvalue().splitlines() if line.strip()]
    return [json.loads(line) for line in lines]


def split(lines: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    logs = [line for line in lines if "_aws" not in line]
    blobs = [line for line in lines if "_aws" in line]
    assert len(logs) == 1
    return logs[0], blobs


def emitted_pairs(blobs: list[dict[str, Any]]) -> set[tuple[str, tuple[str, ...]]]:
    pairs = set()
    for blob in blobs:
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            for dims in directive["Dimensions"]:
                for metric in directive["Metrics"]:
                    pairs.add((metric["Name"], tuple(dims)))
    return pairs


def test_cost_record_is_one_json_line_with_every_field_at_top_level() -> None:
    # Given a completed chat record
    # When emitted
    log, _ = split(emit(make_record()))
    # Then one JSON line, message cost_record, every documented field at the top level
    assert log["message"] == "cost_record"
    assert set(log) >= REQUIRED_FIELDS
    assert log["request_id"] == "req-1"
    assert log["user_id"] == "user-1"
    assert log["conversation_id"] == "conv-1"
    assert log["model"] == "gpt-4o-mini"
    assert log["models_tried"] == ["gpt-4o-mini"]
    assert log["upstream_model"] == "gpt-4o-mini-2024-07-18"
    assert (log["input_tokens"], log["cached_input_tokens"], log["output_tokens"]) == (120, 20, 45)
    assert log["cost_usd"] == 1.234567
    assert log["usage_source"] == "upstream"
    assert log["ttft_ms"] == 321.5
    assert log["latency_ms"] == 1500.25
    assert log["outcome"] == "completed"
    assert log["kind"] == "chat"
    assert log["prompt"] == "default"
    assert log["started_at"] == "2026-03-01T12:00:00.000Z"
    assert "cost_micros" not in log


def test_null_ttft_and_conversation_id_are_kept_as_nulls() -> None:
    # Given a record with no token arrived and no conversation (e.g. /v1/chat/completions)
    record = make_record(
        ttft_ms=None, conversation_id=None, upstream_model=None, outcome="upstream_error"
    )
    # When emitted
    log, _ = split(emit(record))
    # Then those fields are present as null, not dropped
    assert "ttft_ms" in log
    assert log["ttft_ms"] is None
    assert "conversation_id" in log
    assert log["conversation_id"] is None
    assert set(log) >= REQUIRED_FIELDS


@pytest.mark.parametrize(
    ("micros", "usd"),
    [(0, 0.0), (1, 0.000001), (999_999, 0.999999), (12_500_001, 12.500001)],
)
def test_cost_usd_is_rounded_to_six_decimals(micros: int, usd: float) -> None:
    log, _ = split(emit(make_record(cost_micros=micros)))
    assert log["cost_usd"] == usd


def test_emf_blobs_use_namespace_and_exact_dimension_sets() -> None:
    # Given an emitted record
    _, blobs = split(emit(make_record()))
    # Then its EMF blobs are in namespace Tollgate with dimension sets [["Model"]], [["Outcome"]]
    directives = [d for blob in blobs for d in blob["_aws"]["CloudWatchMetrics"]]
    assert {d["Namespace"] for d in directives} == {"Tollgate"}
    assert sorted(d["Dimensions"] for d in directives) == [[["Model"]], [["Outcome"]]]
    # And no service dimension sneaks in
    for blob in blobs:
        assert "service" not in blob
        assert "Service" not in blob
        for directive in blob["_aws"]["CloudWatchMetrics"]:
            assert all(dims in (["Model"], ["Outcome"]) for dims in directive["Dimensions"])


def test_emf_dimension_values_are_model_and_outcome() -> None:
    _, blobs = split(emit(make_record(model="gpt-4o", outcome="timeout")))
    by_dims = {tuple(b["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]): b for b in blobs}
    assert by_dims[("Model",)]["Model"] == "gpt-4o"
    assert by_dims[("Outcome",)]["Outcome"] == "timeout"
    assert by_dims[("Outcome",)]["Requests"] in (1, 1.0, [1], [1.0])


def test_emitted_metrics_match_the_declared_set_when_ttft_set() -> None:
    # Given a record with a first token
    _, blobs = split(emit(make_record(ttft_ms=200.0)))
    # Then every (metric, dims) emitted is declared, and every declared one is emitted
    assert emitted_pairs(blobs) == set(COST_RECORD_METRICS)


def test_no_ttft_metric_without_a_first_token() -> None:
    # Given a record where no token arrived
    _, blobs = split(emit(make_record(ttft_ms=None, outcome="upstream_error")))
    # Then everything but TimeToFirstTokenMs is emitted
    assert emitted_pairs(blobs) == set(COST_RECORD_METRICS) - {("TimeToFirstTokenMs", ("Model",))}
    assert all("TimeToFirstTokenMs" not in blob for blob in blobs)


def test_declared_metrics_match_design() -> None:
    assert set(EMITTED_METRICS) - set(COST_RECORD_METRICS) == {
        ("BudgetUtilizationPercent", ("Scope",))
    }
    assert set(COST_RECORD_METRICS) == {
        ("CostUSD", ("Model",)),
        ("InputTokens", ("Model",)),
        ("OutputTokens", ("Model",)),
        ("Requests", ("Model",)),
        ("TimeToFirstTokenMs", ("Model",)),
        ("Fallbacks", ("Model",)),
        ("Requests", ("Outcome",)),
    }


def metric_value(blobs: list[dict[str, Any]], name: str, dims: tuple[str, ...]) -> float:
    for blob in blobs:
        if tuple(blob["_aws"]["CloudWatchMetrics"][0]["Dimensions"][0]) == dims:
            value = blob[name]
            return float(value[0] if isinstance(value, list) else value)
    raise AssertionError(f"{name} not emitted")


@pytest.mark.parametrize(
    ("tried", "fallbacks"),
    [
        (["gpt-4o-mini"], 0),
        (["gpt-4o-mini", "gpt-4o"], 1),
        (["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"], 2),
        ([], 0),
    ],
)
def test_fallbacks_is_models_tried_minus_one(tried: list[str], fallbacks: int) -> None:
    _, blobs = split(emit(make_record(models_tried=tried, model=(tried or ["gpt-4o-mini"])[-1])))
    assert metric_value(blobs, "Fallbacks", ("Model",)) == fallbacks


def test_metric_values_come_from_the_record() -> None:
    _, blobs = split(
        emit(make_record(input_tokens=7, output_tokens=9, cost_micros=2_500_000, ttft_ms=42.0))
    )
    assert metric_value(blobs, "InputTokens", ("Model",)) == 7
    assert metric_value(blobs, "OutputTokens", ("Model",)) == 9
    assert metric_value(blobs, "CostUSD", ("Model",)) == pytest.approx(2.5)
    assert metric_value(blobs, "Requests", ("Model",)) == 1
    assert metric_value(blobs, "TimeToFirstTokenMs", ("Model",)) == 42.0


def test_two_emits_do_not_share_metric_state() -> None:
    # Given two records emitted one after the other through the same recorder
    stream = io.StringIO()
    recorder = CostRecorder(fresh_logger(stream), stream=stream)
    recorder.emit(make_record(model="gpt-4o", input_tokens=1))
    recorder.emit(make_record(model="gpt-4o-mini", input_tokens=2))
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]
    blobs = [line for line in lines if "_aws" in line]
    # Then each record has its own blobs: 2 per record, values not accumulated
    assert len([line for line in lines if line.get("message") == "cost_record"]) == 2
    assert len(blobs) == 4
    model_blobs = [b for b in blobs if "Model" in b]
    assert [(b["Model"], b["InputTokens"]) for b in model_blobs] in (
        [("gpt-4o", 1.0), ("gpt-4o-mini", 2.0)],
        [("gpt-4o", [1.0]), ("gpt-4o-mini", [2.0])],
    )


def test_outcomes_match_design() -> None:
    assert set(OUTCOMES) == DOCUMENTED_OUTCOMES


def test_error_field_only_when_set() -> None:
    log, _ = split(emit(make_record()))
    assert "error" not in log
    log, _ = split(emit(make_record(outcome="upstream_error", error="stream cut")))
    assert log["error"] == "stream cut"


def test_build_logger_is_the_service_logger_keeping_cost_nulls() -> None:
    # Given the process's logger
    logger = observability.build_logger()
    # Then it logs as the tollgate service with the formatter that keeps cost-record nulls
    assert logger.service == "tollgate"
    assert isinstance(logger.registered_formatter, observability._KeepCostFieldNulls)


def test_an_undocumented_outcome_is_refused_before_anything_is_written() -> None:
    stream = io.StringIO()
    recorder = CostRecorder(logger=fresh_logger(stream), stream=stream)

    with pytest.raises(ValueError, match="documented outcomes"):
        recorder.emit(make_record(outcome="exploded"))

    assert stream.getvalue() == ""


def test_service_name_and_namespace_come_from_the_powertools_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given the variables the template sets
    monkeypatch.setenv("POWERTOOLS_SERVICE_NAME", "tollgate-staging")
    monkeypatch.setenv("POWERTOOLS_METRICS_NAMESPACE", "TollgateStaging")
    stream = io.StringIO()
    # When a recorder is built and emits a record
    recorder = CostRecorder(stream=stream)
    recorder.emit(make_record())
    # Then the logger and the EMF blobs use them
    assert recorder.logger.service == "tollgate-staging"
    blobs = [json.loads(line) for line in stream.getvalue().splitlines() if "_aws" in line]
    assert blobs
    assert {
        directive["Namespace"] for blob in blobs for directive in blob["_aws"]["CloudWatchMetrics"]
    } == {"TollgateStaging"}


def test_without_the_environment_the_code_defaults_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POWERTOOLS_SERVICE_NAME", raising=False)
    monkeypatch.delenv("POWERTOOLS_METRICS_NAMESPACE", raising=False)
    assert observability.service_name() == observability.SERVICE
    assert observability.metrics_namespace() == observability.METRICS_NAMESPACE
