"""Every log line is flushed as written, as under the Lambda Web Adapter.

The adapter's bootstrap gives the app a block-buffered pipe for stdout (not the runtime's
unbuffered one), so the gateway runs here as its own uvicorn process, stdout a pipe and
PYTHONUNBUFFERED unset; the cost record and its EMF lines must be readable while the
process is still alive, not only when it exits and Python flushes.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.gateway_fixture import JWT_SECRET, make_token
from tests.offline_fixture import OfflineModelClient
from tests.servers import free_port
from tollgate.local.tables import repo_root

pytestmark = pytest.mark.integration

STARTUP_TIMEOUT_S = 60.0
LINE_TIMEOUT_S = 10.0


def lambda_like_environment(**values: str) -> dict[str, str]:
    inherited = {
        name: value
        for name, value in os.environ.items()
        if name != "PYTHONUNBUFFERED" and not name.startswith(("OPENAI_", "JWT_", "POWERTOOLS_"))
    }
    return {**inherited, **values}


@pytest.fixture
def gateway_process(
    moto_endpoint: str, table_names: dict[str, str], offline_model: OfflineModelClient
) -> Iterator[tuple[str, queue.Queue[str], subprocess.Popen[str]]]:
    port = free_port()
    environment = lambda_like_environment(
        AWS_ENDPOINT_URL_DYNAMODB=moto_endpoint,
        USAGE_TABLE=table_names["UsageTable"],
        CONVERSATIONS_TABLE=table_names["ConversationsTable"],
        OPENAI_BASE_URL=offline_model.openai_base_url,
        OPENAI_API_KEY="offline",
        JWT_SECRET=JWT_SECRET,
    )
    assert "PYTHONUNBUFFERED" not in environment
    command = [sys.executable, "-m", "uvicorn", "--factory", "tollgate.app:create_app"]
    process = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        cwd=repo_root(),
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_stdout() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read_stdout, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while True:
            assert process.poll() is None, "the gateway exited during start-up"
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(0.1)
        yield url, lines, process
    finally:
        process.terminate()
        process.wait(timeout=10)


def read_json_lines_until(
    lines: queue.Queue[str], done: Any, process: subprocess.Popen[str]
) -> list[dict[str, Any]]:
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while not done(seen):
        assert process.poll() is None, "the gateway exited: lines read now prove nothing"
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"lines still buffered in the gateway; read so far: {seen}")
        try:
            line = lines.get(timeout=min(remaining, 0.5))
        except queue.Empty:
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            seen.append(parsed)
    return seen


def test_cost_record_and_its_emf_lines_arrive_while_the_process_runs(
    gateway_process: tuple[str, queue.Queue[str], subprocess.Popen[str]],
) -> None:
    url, lines, process = gateway_process
    # When one chat request completes
    response = httpx.post(
        f"{url}/chat",
        json={"message": "Hello"},
        headers={"Authorization": f"Bearer {make_token('alice')}"},
        timeout=30,
    )
    assert response.status_code == 200

    # Then its cost record and both EMF lines (by model, by outcome) can be read at once
    def complete(seen: list[dict[str, Any]]) -> bool:
        records = [line for line in seen if line.get("message") == "cost_record"]
        blobs = [line for line in seen if "_aws" in line]
        return len(records) == 1 and len(blobs) == 2

    seen = read_json_lines_until(lines, complete, process)
    (record,) = [line for line in seen if line.get("message") == "cost_record"]
    assert record["outcome"] == "completed"
    dimensions = {
        tuple(dims)
        for blob in seen
        if "_aws" in blob
        for directive in blob["_aws"]["CloudWatchMetrics"]
        for dims in directive["Dimensions"]
    }
    assert dimensions == {("Model",), ("Outcome",)}
