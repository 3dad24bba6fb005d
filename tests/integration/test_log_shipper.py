"""The local run's cost-record shipper against moto's CloudWatch Logs."""

from __future__ import annotations

import io
import json
import uuid
from typing import TYPE_CHECKING

import boto3
import pytest

from tollgate.local.log_shipper import CostRecordShipper, LineTee, batches

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient

pytestmark = pytest.mark.integration


@pytest.fixture
def logs(moto_endpoint: str) -> CloudWatchLogsClient:
    return boto3.client("logs", endpoint_url=moto_endpoint)


def messages(logs: CloudWatchLogsClient, group: str) -> list[str]:
    return [e["message"] for e in logs.filter_log_events(logGroupName=group)["events"]]


def test_ships_only_cost_records_creating_the_group(logs: CloudWatchLogsClient) -> None:
    # Given a shipper for a log group that does not exist yet
    group = f"/tollgate/local/{uuid.uuid4().hex[:8]}"
    record = json.dumps({"message": "cost_record", "user_id": "a", "cost_usd": 0.1})
    # When the app's stdout goes through a tee into it, then the shipper closes
    stdout = io.StringIO()
    with CostRecordShipper(group, logs, flush_interval_s=60) as shipper:
        tee = LineTee(stdout, shipper)
        tee.write(json.dumps({"message": "request started"}) + "\n")
        tee.write(record[:10])
        tee.write(record[10:] + "\nplain text cost_record\n")
    # Then stdout is untouched and only the cost record reached CloudWatch Logs
    assert stdout.getvalue().count("\n") == 3
    assert messages(logs, group) == [record]


def test_flushes_in_the_background(logs: CloudWatchLogsClient) -> None:
    group = f"/tollgate/local/{uuid.uuid4().hex[:8]}"
    record = json.dumps({"message": "cost_record", "user_id": "b"})
    shipper = CostRecordShipper(group, logs, flush_interval_s=0.05)
    try:
        shipper(record)
        import time

        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not _exists(logs, group):
            time.sleep(0.05)
        assert messages(logs, group) == [record]
    finally:
        shipper.close()


def _exists(logs: CloudWatchLogsClient, group: str) -> bool:
    try:
        return bool(messages(logs, group))
    except logs.exceptions.ResourceNotFoundException:
        return False


def test_batches_respect_put_log_events_limits() -> None:
    events = [{"timestamp": i, "message": "x" * 1000} for i in range(2000)]
    sizes = [len(b) for b in batches(events)]  # type: ignore[arg-type]
    assert sum(sizes) == 2000
    assert all(s * 1026 <= 1_048_576 for s in sizes)
