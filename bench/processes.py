"""Process control: the servers a bench run starts, their configuration, the load generator.

Every server is a subprocess of its own, started with src/run.sh's uvicorn flags in a new
session so that stopping it stops its whole process group.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

    from tollgate.adapters.dynamodb_http import AsyncDynamoDB

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
PYTHON = sys.executable
# src/run.sh's flags, word for word (host and port added per server).
UVICORN_FLAGS = [
    "--no-access-log",
    "--http",
    "httptools",
    "--loop",
    "uvloop",
    "--timeout-keep-alive",
    "60",
]
JWT_SECRET = "bench-secret-not-for-production-0123456789"
MODEL = "gpt-4o-mini"
MESSAGE = "Tell me something about rivers, bridges and the cities built around them."
LITELLM_RPS = 27.0  # the figure the issue compares against
LAMBDA_UNZIPPED_LIMIT_MB = 250
TABLES = {"UsageTable": "bench-usage", "ConversationsTable": "bench-conversations"}
AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def http_status(port: int, path: str, timeout: float = 1.0) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def stop(process: subprocess.Popen[Any]) -> None:
    """Stop a server's whole process group (uvicorn's, moto's threads): TERM, then KILL."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


class Servers:
    """Every server this run started; all of them are stopped on exit, however it ends."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, Server] = {}

    def start(
        self,
        name: str,
        args: Sequence[str],
        env: dict[str, str],
        *,
        health: str = "/health",
        timeout_s: float = 60.0,
        launcher: Sequence[str] = (),
    ) -> Server:
        """`launcher` goes before the command (e.g. one that joins a CPU-quota cgroup)."""
        port = free_port()
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [*launcher, *(arg.replace("{port}", str(port)) for arg in args)],
                env=env,
                cwd=REPO,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(name, port, process, log)
        self.running[name] = server
        deadline = time.monotonic() + timeout_s
        while http_status(port, health, timeout=0.5) is None:
            if process.poll() is not None or time.monotonic() > deadline:
                tail = log.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} did not start:\n{tail}")
            time.sleep(0.05)
        return server

    def stop(self, name: str) -> None:
        server = self.running.pop(name, None)
        if server is not None:
            stop(server.process)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)


def uvicorn_args(app: str, *, factory: bool = True, app_dir: Path | None = None) -> list[str]:
    args = [PYTHON, "-m", "uvicorn"]
    if factory:
        args.append("--factory")
    if app_dir is not None:
        args += ["--app-dir", str(app_dir)]
    return [*args, app, "--host", "127.0.0.1", "--port", "{port}", *UVICORN_FLAGS]


def base_env() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("AWS_")}
    env.update(AWS_ENV)
    env["PYTHONDONTWRITEBYTECODE"] = "0"
    return env


def gateway_env(offline: Server, moto_url: str, store: str) -> dict[str, str]:
    """The gateway's configuration; its stdout (cost records and EMF) goes to its log file."""
    env = base_env()
    env.update(
        STORE_BACKEND=store,
        USAGE_TABLE=TABLES["UsageTable"],
        CONVERSATIONS_TABLE=TABLES["ConversationsTable"],
        AWS_ENDPOINT_URL_DYNAMODB=moto_url,
        OPENAI_BASE_URL=offline.url + "/v1",
        OPENAI_API_KEY="bench-offline-key",
        JWT_SECRET=JWT_SECRET,
        DAILY_TOKEN_LIMIT=str(10**12),
        CONVERSATION_TOKEN_LIMIT=str(10**9),
        RATE_LIMIT_PER_MINUTE=str(10**6),
        MODEL_CHAIN=MODEL,
        POWERTOOLS_SERVICE_NAME="tollgate",
        POWERTOOLS_METRICS_NAMESPACE="Tollgate",
    )
    return env


def _status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return math.nan


def rss_peak_mb(pid: int) -> float:
    """The most the process has held resident so far (VmHWM: Lambda's "Max Memory Used")."""
    return _status_mb(pid, "VmHWM")


def rss_now_mb(pid: int) -> float:
    """What the process holds resident now (VmRSS)."""
    return _status_mb(pid, "VmRSS")


class LoadGenerator:
    def __init__(self, log_dir: Path) -> None:
        self._stderr = (log_dir / "loadgen.log").open("wb")
        self._process = subprocess.Popen(
            [PYTHON, str(BENCH_DIR / "loadgen.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            start_new_session=True,
            text=True,
        )

    def run(self, spec: dict[str, Any]) -> dict[str, Any]:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(json.dumps(spec) + "\n")
        stdin.flush()
        line = stdout.readline()
        if not line:
            raise RuntimeError("the load generator died; see its log")
        result: dict[str, Any] = json.loads(line)
        return result

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        stop(self._process)
        self._stderr.close()


def configure_offline(offline: Server, **config: Any) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", offline.port, timeout=5)
    try:
        connection.request(
            "POST", "/_offline/config", json.dumps(config), {"content-type": "application/json"}
        )
        response = connection.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"offline model config refused: {response.status}")
        # The request log keeps every request's messages: clear it between scenarios.
        connection.request("DELETE", "/_offline/requests")
        connection.getresponse().read()
    finally:
        connection.close()


def dynamodb_client(endpoint_url: str) -> DynamoDBClient:
    import boto3

    return boto3.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=AWS_ENV["AWS_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    )


def async_dynamodb(endpoint_url: str, timeout_s: float = 60.0) -> AsyncDynamoDB:
    """The gateway's own DynamoDB client, with the bench's credentials.

    Its timeout is boto3's default (60 s), not the gateway's 2 s: a bench that queues 64
    calls on moto (one request at a time) measures throughput, not time-outs."""
    from botocore.credentials import Credentials

    from tollgate.adapters.dynamodb_http import AsyncDynamoDB, Endpoint

    return AsyncDynamoDB(
        Endpoint(endpoint_url, AWS_ENV["AWS_REGION"]),
        Credentials(AWS_ENV["AWS_ACCESS_KEY_ID"], AWS_ENV["AWS_SECRET_ACCESS_KEY"]),
        connect_timeout_s=timeout_s,
        read_timeout_s=timeout_s,
    )


# ---------------------------------------------------------------- cold start


@contextlib.contextmanager
def log_directory(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as directory:
        yield Path(directory)


def count_cost_records(log: Path) -> int:
    with log.open("rb") as lines:
        return sum(1 for line in lines if b'"message":"cost_record"' in line)


def create_bench_tables(moto_url: str) -> None:
    from tollgate.local.tables import create_tables

    create_tables(dynamodb_client(moto_url), TABLES)


# path, body, headers, the marker of the first delta
StreamingRequest = tuple[str, bytes, dict[str, str], bytes]


@dataclass
class StreamedResponse:
    sent_at: float  # wall clock (time.time()), comparable with other processes' logs
    first_token_s: float  # seconds from sending to the first delta
    body: bytes


def stream_request(
    port: int, path: str, body: bytes, headers: dict[str, str], marker: bytes
) -> StreamedResponse:
    """Send one streaming request and read it to the end, noting when `marker` first arrived."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        sent_at, started = time.time(), time.perf_counter()
        connection.request("POST", path, body, {"content-type": "application/json", **headers})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"{path} failed: {response.status} {response.read()[:300]!r}")
        received = b""
        arrived: float | None = None
        while chunk := response.read1(65536):
            received += chunk
            if arrived is None and marker in received:
                arrived = time.perf_counter()
        if arrived is None:
            raise RuntimeError(f"no delta in the response of {path}: {received[:300]!r}")
        return StreamedResponse(sent_at, arrived - started, received)
    finally:
        connection.close()
