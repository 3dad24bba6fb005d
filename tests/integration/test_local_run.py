"""`make run` (python -m tollgate.local.run): serves, prints a working token, stops everything."""

from __future__ import annotations

import importlib.util
import io
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import jwt
import pytest

from tests.servers import free_port
from tollgate.local.run import DEV_USER, LocalRunner, curl_command, development_token
from tollgate.local.tables import repo_root

STARTUP_TIMEOUT_S = 90.0


def _missing_modules() -> list[str]:
    return [
        name
        for name in ("tollgate.app", "tollgate.local.offline_model")
        if importlib.util.find_spec(name) is None
    ]


def _live_processes_in_group(group: int) -> list[int]:
    """Pids in process group `group` that are still running (zombies are dead)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # Fields after the parenthesised command: state, ppid, pgrp, ...
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == group and state != "Z":
            alive.append(int(entry.name))
    return alive


@pytest.fixture
def local_run(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str], int]]:
    missing = _missing_modules()
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (not written yet)")
    port = free_port()
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("OPENAI_", "AWS_ENDPOINT_URL", "JWT_"))
    }
    # Its own state file, so a developer's running `make run` keeps theirs.
    environment.update(
        PORT=str(port),
        PYTHONUNBUFFERED="1",
        TOLLGATE_LOCAL_STATE=str(tmp_path / "endpoints.json"),
    )
    # Its own session: the test can then find (and, on failure, kill) everything it started.
    process = subprocess.Popen(
        [sys.executable, "-m", "tollgate.local.run"],
        cwd=repo_root(),
        env=environment,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read_output() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line)

    threading.Thread(target=read_output, daemon=True).start()
    try:
        yield process, lines, port
    finally:
        if _live_processes_in_group(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def _wait_for_curl_line(lines: queue.Queue[str], process: subprocess.Popen[str]) -> str:
    seen: list[str] = []
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if process.poll() is not None:
                break
            continue
        seen.append(line)
        if line.startswith("curl -N "):
            return line.strip()
    pytest.fail("no curl line from the local run; it printed:\n" + "".join(seen[-40:]))


@pytest.mark.integration
@pytest.mark.slow
def test_local_run_serves_and_stops_every_child(
    local_run: tuple[subprocess.Popen[str], queue.Queue[str], int],
) -> None:
    process, lines, port = local_run
    curl = _wait_for_curl_line(lines, process)
    base_url = f"http://127.0.0.1:{port}"
    assert curl.startswith(f"curl -N {base_url}/chat ")
    token = curl.split("Bearer ", 1)[1].split('"', 1)[0]
    children = [pid for pid in _live_processes_in_group(process.pid) if pid != process.pid]
    assert len(children) >= 2, "gateway and offline model server"

    assert httpx.get(f"{base_url}/health", timeout=10).status_code == 200
    usage = httpx.get(f"{base_url}/usage", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert usage.status_code == 200, usage.text
    # A request head over the limit is refused: a 400, or a reset while it is still sending
    # (httptools, with no header limit at all, would answer 200).
    oversized = {"X-Padding": "x" * 256 * 1024}
    try:
        refused = httpx.get(f"{base_url}/health", headers=oversized, timeout=10).status_code
    except httpx.TransportError:
        refused = None
    assert refused in (400, None)

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    deadline = time.monotonic() + 5
    while _live_processes_in_group(process.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _live_processes_in_group(process.pid) == []
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{base_url}/health", timeout=2)


def test_development_token_is_hs256_for_the_dev_user() -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    token = development_token("s" * 32, issuer="local", audience="tollgate", now=now)

    header = jwt.get_unverified_header(token)
    claims = jwt.decode(
        token,
        "s" * 32,
        algorithms=["HS256"],
        issuer="local",
        audience="tollgate",
        options={"verify_exp": False},
    )

    assert header["alg"] == "HS256"
    assert claims["sub"] == DEV_USER
    assert claims["exp"] - claims["iat"] == timedelta(hours=12).total_seconds()


def test_curl_command_is_ready_to_paste() -> None:
    assert curl_command("http://127.0.0.1:8080", "abc") == (
        'curl -N http://127.0.0.1:8080/chat -H "Authorization: Bearer abc" '
        '-H "Content-Type: application/json" -d \'{"message": "Hello"}\''
    )


def test_gateway_lines_reach_stdout_unchanged_and_every_sink() -> None:
    output = io.StringIO()
    received: list[str] = []

    def failing_sink(_line: str) -> None:
        raise RuntimeError("sink down")

    runner = LocalRunner({}, line_sinks=[failing_sink, received.append], output=output)
    runner._pump_lines(io.StringIO('{"message": "cost_record"}\nplain line\n'))

    assert output.getvalue() == '{"message": "cost_record"}\nplain line\n'
    assert received == ['{"message": "cost_record"}', "plain line"]
