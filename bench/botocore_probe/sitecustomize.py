"""Loaded at start-up by a gateway whose PYTHONPATH holds this directory (bench/botocore_cpu.py).

Times every botocore API call with the calling thread's CPU clock: building and signing
the request, the HTTP exchange's system calls, parsing the response (not the wait for the
answer). SIGUSR1 writes the running totals to $BOTOCORE_PROBE_OUT as JSON.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from typing import Any

import botocore.client

_lock = threading.Lock()
_totals: dict[str, Any] = {"calls": 0, "cpu_s": 0.0, "operations": {}}
# botocore's stubs do not declare the private method every API call goes through.
_make_api_call = botocore.client.BaseClient._make_api_call  # type: ignore[attr-defined]


def _timed(self: Any, operation_name: str, api_params: Any) -> Any:
    started = time.thread_time()
    try:
        return _make_api_call(self, operation_name, api_params)
    finally:
        spent = time.thread_time() - started
        with _lock:
            _totals["calls"] += 1
            _totals["cpu_s"] += spent
            operation = _totals["operations"].setdefault(operation_name, [0, 0.0])
            operation[0] += 1
            operation[1] += spent


def _write(*_: Any) -> None:
    with _lock:
        snapshot = json.dumps(_totals)
    path = os.environ["BOTOCORE_PROBE_OUT"]
    with open(path + ".tmp", "w") as output:
        output.write(snapshot)
    os.replace(path + ".tmp", path)


botocore.client.BaseClient._make_api_call = _timed  # type: ignore[attr-defined]
signal.signal(signal.SIGUSR1, _write)
