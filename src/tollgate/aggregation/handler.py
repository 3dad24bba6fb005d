"""Lambda entry of the scheduled cost aggregator (template.yaml's AggregatorFunction)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools import Logger

from tollgate.adapters.cost_logs import CostLogReader, logs_client
from tollgate.adapters.rollup_metrics import MetricsPublisher, cloudwatch_client
from tollgate.adapters.rollup_store import (
    GlobalShardCounters,
    RollupStore,
    UserSettledSpend,
    batch_dynamodb_client,
)
from tollgate.aggregation.aggregator import Aggregator
from tollgate.aggregation.settings import AggregatorSettings
from tollgate.aggregation.windows import plan_windows
from tollgate.observability import service_name

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.typing import LambdaContext

AGGREGATOR_SERVICE = "tollgate-aggregator"
logger = Logger(service=service_name(AGGREGATOR_SERVICE))


def build_aggregator(settings: AggregatorSettings) -> Aggregator:
    dynamodb = batch_dynamodb_client()
    return Aggregator(
        source=CostLogReader(logs_client(), settings.cost_log_group),
        store=RollupStore(dynamodb, settings.rollups_table, settings.retention),
        counters=UserSettledSpend(dynamodb, settings.usage_table),
        global_counters=GlobalShardCounters(dynamodb, settings.usage_table),
        metrics=MetricsPublisher(cloudwatch_client(), settings.powertools_metrics_namespace),
        window=settings.window,
        tolerance_micros=settings.tolerance_micros,
        logger=logger,
    )


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    settings = AggregatorSettings()  # type: ignore[call-arg]  # required fields: the environment
    windows = plan_windows(event, datetime.now(UTC), settings.window, settings.max_backfill_windows)
    summary = build_aggregator(settings).run(windows).summary()
    logger.info("aggregation summary", extra=summary)
    return summary
