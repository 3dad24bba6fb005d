"""Ship the local run's cost records to the local CloudWatch Logs server, as Lambda does.

`CostRecordShipper` is a line sink: give it every line the app writes to stdout (for
example through `LineTee`), and it buffers the cost records and sends them with
PutLogEvents from a background thread about once a second, and on `close()`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import threading
import time
from typing import TYPE_CHECKING, TextIO

from tollgate.observability import COST_RECORD_MESSAGE

if TYPE_CHECKING:
    from collections.abc import Callable

    from mypy_boto3_logs import CloudWatchLogsClient
    from mypy_boto3_logs.type_defs import InputLogEventTypeDef

_log = logging.getLogger(__name__)

# PutLogEvents limits: 10,000 events and 1,048,576 bytes (message bytes + 26 per event).
MAX_BATCH_EVENTS = 10_000
MAX_BATCH_BYTES = 1_048_576
EVENT_OVERHEAD_BYTES = 26


def is_cost_record(line: str) -> bool:
    if COST_RECORD_MESSAGE not in line:
        return False
    try:
        fields = json.loads(line)
    except ValueError:
        return False
    return isinstance(fields, dict) and fields.get("message") == COST_RECORD_MESSAGE


def batches(events: list[InputLogEventTypeDef]) -> list[list[InputLogEventTypeDef]]:
    """Split chronologically ordered events into batches PutLogEvents accepts."""
    result: list[list[InputLogEventTypeDef]] = []
    current: list[InputLogEventTypeDef] = []
    size = 0
    for event in events:
        event_size = len(event["message"].encode()) + EVENT_OVERHEAD_BYTES
        if current and (len(current) >= MAX_BATCH_EVENTS or size + event_size > MAX_BATCH_BYTES):
            result.append(current)
            current, size = [], 0
        current.append(event)
        size += event_size
    if current:
        result.append(current)
    return result


class CostRecordShipper:
    def __init__(
        self,
        log_group: str,
        client: CloudWatchLogsClient,
        *,
        stream_name: str | None = None,
        flush_interval_s: float = 1.0,
        clock_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self._log_group = log_group
        self._stream = stream_name or f"local/{time.strftime('%Y/%m/%d')}/{time.time_ns()}"
        self._client = client
        self._clock_ms = clock_ms
        self._interval = flush_interval_s
        self._buffer: list[InputLogEventTypeDef] = []
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._created = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cost-record-shipper", daemon=True)
        self._thread.start()

    def __call__(self, line: str) -> None:
        line = line.rstrip("\n")
        if not is_cost_record(line):
            return
        with self._lock:
            self._buffer.append({"timestamp": self._clock_ms(), "message": line})

    def flush(self) -> None:
        with self._send_lock:
            with self._lock:
                events, self._buffer = self._buffer, []
            if not events:
                return
            try:
                self._ensure_stream()
                for batch in batches(sorted(events, key=lambda e: e["timestamp"])):
                    self._client.put_log_events(
                        logGroupName=self._log_group, logStreamName=self._stream, logEvents=batch
                    )
            except Exception:
                # Local convenience only: losing records must not take the gateway down.
                _log.warning("could not ship %d cost records", len(events), exc_info=True)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.flush()

    def __enter__(self) -> CostRecordShipper:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def _ensure_stream(self) -> None:
        if self._created:
            return
        exists = self._client.exceptions.ResourceAlreadyExistsException
        with contextlib.suppress(exists):
            self._client.create_log_group(logGroupName=self._log_group)
        with contextlib.suppress(exists):
            self._client.create_log_stream(logGroupName=self._log_group, logStreamName=self._stream)
        self._created = True


class LineTee:
    """A text stream that writes through to `stream` and hands each complete line to `sink`.

    Install with `sys.stdout = LineTee(sys.stdout, shipper)` before the app's logger is built.
    """

    def __init__(self, stream: TextIO, sink: Callable[[str], None]) -> None:
        self._stream = stream
        self._sink = sink
        self._partial = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        written = self._stream.write(text)
        with self._lock:
            self._partial += text
            *lines, self._partial = self._partial.split("\n")
        for line in lines:
            self._sink(line)
        return written

    def flush(self) -> None:
        self._stream.flush()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def fileno(self) -> int:
        return self._stream.fileno()

    @property
    def encoding(self) -> str:
        return getattr(self._stream, "encoding", None) or sys.getdefaultencoding()
