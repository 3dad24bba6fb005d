"""CloudWatch Logs: read the cost records of one window from the chat function's log group."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, cast

from tollgate.adapters.aws import BATCH_PROFILE, aws_client
from tollgate.aggregation.rollups import LogEvent
from tollgate.aggregation.windows import Window
from tollgate.observability import COST_RECORD_MESSAGE

if TYPE_CHECKING:
    from mypy_boto3_logs import CloudWatchLogsClient

# A plain quoted term, not a JSON pattern: it narrows the scan to candidate lines and the
# domain decides what each line is (local moto ignores JSON patterns anyway).
COST_RECORD_FILTER = f'"{COST_RECORD_MESSAGE}"'


def logs_client() -> CloudWatchLogsClient:
    return cast("CloudWatchLogsClient", aws_client("logs", BATCH_PROFILE))


class LogGroupNotFoundError(LookupError):
    pass


class CostLogReader:
    def __init__(self, client: CloudWatchLogsClient, log_group: str) -> None:
        self._client = client
        self._log_group = log_group

    def read(self, window: Window) -> Iterator[LogEvent]:
        """Every event in `window` whose text contains the cost-record term, page by page."""
        next_token: str | None = None
        while True:
            try:
                if next_token is None:
                    page = self._client.filter_log_events(
                        logGroupName=self._log_group,
                        startTime=window.start_ms,
                        # endTime is inclusive; the window is half-open.
                        endTime=window.end_ms - 1,
                        filterPattern=COST_RECORD_FILTER,
                    )
                else:
                    page = self._client.filter_log_events(
                        logGroupName=self._log_group,
                        startTime=window.start_ms,
                        endTime=window.end_ms - 1,
                        filterPattern=COST_RECORD_FILTER,
                        nextToken=next_token,
                    )
            except self._client.exceptions.ResourceNotFoundException as error:
                raise LogGroupNotFoundError(
                    f"log group {self._log_group!r} does not exist"
                ) from error
            for event in page.get("events", []):
                if "timestamp" in event and "message" in event:
                    yield LogEvent(event["timestamp"], event["message"].rstrip("\n"))
            next_token = page.get("nextToken")
            if not next_token:
                return
