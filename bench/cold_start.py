"""Cold start: a fresh process to its first token, beside the cold floor; the artifact's size."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from bench.overhead import Target
from bench.processes import (
    BENCH_DIR,
    JWT_SECRET,
    LAMBDA_UNZIPPED_LIMIT_MB,
    MESSAGE,
    PYTHON,
    REPO,
    Server,
    StreamingRequest,
    base_env,
    configure_offline,
    free_port,
    gateway_env,
    http_status,
    rss_peak_mb,
    stop,
    stream_request,
    uvicorn_args,
)
from bench.stats import median_of, ratio


def cold_start_once(
    args: Sequence[str],
    env: dict[str, str],
    request: StreamingRequest,
    log: IO[bytes],
    poll_s: float = 0.005,
    launcher: Sequence[str] = (),
    when_ready: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Process start → /health 200 (polled like the Web Adapter) → first token.

    `when_ready(pid)` runs between the two (e.g. moving the process to another CPU group)."""
    port = free_port()
    started = time.perf_counter()
    process = subprocess.Popen(
        [*launcher, *(arg.replace("{port}", str(port)) for arg in args)],
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
        if when_ready is not None:
            when_ready(process.pid)
        path, body, headers, marker = request
        first_token_s = stream_request(port, path, body, headers, marker).first_token_s
        arrived = ready + first_token_s
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
    completions: StreamingRequest = (
        "/v1/chat/completions",
        json.dumps(openai_body).encode(),
        {},
        b'"content":"',
    )
    gateway = uvicorn_args("tollgate.app:create_app")
    kinds: dict[str, tuple[list[str], dict[str, str], StreamingRequest]] = {
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
