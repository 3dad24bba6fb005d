"""botocore's share of the gateway's CPU per request on the DynamoDB path.

A DynamoDB gateway (moto, no added delay) runs with bench/botocore_probe/ on its
PYTHONPATH: its sitecustomize times every botocore API call with the calling thread's CPU
clock (serialising, signing, the HTTP exchange's system calls, parsing; not the wait). The
load generator sends requests one at a time, new conversations and conversations continued
for 8 turns; the gateway's whole CPU comes from /proc as in the overhead cells.

Beside it, in this process, the least any client could spend on the same call: a
conditional UpdateItem sent through botocore, and the same request (body and headers
captured from botocore, so signed once) replayed with http.client, response read and
JSON-decoded. The difference bounds what replacing botocore could save per call.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import statistics
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bench.processes import (
    AWS_ENV,
    BENCH_DIR,
    TABLES,
    LoadGenerator,
    Server,
    Servers,
    gateway_env,
    uvicorn_args,
)

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

PROBE_DIR = BENCH_DIR / "botocore_probe"


def _snapshot(server: Server, out: Path) -> dict[str, Any]:
    before = out.stat().st_mtime_ns if out.exists() else 0
    os.kill(server.pid, signal.SIGUSR1)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if out.exists() and out.stat().st_mtime_ns != before:
            snapshot: dict[str, Any] = json.loads(out.read_text())
            return snapshot
        time.sleep(0.01)
    raise RuntimeError("the botocore probe did not answer SIGUSR1")


def _difference(after: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
    operations = {}
    for name, (calls, cpu_s) in after["operations"].items():
        earlier_calls, earlier_cpu_s = before["operations"].get(name, (0, 0.0))
        operations[name] = (calls - earlier_calls, cpu_s - earlier_cpu_s)
    return {
        "calls": after["calls"] - before["calls"],
        "cpu_s": after["cpu_s"] - before["cpu_s"],
        "operations": operations,
    }


def gateway_share(
    servers: Servers,
    loadgen: LoadGenerator,
    offline: Server,
    moto_url: str,
    log_dir: Path,
    *,
    duration_s: float,
    reply_tokens: int,
    continue_turns: int,
) -> dict[str, Any]:
    from bench.overhead import Target, run_cell  # bench.report imports this module

    out = log_dir / "botocore-probe.json"
    env = gateway_env(offline, moto_url, "dynamodb")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROBE_DIR), env.get("PYTHONPATH")]))
    env["BOTOCORE_PROBE_OUT"] = str(out)
    gateway = servers.start("tollgate-botocore-probe", uvicorn_args("tollgate.app:create_app"), env)
    results = {}
    try:
        for name, turns in (("new conversation", 0), ("continued conversation", continue_turns)):
            target = Target(name, gateway, "/chat", "tollgate", turns)
            run_cell(loadgen, target, reply_tokens=reply_tokens, concurrency=1,
                     duration_s=1.0, tag=f"probe-warm-{turns}")  # fmt: skip
            before = _snapshot(gateway, out)
            run = run_cell(loadgen, target, reply_tokens=reply_tokens, concurrency=1,
                           duration_s=duration_s, tag=f"probe-{turns}")  # fmt: skip
            spent = _difference(_snapshot(gateway, out), before)
            requests = run["completed"]
            gateway_cpu_ms = sum(run["cpu_s"].values()) * 1000 / requests
            botocore_cpu_ms = spent["cpu_s"] * 1000 / requests
            results[name] = {
                "requests": requests,
                "gateway_cpu_ms_per_request": gateway_cpu_ms,
                "botocore_cpu_ms_per_request": botocore_cpu_ms,
                "botocore_share": botocore_cpu_ms / gateway_cpu_ms,
                "calls_per_request": spent["calls"] / requests,
                "cpu_ms_per_call": {
                    op: cpu_s * 1000 / calls
                    for op, (calls, cpu_s) in sorted(spent["operations"].items())
                    if calls
                },
            }
    finally:
        servers.stop("tollgate-botocore-probe")
    return results


def replay_floor(moto_url: str, samples: int = 400) -> dict[str, float]:
    """CPU per conditional UpdateItem: botocore vs the same signed request over http.client."""
    from tollgate.adapters.aws import aws_session, request_profile

    client: DynamoDBClient = aws_session().create_client(  # type: ignore[assignment]
        "dynamodb",
        endpoint_url=moto_url,
        region_name=AWS_ENV["AWS_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=request_profile().config(),  # the gateway's own client settings
    )
    captured: dict[str, Any] = {}

    def capture(request: Any, **_: Any) -> None:
        captured["body"], captured["headers"] = request.body, dict(request.headers)

    client.meta.events.register("before-send.dynamodb.UpdateItem", capture)

    def update() -> None:
        client.update_item(
            TableName=TABLES["UsageTable"],
            Key={"pk": {"S": "bench#botocore"}, "sk": {"S": "day"}},
            UpdateExpression="ADD tokens :n",
            ConditionExpression="attribute_not_exists(tokens) OR tokens < :limit",
            ExpressionAttributeValues={":n": {"N": "1"}, ":limit": {"N": str(10**15)}},
        )

    update()
    client.meta.events.unregister("before-send.dynamodb.UpdateItem", capture)
    target = urlsplit(moto_url)
    connection = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port)

    def replay() -> None:
        connection.request("POST", "/", captured["body"], captured["headers"])
        json.loads(connection.getresponse().read() or b"{}")

    timings: dict[str, list[float]] = {"botocore": [], "http.client": []}
    for _ in range(samples):
        for name, call in (("botocore", update), ("http.client", replay)):
            started = time.thread_time()
            call()
            timings[name].append((time.thread_time() - started) * 1000)
    connection.close()
    return {name: statistics.median(values) for name, values in timings.items()}


def render(results: dict[str, Any]) -> list[str]:
    per_call = results["per_call_ms"]
    saving_per_call = per_call["botocore"] - per_call["http.client"]
    lines = [
        "## botocore's share of the CPU",
        "",
        "A DynamoDB gateway on moto with every botocore API call timed on its thread's CPU "
        "clock (bench/botocore_probe/), requests one at a time; whole-process CPU from /proc.",
        "",
        "| path | requests | DynamoDB calls/req | botocore CPU ms/req | gateway CPU ms/req "
        "| botocore share | CPU ms per call |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, row in results["gateway"].items():
        calls = ", ".join(f"{op} {ms:.2f}" for op, ms in row["cpu_ms_per_call"].items())
        lines.append(
            f"| {name} | {row['requests']} | {row['calls_per_request']:.1f} | "
            f"{row['botocore_cpu_ms_per_request']:.2f} | "
            f"{row['gateway_cpu_ms_per_request']:.2f} | {row['botocore_share']:.0%} | {calls} |"
        )
    worst_name, worst = max(
        results["gateway"].items(), key=lambda item: item[1]["calls_per_request"]
    )
    bound = saving_per_call * worst["calls_per_request"]
    lines += [
        "",
        f"One conditional UpdateItem costs {per_call['botocore']:.2f} ms of CPU through the "
        f"gateway's botocore client and {per_call['http.client']:.2f} ms as the same signed "
        "request replayed with http.client (no signing, no retry logic, no parsing beyond "
        f"json.loads): the floor of any client. Replacing botocore could save at most "
        f"{saving_per_call:.2f} ms a call, {bound:.1f} ms of a {worst_name}'s "
        f"{worst['gateway_cpu_ms_per_request']:.1f} ms "
        f"({bound / worst['gateway_cpu_ms_per_request']:.0%}), before paying for signing and "
        "retries again; fewer calls per request is the larger lever.",
        "",
    ]
    return lines
