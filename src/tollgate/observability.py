"""The process's one Logger, and cost records with their EMF metrics.

Under the Lambda Web Adapter there is no handler per request, so nothing is flushed
per invocation: each cost record prints its own EMF blobs from a fresh EphemeralMetrics
(no class-level state shared between concurrent requests).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import IO, Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.logging.formatter import LambdaPowertoolsFormatter
from aws_lambda_powertools.metrics import EphemeralMetrics, MetricUnit

from tollgate.pricing import micros_to_usd

# Defaults only: the template sets POWERTOOLS_SERVICE_NAME and POWERTOOLS_METRICS_NAMESPACE.
SERVICE = "tollgate"
METRICS_NAMESPACE = "Tollgate"
# The `message` of a cost record: written here, searched for by the aggregator.
COST_RECORD_MESSAGE = "cost_record"


def service_name(default: str = SERVICE) -> str:
    return os.environ.get("POWERTOOLS_SERVICE_NAME") or default


def metrics_namespace() -> str:
    return os.environ.get("POWERTOOLS_METRICS_NAMESPACE") or METRICS_NAMESPACE


# The (metric, dimensions) pairs of a cost record's EMF lines.
COST_RECORD_METRICS: frozenset[tuple[str, tuple[str, ...]]] = frozenset(
    {
        ("CostUSD", ("Model",)),
        ("InputTokens", ("Model",)),
        ("OutputTokens", ("Model",)),
        ("Requests", ("Model",)),
        ("TimeToFirstTokenMs", ("Model",)),
        ("Fallbacks", ("Model",)),
        ("Requests", ("Outcome",)),
    }
)
# A team or global budget window's use of its limit (adapters/budget_alerts.py).
BUDGET_UTILIZATION_METRIC = "BudgetUtilizationPercent"
# Every (metric, dimensions) pair the chat function emits; the dashboard test checks against it.
EMITTED_METRICS = COST_RECORD_METRICS | {(BUDGET_UTILIZATION_METRIC, ("Scope",))}

OUTCOMES = (
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
)


@dataclass(slots=True)
class CostRecord:
    """One per chat call that reached the budget check (covering its fallbacks), one per summary."""

    request_id: str
    user_id: str
    conversation_id: str | None
    model: str
    kind: str
    prompt: str | None
    started_at: str
    outcome: str = "completed"
    models_tried: list[str] = field(default_factory=list)
    upstream_model: str | None = None
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0  # hidden reasoning, included in output_tokens
    cost_micros: int = 0
    # a cache hit: what the stored reply had cost (nothing was charged for it)
    saved_micros: int = 0
    usage_source: str = "upstream"
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    error: str | None = None
    # The payer's plan and team (None: no team), so spend can be added up by scope.
    plan: str | None = None
    team: str | None = None

    def fields(self) -> dict[str, Any]:
        values = asdict(self)
        values["cost_usd"] = micros_to_usd(values.pop("cost_micros"))
        values["saved_usd"] = micros_to_usd(values.pop("saved_micros"))
        if values["error"] is None:
            del values["error"]
        return values


COST_RECORD_FIELDS = frozenset(CostRecord.__slots__) | {"cost_usd", "saved_usd"}


class _KeepCostFieldNulls(LambdaPowertoolsFormatter):
    """Powertools drops every None; a cost record's nulls (ttft_ms, conversation_id) are data."""

    @staticmethod
    def _strip_none_records(records: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in records.items() if v is not None or k in COST_RECORD_FIELDS}


def build_logger(stream: IO[str] | None = None) -> Logger:
    """The process's Logger, writing to `stream` (stdout by default)."""
    logger = Logger(
        service=service_name(),
        stream=stream,
        logger_formatter=_KeepCostFieldNulls(utc=True),
        utc=True,
    )
    # Powertools keys its loggers by service name and keeps the first handler it made;
    # point that handler at the stream asked for.
    handler = logger.registered_handler
    if stream is not None and isinstance(handler, logging.StreamHandler):
        handler.setStream(stream)
    return logger


class CostRecorder:
    """Writes cost records (Powertools Logger) and their EMF metrics to one stream."""

    def __init__(self, logger: Logger | None = None, stream: IO[str] | None = None) -> None:
        self._stream = stream
        self._namespace = metrics_namespace()
        self.logger = logger or build_logger(stream)

    def emit(self, record: CostRecord) -> None:
        if record.outcome not in OUTCOMES:
            raise ValueError(f"outcome {record.outcome!r} is not one of the documented outcomes")
        self.logger.info(COST_RECORD_MESSAGE, extra=record.fields())
        # Flushed as written: under the Web Adapter stdout is a block-buffered pipe, and an
        # unflushed EMF line reaches CloudWatch only with the next log line (or never).
        self.metrics(*metric_blobs(record, self._namespace))

    def budget_utilization(self, scope: str, percent: float) -> None:
        self.metrics(budget_utilization_blob(scope, percent, self._namespace))

    def metrics(self, *blobs: dict[str, Any]) -> None:
        """EMF lines, one per blob, in one write flushed at once (see emit)."""
        stream = self._stream or sys.stdout
        stream.write("".join(json.dumps(blob, separators=(",", ":")) + "\n" for blob in blobs))
        stream.flush()

    def error(self, message: str, **fields: Any) -> None:
        self.logger.error(message, extra=fields)

    def warning(self, message: str, **fields: Any) -> None:
        self.logger.warning(message, extra=fields)


def metric_blobs(record: CostRecord, namespace: str = METRICS_NAMESPACE) -> list[dict[str, Any]]:
    by_model = EphemeralMetrics(namespace=namespace, service="")
    by_model.add_dimension(name="Model", value=record.model)
    by_model.add_metric(name="CostUSD", unit=MetricUnit.NoUnit, value=record.cost_micros / 1e6)
    by_model.add_metric(name="InputTokens", unit=MetricUnit.Count, value=record.input_tokens)
    by_model.add_metric(name="OutputTokens", unit=MetricUnit.Count, value=record.output_tokens)
    by_model.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    by_model.add_metric(
        name="Fallbacks", unit=MetricUnit.Count, value=max(0, len(record.models_tried) - 1)
    )
    if record.ttft_ms is not None:
        by_model.add_metric(
            name="TimeToFirstTokenMs", unit=MetricUnit.Milliseconds, value=record.ttft_ms
        )
    by_outcome = EphemeralMetrics(namespace=namespace, service="")
    by_outcome.add_dimension(name="Outcome", value=record.outcome)
    by_outcome.add_metric(name="Requests", unit=MetricUnit.Count, value=1)
    return [dict(by_model.serialize_metric_set()), dict(by_outcome.serialize_metric_set())]


def budget_utilization_blob(
    scope: str, percent: float, namespace: str = METRICS_NAMESPACE
) -> dict[str, Any]:
    metrics = EphemeralMetrics(namespace=namespace, service="")
    metrics.add_dimension(name="Scope", value=scope)
    metrics.add_metric(name=BUDGET_UTILIZATION_METRIC, unit=MetricUnit.Percent, value=percent)
    return dict(metrics.serialize_metric_set())
