"""`make aggregate EVENT=events/<file>.json`: run the aggregator handler in-process locally.

Endpoints and names come from the environment when set (AWS_ENDPOINT_URL_CLOUDWATCH_LOGS,
AWS_ENDPOINT_URL_DYNAMODB, AWS_ENDPOINT_URL_CLOUDWATCH, COST_LOG_GROUP, USAGE_TABLE,
ROLLUPS_TABLE), otherwise from the state file `make run` writes (`.local/endpoints.json`).
The rollups table is created there when missing. Prints the handler's summary as JSON.

A scheduled event's `time` is replaced by `--as-of` (default: now), so the checked-in
sample event aggregates the last complete hours of this machine's clock.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tollgate.local.state import read_state, state_path

DEFAULT_COST_LOG_GROUP = "/tollgate/local/chat"
DEFAULT_ROLLUPS_TABLE = "tollgate-rollups"
_ENDPOINT_VARIABLES = {
    "AWS_ENDPOINT_URL_DYNAMODB": "dynamodb_endpoint",
    "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": "logs_endpoint",
    "AWS_ENDPOINT_URL_CLOUDWATCH": "cloudwatch_endpoint",
}
_LOCAL_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "local",
    "AWS_SECRET_ACCESS_KEY": "local",
    "AWS_DEFAULT_REGION": "us-east-1",
}


@dataclass(frozen=True)
class LocalContext:
    """Just enough of a Lambda context for Powertools' inject_lambda_context."""

    function_name: str = "tollgate-aggregator-local"
    function_version: str = "$LATEST"
    invoked_function_arn: str = (
        "arn:aws:lambda:us-east-1:000000000000:function:tollgate-aggregator-local"
    )
    memory_limit_in_mb: int = 512
    aws_request_id: str = ""
    log_group_name: str = "/aws/lambda/tollgate-aggregator-local"
    log_stream_name: str = "local"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


def local_environment(env: dict[str, str], state: dict[str, Any]) -> dict[str, str]:
    """The variables to set: explicit environment first, then the local run's state."""
    resolved: dict[str, str] = {}
    shared = state.get("aws_endpoint")
    for variable, key in _ENDPOINT_VARIABLES.items():
        value = env.get(variable) or state.get(key) or shared
        if value:
            resolved[variable] = str(value)
    if "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS" not in resolved:
        raise SystemExit(
            "no local CloudWatch Logs server: start `make run` (it writes "
            f"{state_path()}) or set AWS_ENDPOINT_URL_CLOUDWATCH_LOGS"
        )
    # Never publish local metrics to a real account: CloudWatch defaults to the logs server.
    resolved.setdefault("AWS_ENDPOINT_URL_CLOUDWATCH", resolved["AWS_ENDPOINT_URL_CLOUDWATCH_LOGS"])
    tables = state.get("tables") or {}
    names = {
        "COST_LOG_GROUP": state.get("cost_log_group") or DEFAULT_COST_LOG_GROUP,
        "USAGE_TABLE": tables.get("UsageTable"),
        "ROLLUPS_TABLE": tables.get("RollupsTable") or DEFAULT_ROLLUPS_TABLE,
    }
    for variable, fallback in names.items():
        value = env.get(variable) or fallback
        if not value:
            raise SystemExit(f"{variable} is not set and the local run's state does not name it")
        resolved[variable] = str(value)
    for variable, value in _LOCAL_CREDENTIALS.items():
        if not env.get(variable):
            resolved[variable] = value
    return resolved


def ensure_rollups_table(table_name: str) -> None:
    import boto3

    from tollgate.local.tables import create_tables

    create_tables(boto3.client("dynamodb"), {"RollupsTable": table_name})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--event", type=Path, required=True, help="Lambda event JSON file")
    parser.add_argument("--as-of", help="ISO time for a scheduled event (default: now)")
    args = parser.parse_args(argv)
    event = json.loads(args.event.read_text(encoding="utf-8"))
    if isinstance(event, dict) and event.get("detail-type") == "Scheduled Event":
        event["time"] = args.as_of or datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # The summary is the output; keep the handler's own log lines to warnings and errors.
    os.environ.setdefault("POWERTOOLS_LOG_LEVEL", "WARNING")

    os.environ.update(local_environment(dict(os.environ), read_state()))
    ensure_rollups_table(os.environ["ROLLUPS_TABLE"])

    from tollgate.aggregation.handler import handler

    summary = handler(event, LocalContext(aws_request_id=str(uuid.uuid4())))  # type: ignore[arg-type]
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
