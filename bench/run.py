"""`make bench`: Tollgate's overhead, cold start and cost, side by side with their floors.

    python bench/run.py [--rounds 3] [--duration 2.5] [--quick] [--out docs]

Everything runs on this machine from the repo alone, each server a subprocess of its own
started with src/run.sh's uvicorn flags:

  direct             the offline model server itself (fixed first-token delay and cadence)
  floor              bench/floor_proxy.py: a raw ASGI pass-through proxy (httpx2, streaming)
  tollgate-memory    the gateway, STORE_BACKEND=memory (no DynamoDB round trips)
  tollgate-dynamodb  the gateway on the moto server (the full path)
  *-continue         the gateway continuing conversations (lease + history load per turn)

The load generator (bench/loadgen.py) is a process of its own. Targets are interleaved
round-robin within each scenario (reply length × concurrency), so a noisy neighbour
hits them alike and every ratio compares numbers from the same run. Results go to
docs/bench.json and docs/BENCHMARKS.md, regenerated on every run.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import budget_burst

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


# ---------------------------------------------------------------- processes


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
    ) -> Server:
        port = free_port()
        log = self.log_dir / f"{name}.log"
        with log.open("wb") as output:
            process = subprocess.Popen(
                [arg.replace("{port}", str(port)) for arg in args],
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


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


# ---------------------------------------------------------------- statistics


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def ratio(value: float, floor: float) -> float:
    if not floor or math.isnan(floor) or math.isnan(value):
        return math.nan
    return value / floor


@dataclass
class Cell:
    """One target in one scenario, summed over the rounds."""

    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    deltas: list[int] = field(default_factory=list)
    completed: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    rounds_rps: list[float] = field(default_factory=list)

    def add(self, result: dict[str, Any], pid: int) -> None:
        self.ttft_ms += result["ttft_ms"]
        self.total_ms += result["total_ms"]
        self.deltas += result["deltas"]
        self.completed += result["completed"]
        self.errors += result["errors"]
        self.error_samples += result["error_samples"][: 3 - len(self.error_samples)]
        self.elapsed_s += result["elapsed_s"]
        self.cpu_s += result["cpu_s"][str(pid)]
        self.rounds_rps.append(result["completed"] / result["elapsed_s"])

    def summary(self) -> dict[str, Any]:
        done = max(1, self.completed)
        return {
            "requests": self.completed,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "ttft_p50_ms": percentile(self.ttft_ms, 0.50),
            "ttft_p99_ms": percentile(self.ttft_ms, 0.99),
            "total_p50_ms": percentile(self.total_ms, 0.50),
            "total_p99_ms": percentile(self.total_ms, 0.99),
            "requests_per_s": self.completed / self.elapsed_s if self.elapsed_s else math.nan,
            "requests_per_s_by_round": self.rounds_rps,
            "cpu_ms_per_request": self.cpu_s * 1000 / done,
            "deltas_per_request": statistics.mean(self.deltas) if self.deltas else 0,
        }


# ---------------------------------------------------------------- overhead


@dataclass
class Target:
    name: str
    server: Server
    path: str
    mode: str  # how the load generator reads the stream: "openai" or "tollgate"
    continue_turns: int = 0

    def body(self, reply_tokens: int) -> dict[str, Any]:
        if self.mode == "tollgate":
            return {"message": MESSAGE, "prompt": "default", "max_tokens": reply_tokens + 10}
        return {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a helpful, concise assistant."},
                {"role": "user", "content": MESSAGE},
            ],
            "max_completion_tokens": reply_tokens + 10,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


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


def run_cell(
    loadgen: LoadGenerator,
    target: Target,
    *,
    reply_tokens: int,
    concurrency: int,
    duration_s: float,
    tag: str,
) -> dict[str, Any]:
    return loadgen.run(
        {
            "port": target.server.port,
            "path": target.path,
            "mode": target.mode,
            "body": target.body(reply_tokens),
            "concurrency": concurrency,
            "duration_s": duration_s,
            "pids": [target.server.pid],
            "jwt_secret": JWT_SECRET if target.mode == "tollgate" else None,
            "user_prefix": f"bench-{tag}",
            "continue_turns": target.continue_turns,
        }
    )


def overhead(
    loadgen: LoadGenerator,
    targets: list[Target],
    offline: Server,
    *,
    replies: Sequence[int],
    concurrencies: Sequence[int],
    rounds: int,
    duration_s: float,
    first_token_delay_s: float,
    chunk_interval_s: float,
    continue_for_replies: Sequence[int],
) -> list[dict[str, Any]]:
    scenarios = []
    for reply_tokens in replies:
        configure_offline(
            offline,
            first_token_delay_s=first_token_delay_s,
            chunk_interval_s=chunk_interval_s,
            reply_tokens=reply_tokens,
        )
        for concurrency in concurrencies:
            in_play = [
                t for t in targets if not t.continue_turns or reply_tokens in continue_for_replies
            ]
            cells = {t.name: Cell() for t in in_play}
            for round_number in range(rounds):
                # Rotate the order each round so no target always runs first or last.
                shift = round_number % len(in_play)
                for target in in_play[shift:] + in_play[:shift]:
                    tag = f"{reply_tokens}-{concurrency}-{round_number}-{target.name}"
                    result = run_cell(
                        loadgen,
                        target,
                        reply_tokens=reply_tokens,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        tag=tag,
                    )
                    cells[target.name].add(result, target.server.pid)
            summaries = {name: cell.summary() for name, cell in cells.items()}
            for target in in_play:
                summaries[target.name]["peak_rss_mb_so_far"] = rss_peak_mb(target.server.pid)
            scenario = {
                "reply_chunks": reply_tokens,
                "concurrency": concurrency,
                "targets": summaries,
            }
            add_ratios(scenario)
            scenarios.append(scenario)
            print(render_scenario(scenario), flush=True)
    return scenarios


def add_ratios(scenario: dict[str, Any]) -> None:
    targets = scenario["targets"]
    direct, floor = targets["direct"], targets["floor"]
    for summary in targets.values():
        summary["ttft_added_p50_ms"] = summary["ttft_p50_ms"] - direct["ttft_p50_ms"]
        summary["ttft_added_p99_ms"] = summary["ttft_p99_ms"] - direct["ttft_p99_ms"]
    for summary in targets.values():
        summary["vs_floor"] = {
            "ttft_added_p50_ms_over_floor": summary["ttft_p50_ms"] - floor["ttft_p50_ms"],
            "ttft_added_p99_ms_over_floor": summary["ttft_p99_ms"] - floor["ttft_p99_ms"],
            "ttft_added_p50": ratio(summary["ttft_added_p50_ms"], floor["ttft_added_p50_ms"]),
            "ttft_added_p99": ratio(summary["ttft_added_p99_ms"], floor["ttft_added_p99_ms"]),
            "total_p50": ratio(summary["total_p50_ms"], floor["total_p50_ms"]),
            "requests_per_s": ratio(summary["requests_per_s"], floor["requests_per_s"]),
            "cpu_ms_per_request": ratio(summary["cpu_ms_per_request"], floor["cpu_ms_per_request"]),
            "peak_rss_mb": ratio(summary["peak_rss_mb_so_far"], floor["peak_rss_mb_so_far"]),
        }


def dynamodb_round_trip_ms(moto_url: str, samples: int = 60) -> dict[str, float]:
    """p50/p99 of one conditional UpdateItem on moto, like a budget reservation."""
    import boto3

    client = boto3.client("dynamodb", endpoint_url=moto_url, **aws_client_kwargs())
    timings = []
    for number in range(samples):
        started = time.perf_counter()
        client.update_item(
            TableName=TABLES["UsageTable"],
            Key={"pk": {"S": "USER#rtt"}, "sk": {"S": "DAY#2000-01-01"}},
            UpdateExpression="ADD #t :one SET #r = :one",
            ConditionExpression="attribute_not_exists(#t) OR #t <= :max",
            ExpressionAttributeNames={"#t": "tokens", "#r": f"rt_{number}"},
            ExpressionAttributeValues={":one": {"N": "1"}, ":max": {"N": "1000000"}},
            ReturnValues="ALL_NEW",
        )
        timings.append((time.perf_counter() - started) * 1000)
    timings = timings[10:]  # the first calls load botocore's models
    return {"p50_ms": percentile(timings, 0.5), "p99_ms": percentile(timings, 0.99)}


def aws_client_kwargs() -> dict[str, str]:
    return {
        "region_name": AWS_ENV["AWS_REGION"],
        "aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
    }


# ---------------------------------------------------------------- cold start


def first_token(port: int, path: str, body: bytes, headers: dict[str, str], marker: bytes) -> float:
    """Send one streaming request; returns when the first delta arrived (perf_counter)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", path, body, {"content-type": "application/json", **headers})
        response = connection.getresponse()
        if response.status != 200:
            raise RuntimeError(f"cold request failed: {response.status} {response.read()[:300]!r}")
        received = b""
        arrived: float | None = None
        while chunk := response.read1(65536):
            received += chunk
            if arrived is None and marker in received:
                arrived = time.perf_counter()
        if arrived is None:
            raise RuntimeError(f"no delta in the cold response: {received[:300]!r}")
        return arrived
    finally:
        connection.close()


def cold_start_once(
    args: Sequence[str],
    env: dict[str, str],
    request: tuple[str, bytes, dict[str, str], bytes],
    log: IO[bytes],
    poll_s: float = 0.005,
) -> dict[str, float]:
    """Process start → /health 200 (polled like the Web Adapter) → first token."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [arg.replace("{port}", str(port)) for arg in args],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        while http_status(port, "/health", timeout=2.0) != 200:
            if process.poll() is not None or time.perf_counter() - started > 60:
                raise RuntimeError(f"cold start of {args} failed")
            time.sleep(poll_s)
        ready = time.perf_counter()
        path, body, headers, marker = request
        arrived = first_token(port, path, body, headers, marker)
        return {
            "ready_ms": (ready - started) * 1000,
            "first_request_ms": (arrived - ready) * 1000,
            "first_token_ms": (arrived - started) * 1000,
            "peak_rss_mb": rss_peak_mb(process.pid),
        }
    finally:
        stop(process)


BREAKDOWN_SCRIPT = r"""
import json, sys, time
t0 = time.perf_counter()
import tollgate.app
t1 = time.perf_counter()
from tollgate.app import create_app
app = create_app()
t2 = time.perf_counter()
from tollgate.adapters.tokenizer import get_encoding
get_encoding("o200k_base")
t3 = time.perf_counter()
print(json.dumps({"import_app_ms": (t1 - t0) * 1000, "create_app_ms": (t2 - t1) * 1000,
                  "encoding_load_ms": (t3 - t2) * 1000,
                  "openai_imported_by_app": "openai" in sys.modules,
                  "boto3_imported_by_app": "boto3" in sys.modules}))
"""

FLOOR_BREAKDOWN_SCRIPT = r"""
import json, time
t0 = time.perf_counter()
import openai, boto3
t1 = time.perf_counter()
openai.AsyncOpenAI(api_key="x", base_url="http://127.0.0.1:1/v1")
boto3.client("dynamodb")
t2 = time.perf_counter()
print(json.dumps({"import_openai_boto3_ms": (t1 - t0) * 1000,
                  "create_clients_ms": (t2 - t1) * 1000}))
"""


def run_script(script: str, env: dict[str, str]) -> dict[str, Any]:
    output = subprocess.run(
        [PYTHON, "-c", script], env=env, cwd=REPO, capture_output=True, text=True, check=True
    ).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [key for key, value in runs[0].items() if isinstance(value, int | float)]
    merged: dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in keys}
    merged.update({key: value for key, value in runs[0].items() if key not in keys})
    return merged


def cold_start(
    offline: Server,
    moto_url: str,
    log_dir: Path,
    *,
    repetitions: int,
    first_token_delay_s: float,
) -> dict[str, Any]:
    import jwt

    configure_offline(
        offline, first_token_delay_s=first_token_delay_s, chunk_interval_s=0.0, reply_tokens=50
    )
    token = jwt.encode({"sub": "cold", "exp": int(time.time()) + 3600}, JWT_SECRET, "HS256")
    chat = (
        "/chat",
        json.dumps({"message": MESSAGE}).encode(),
        {"authorization": f"Bearer {token}"},
        b'data: {"delta": ',
    )
    openai_body = Target("floor", offline, "/v1/chat/completions", "openai").body(50)
    completions = ("/v1/chat/completions", json.dumps(openai_body).encode(), {}, b'"content":"')
    gateway = uvicorn_args("tollgate.app:create_app")
    kinds: dict[str, tuple[list[str], dict[str, str], tuple[str, bytes, dict[str, str], bytes]]] = {
        "floor": (
            uvicorn_args("cold_floor:create_app", app_dir=BENCH_DIR),
            {**base_env(), "OPENAI_BASE_URL": offline.url + "/v1", "OPENAI_API_KEY": "x"},
            completions,
        ),
        "tollgate-memory": (
            gateway,
            gateway_env(offline, moto_url, "memory"),
            chat,
        ),
        "tollgate-dynamodb": (
            gateway,
            gateway_env(offline, moto_url, "dynamodb"),
            chat,
        ),
    }
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in kinds}
    with (log_dir / "cold.log").open("wb") as log:
        for _ in range(repetitions):
            for name, (args, env, request) in kinds.items():
                runs[name].append(cold_start_once(args, env, request, log))
    result: dict[str, Any] = {
        "repetitions": repetitions,
        "upstream_first_token_delay_ms": first_token_delay_s * 1000,
        "runs": runs,
        "median": {name: median_of(values) for name, values in runs.items()},
    }
    floor_ms = result["median"]["floor"]["first_token_ms"]
    for name in kinds:
        result["median"][name]["vs_floor"] = ratio(
            result["median"][name]["first_token_ms"], floor_ms
        )
    memory_env = kinds["tollgate-memory"][1]
    dynamodb_env = kinds["tollgate-dynamodb"][1]
    result["breakdown"] = {
        "python_startup_ms": statistics.median(
            timed_process([PYTHON, "-c", "pass"], base_env()) for _ in range(3)
        ),
        "floor": median_of([run_script(FLOOR_BREAKDOWN_SCRIPT, base_env()) for _ in range(3)]),
        "tollgate-memory": median_of([run_script(BREAKDOWN_SCRIPT, memory_env) for _ in range(3)]),
        "tollgate-dynamodb": median_of(
            [run_script(BREAKDOWN_SCRIPT, dynamodb_env) for _ in range(3)]
        ),
    }
    return result


def timed_process(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, env=env, check=True)
    return (time.perf_counter() - started) * 1000


def artifact_size() -> dict[str, Any]:
    directory = REPO / ".aws-sam" / "build" / "ChatFunction"
    total, files = 0, 0
    if directory.is_dir():
        for root, _, names in os.walk(directory):
            for name in names:
                path = Path(root, name)
                if not path.is_symlink():
                    total += path.stat().st_size
                    files += 1
    if files == 0:
        return {"path": str(directory.relative_to(REPO)), "status": "not built: run make build"}
    return {
        "path": str(directory.relative_to(REPO)),
        "status": "built",
        "files": files,
        "unzipped_mb": total / 1024 / 1024,
        "limit_mb": LAMBDA_UNZIPPED_LIMIT_MB,
        "share_of_limit": total / 1024 / 1024 / LAMBDA_UNZIPPED_LIMIT_MB,
    }


# ---------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
    ).stdout.strip()
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(int(memory) / 1024 / 1024, 1),
        "load_average_at_start": os.getloadavg(),
        "commit": commit or None,
    }


def fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def fmt_ratio(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}×"


def render_scenario(scenario: dict[str, Any]) -> str:
    header = (
        f"{scenario['reply_chunks']} chunks, concurrency {scenario['concurrency']}\n\n"
        "| target | req | TTFT p50 ms | +p50 vs direct | +p50 vs floor | TTFT p99 ms | "
        "+p99 vs direct | total p50 ms (×floor) | req/s (×floor) | CPU ms/req (×floor) | "
        "peak RSS MB (×floor) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    rows = [header]
    for name, s in scenario["targets"].items():
        v = s["vs_floor"]
        errors = f" ({s['errors']} err)" if s["errors"] else ""
        rows.append(
            f"| {name} | {s['requests']}{errors} | {fmt(s['ttft_p50_ms'])} | "
            f"{fmt(s['ttft_added_p50_ms'], 2)} | {fmt(v['ttft_added_p50_ms_over_floor'], 2)} | "
            f"{fmt(s['ttft_p99_ms'])} | {fmt(s['ttft_added_p99_ms'], 1)} | "
            f"{fmt(s['total_p50_ms'])} ({fmt_ratio(v['total_p50'])}) | "
            f"{fmt(s['requests_per_s'])} ({fmt_ratio(v['requests_per_s'])}) | "
            f"{fmt(s['cpu_ms_per_request'], 2)} ({fmt_ratio(v['cpu_ms_per_request'])}) | "
            f"{fmt(s['peak_rss_mb_so_far'], 0)} ({fmt_ratio(v['peak_rss_mb'])}) |"
        )
    return "\n".join(rows) + "\n"


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Where the issue's targets stand (reported, never asserted)."""
    scenarios = {(s["reply_chunks"], s["concurrency"]): s["targets"] for s in results["overhead"]}
    checks: list[dict[str, Any]] = []
    burst = results.get("budget_burst")
    if burst:
        checks.append(
            {
                "target": "budget overshoot, 50 concurrent streams against ~5 reservations",
                "goal": "0 tokens, no refused request reaches upstream",
                "value": (
                    f"{burst['overshoot_tokens']} tokens, "
                    f"{burst['refused_that_reached_upstream']} reached upstream"
                ),
                "met": burst["overshoot_tokens"] == 0
                and burst["refused_that_reached_upstream"] == 0
                and burst["usage_matches_events"],
            }
        )
    rtt = results["dynamodb_round_trip"]["p50_ms"]
    for (chunks, concurrency), targets in sorted(scenarios.items()):
        if concurrency != 1:
            continue
        memory, dynamo, floor = (
            targets["tollgate-memory"],
            targets["tollgate-dynamodb"],
            targets["floor"],
        )
        added = memory["ttft_p50_ms"] - floor["ttft_p50_ms"]
        checks.append(
            {
                "target": f"added TTFT p50 over the floor, memory store, c=1, {chunks} chunks",
                "goal": "≤ 2 ms",
                "value": f"{added:.2f} ms",
                "met": added <= 2.0,
            }
        )
        extra = dynamo["ttft_p50_ms"] - memory["ttft_p50_ms"]
        checks.append(
            {
                "target": f"DynamoDB's extra TTFT p50 over memory, c=1, {chunks} chunks",
                "goal": f"≤ 1 round trip ({rtt:.2f} ms)",
                "value": f"{extra:.2f} ms = {extra / rtt:.1f} round trips",
                "met": extra <= rtt,
            }
        )
        key = "tollgate-dynamodb-continue"
        if key in targets:
            extra = targets[key]["ttft_p50_ms"] - memory["ttft_p50_ms"]
            checks.append(
                {
                    "target": f"same, continuing a conversation, c=1, {chunks} chunks",
                    "goal": f"≤ 1 round trip ({rtt:.2f} ms)",
                    "value": f"{extra:.2f} ms = {extra / rtt:.1f} round trips",
                    "met": extra <= rtt,
                }
            )
    for (chunks, concurrency), targets in sorted(scenarios.items()):
        for name in ("tollgate-memory", "tollgate-dynamodb"):
            cpu = targets[name]["vs_floor"]["cpu_ms_per_request"]
            checks.append(
                {
                    "target": f"CPU per request vs floor, {name}, c={concurrency}, {chunks} chunks",
                    "goal": "≤ 2×",
                    "value": fmt_ratio(cpu),
                    "met": cpu <= 2.0,
                }
            )
    for (chunks, concurrency), targets in sorted(scenarios.items()):
        if concurrency != 16:
            continue
        for name in ("tollgate-memory", "tollgate-dynamodb"):
            rps = targets[name]["requests_per_s"]
            checks.append(
                {
                    "target": f"requests/s at c=16, {name}, {chunks} chunks",
                    "goal": f"≥ {3 * LITELLM_RPS:.0f} (3 × LiteLLM's {LITELLM_RPS:.0f})",
                    "value": f"{rps:.1f} (direct: {targets['direct']['requests_per_s']:.1f})",
                    "met": rps >= 3 * LITELLM_RPS,
                }
            )
    for name in ("tollgate-memory", "tollgate-dynamodb"):
        peak = max(
            s["targets"][name]["peak_rss_mb_so_far"]
            for s in results["overhead"]
            if name in s["targets"]
        )
        checks.append(
            {
                "target": f"peak RSS, {name}, whole run",
                "goal": "≤ 150 MB",
                "value": f"{peak:.0f} MB",
                "met": peak <= 150,
            }
        )
    cold = results.get("cold_start")
    if cold:
        for name in ("tollgate-memory", "tollgate-dynamodb"):
            value = cold["median"][name]["vs_floor"]
            checks.append(
                {
                    "target": f"cold start to first token vs floor, {name}",
                    "goal": "≤ 1.3×",
                    "value": fmt_ratio(value),
                    "met": value <= 1.3,
                }
            )
    return checks


def render_markdown(results: dict[str, Any]) -> str:
    machine, params = results["machine"], results["parameters"]
    lines = [
        "# Benchmarks",
        "",
        "_Generated by `make bench` (bench/run.py); do not edit by hand — rerun to regenerate._",
        "_All numbers come from one run on one machine; the raw data is in docs/bench.json._",
        "",
        f"Run {machine['timestamp']} at commit {machine['commit']}: {machine['cpu']}, "
        f"{machine['cores']} cores, {machine['memory_gb']} GB, Python {machine['python']}, "
        f"load average at start {', '.join(f'{x:.2f}' for x in machine['load_average_at_start'])}.",
        "",
        "## Overhead",
        "",
        f"Offline model server: first token after {params['first_token_delay_ms']:.0f} ms, "
        f"then a chunk every {params['chunk_interval_ms']:g} ms. Each cell: "
        f"{params['rounds']} rounds × {params['duration_s']:g} s per target, targets "
        "interleaved round-robin. `direct` is the offline model server itself, `floor` a "
        "minimal pass-through proxy (bench/floor_proxy.py), `tollgate-*` the gateway "
        "(JWT, budget reserve/settle, conversation load/store, cost record) with the "
        "in-memory store or DynamoDB on moto; `-continue` continues each conversation for "
        f"{params['continue_turns']} turns. CPU is the server process's (all threads); "
        "peak RSS is its VmHWM so far in the run. One DynamoDB round trip (conditional "
        f"UpdateItem on moto): p50 {results['dynamodb_round_trip']['p50_ms']:.2f} ms.",
        "",
    ]
    for scenario in results["overhead"]:
        lines += ["### " + render_scenario(scenario), ""]
    cold = results.get("cold_start")
    if cold:
        median = cold["median"]
        lines += [
            "## Cold start",
            "",
            "Fresh process started like src/run.sh, `/health` polled every 5 ms like the "
            "Lambda Web Adapter, then one streaming request "
            f"(upstream first token after {cold['upstream_first_token_delay_ms']:.0f} ms). "
            f"Median of {cold['repetitions']}. The floor imports openai and boto3, creates "
            "their clients and proxies the request through the SDK.",
            "",
            "| process | ready ms | first request ms | first token ms | × floor | peak RSS MB |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for name, m in median.items():
            lines.append(
                f"| {name} | {fmt(m['ready_ms'])} | {fmt(m['first_request_ms'])} | "
                f"{fmt(m['first_token_ms'])} | {fmt_ratio(m['vs_floor'])} | "
                f"{fmt(m['peak_rss_mb'], 0)} |"
            )
        b = cold["breakdown"]
        lines += [
            "",
            f"Breakdown (fresh processes, median of 3): Python start-up "
            f"{b['python_startup_ms']:.0f} ms; floor: import openai + boto3 "
            f"{b['floor']['import_openai_boto3_ms']:.0f} ms, create clients "
            f"{b['floor']['create_clients_ms']:.0f} ms.",
            "",
            "| gateway | import tollgate.app ms | create_app ms | o200k_base load ms |",
            "|---|---:|---:|---:|",
        ]
        for name in ("tollgate-memory", "tollgate-dynamodb"):
            lines.append(
                f"| {name} | {b[name]['import_app_ms']:.0f} | {b[name]['create_app_ms']:.0f} | "
                f"{b[name]['encoding_load_ms']:.0f} |"
            )
        lines.append("")
    artifact = results["artifact"]
    lines += ["## Function artifact", ""]
    if artifact["status"] == "built":
        lines.append(
            f"`{artifact['path']}`: {artifact['unzipped_mb']:.1f} MB unzipped in "
            f"{artifact['files']:,} files, {artifact['share_of_limit']:.0%} of Lambda's "
            f"{artifact['limit_mb']} MB limit."
        )
    else:
        lines.append(f"`{artifact['path']}`: {artifact['status']}.")
    lines.append("")
    burst = results.get("budget_burst")
    if burst:
        lines += ["## Budget burst", "", budget_burst.render(burst), ""]
    cost = results.get("cost")
    if cost:
        lines += [
            "## Cost",
            "",
            "bench/cost_simulation.py: naive full-history prompts vs Tollgate's summary + window.",
            "",
            "```",
            cost["rendered"],
            "```",
            "",
        ]
    lines += ["## Targets", "", "| target | goal | measured | met |", "|---|---|---|---|"]
    for check in results["targets"]:
        mark = "yes" if check["met"] else "**no**"
        lines.append(f"| {check['target']} | {check['goal']} | {check['value']} | {mark} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- main


@contextlib.contextmanager
def log_directory(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="tollgate-bench-") as directory:
        yield Path(directory)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per target per round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--replies", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--first-token-delay-ms", type=float, default=50.0)
    parser.add_argument("--chunk-interval-ms", type=float, default=1.0)
    parser.add_argument("--continue-turns", type=int, default=8)
    parser.add_argument("--cold-repetitions", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument(
        "--quick", action="store_true", help="1 round of 1 s, 2 cold starts: a smoke run"
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.cold_repetitions = 1, 1.0, 2

    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "parameters": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "reply_chunks": args.replies,
            "first_token_delay_ms": args.first_token_delay_ms,
            "chunk_interval_ms": args.chunk_interval_ms,
            "continue_turns": args.continue_turns,
            "uvicorn_flags": UVICORN_FLAGS,
        },
    }
    first_token_delay_s = args.first_token_delay_ms / 1000
    with log_directory(args.logs) as log_dir:
        servers = Servers(log_dir)
        loadgen: LoadGenerator | None = None
        try:
            offline = servers.start(
                "offline-model",
                uvicorn_args("tollgate.local.offline_model:create_app"),
                base_env(),
            )
            moto = servers.start(
                "moto",
                [PYTHON, "-m", "tollgate.local.moto_server", "--port", "{port}"],
                base_env(),
                health="/moto-api/",
            )
            create_bench_tables(moto.url)
            floor = servers.start(
                "floor",
                uvicorn_args("floor_proxy:create_app", app_dir=BENCH_DIR),
                {**base_env(), "FLOOR_UPSTREAM_URL": offline.url},
            )
            gateways = {}
            for store in ("memory", "dynamodb"):
                gateways[store] = servers.start(
                    f"tollgate-{store}",
                    uvicorn_args("tollgate.app:create_app"),
                    gateway_env(offline, moto.url, store),
                )
            results["dynamodb_round_trip"] = dynamodb_round_trip_ms(moto.url)
            completions = "/v1/chat/completions"
            targets = [
                Target("direct", offline, completions, "openai"),
                Target("floor", floor, completions, "openai"),
                Target("tollgate-memory", gateways["memory"], "/chat", "tollgate"),
                Target("tollgate-dynamodb", gateways["dynamodb"], "/chat", "tollgate"),
                Target(
                    "tollgate-memory-continue",
                    gateways["memory"],
                    "/chat",
                    "tollgate",
                    args.continue_turns,
                ),
                Target(
                    "tollgate-dynamodb-continue",
                    gateways["dynamodb"],
                    "/chat",
                    "tollgate",
                    args.continue_turns,
                ),
            ]
            loadgen = LoadGenerator(log_dir)
            # Warm up every server (encodings, pools, botocore models) outside the numbers.
            configure_offline(
                offline,
                first_token_delay_s=first_token_delay_s,
                chunk_interval_s=args.chunk_interval_ms / 1000,
                reply_tokens=min(args.replies),
            )
            for target in targets[:4]:
                run_cell(
                    loadgen,
                    target,
                    reply_tokens=min(args.replies),
                    concurrency=8,
                    duration_s=1.0,
                    tag=f"warm-{target.name}",
                )
            results["overhead"] = overhead(
                loadgen,
                targets,
                offline,
                replies=args.replies,
                concurrencies=args.concurrency,
                rounds=args.rounds,
                duration_s=args.duration,
                first_token_delay_s=first_token_delay_s,
                chunk_interval_s=args.chunk_interval_ms / 1000,
                continue_for_replies=[min(args.replies)],
            )
            results["cost_records_written"] = {
                store: count_cost_records(log_dir / f"tollgate-{store}.log") for store in gateways
            }
            loadgen.close()
            loadgen = None
            for name in ("floor", "tollgate-memory", "tollgate-dynamodb"):
                servers.stop(name)
            results["budget_burst"] = budget_burst_scenario(servers, offline, moto.url)
            if not args.skip_cold:
                results["cold_start"] = cold_start(
                    offline,
                    moto.url,
                    log_dir,
                    repetitions=args.cold_repetitions,
                    first_token_delay_s=first_token_delay_s,
                )
        finally:
            if loadgen is not None:
                loadgen.close()
            servers.stop_all()
    results["artifact"] = artifact_size()
    if not args.skip_cost:
        sys.path.insert(0, str(BENCH_DIR))
        from cost_simulation import render, simulate

        simulated = simulate()
        results["cost"] = {**simulated, "rendered": render(simulated)}
    results["targets"] = check_targets(results)
    results["duration_s"] = time.monotonic() - started
    write_outputs(results, args.out)
    return 0


def budget_burst_scenario(servers: Servers, offline: Server, moto_url: str) -> dict[str, Any]:
    limit = budget_burst.token_limit(MODEL)
    configure_offline(
        offline,
        first_token_delay_s=budget_burst.FIRST_TOKEN_DELAY_S,
        chunk_interval_s=0.001,
        reply_tokens=budget_burst.REPLY_TOKENS,
    )
    env = gateway_env(offline, moto_url, "dynamodb")
    env.update(DAILY_TOKEN_LIMIT=str(limit), MAX_OUTPUT_TOKENS=str(budget_burst.OUTPUT_CAP))
    gateway = servers.start("tollgate-burst", uvicorn_args("tollgate.app:create_app"), env)
    try:
        return budget_burst.run(gateway.url, offline.url, JWT_SECRET, limit)
    finally:
        servers.stop("tollgate-burst")


def count_cost_records(log: Path) -> int:
    with log.open("rb") as lines:
        return sum(1 for line in lines if b'"message":"cost_record"' in line)


def create_bench_tables(moto_url: str) -> None:
    import boto3

    from tollgate.local.tables import create_tables

    create_tables(boto3.client("dynamodb", endpoint_url=moto_url, **aws_client_kwargs()), TABLES)


def without_nan(value: Any) -> Any:
    """NaN (nothing measured) as null, so bench.json stays strict JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {key: without_nan(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [without_nan(item) for item in value]
    return value


def write_outputs(results: dict[str, Any], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    markdown = render_markdown(results)
    (out / "bench.json").write_text(
        json.dumps(without_nan(results), indent=2, default=str) + "\n", encoding="utf-8"
    )
    (out / "BENCHMARKS.md").write_text(markdown, encoding="utf-8")
    print()
    print(markdown)
    elapsed = results["duration_s"]
    print(f"wrote {out / 'bench.json'} and {out / 'BENCHMARKS.md'} in {elapsed:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
