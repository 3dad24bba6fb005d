"""What one DynamoDB call costs the gateway in CPU: botocore, the gateway's client, http.client.

In this process, against the bench's moto server (its own process), one conditional
UpdateItem shaped like a budget reservation is sent by each client in turn, in
interleaved blocks. CPU is the whole process's (`time.process_time`, every thread), so a
hop to a worker thread counts:

- `botocore`: a botocore client with the gateway's former settings, called from the
  event loop through a worker thread, as the gateway called it before
  tollgate.adapters.dynamodb_http;
- `gateway`: tollgate.adapters.dynamodb_http.AsyncDynamoDB on the event loop (uvloop);
- `http.client`: the same request, signed once, replayed with http.client on the loop's
  thread and JSON-decoded: no signing, no retry logic, no parsing beyond json.loads.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import uvloop

from bench.processes import AWS_ENV, TABLES, async_dynamodb

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

CLIENTS = ("botocore", "gateway", "http.client")


def _reservation(table: str) -> dict[str, Any]:
    return {
        "TableName": table,
        "Key": {"pk": {"S": "bench#dynamodb-cpu"}, "sk": {"S": "day"}},
        "UpdateExpression": "ADD tokens :n",
        "ConditionExpression": "attribute_not_exists(tokens) OR tokens < :limit",
        "ExpressionAttributeValues": {":n": {"N": "1"}, ":limit": {"N": str(10**15)}},
        "ReturnValues": "ALL_NEW",
    }


def _botocore_client(moto_url: str) -> DynamoDBClient:
    from tollgate.adapters.aws import aws_session, request_profile

    client: DynamoDBClient = aws_session().create_client(  # type: ignore[assignment]
        "dynamodb",
        endpoint_url=moto_url,
        region_name=AWS_ENV["AWS_REGION"],
        aws_access_key_id=AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=request_profile().config(),
    )
    return client


async def _per_call(moto_url: str, calls: int, blocks: int) -> dict[str, float]:
    from concurrent.futures import ThreadPoolExecutor

    params = _reservation(TABLES["UsageTable"])
    botocore = _botocore_client(moto_url)
    captured: dict[str, Any] = {}

    def capture(request: Any, **_: Any) -> None:
        captured["body"], captured["headers"] = request.body, dict(request.headers)

    botocore.meta.events.register("before-send.dynamodb.UpdateItem", capture)
    botocore.update_item(**params)
    botocore.meta.events.unregister("before-send.dynamodb.UpdateItem", capture)
    target = urlsplit(moto_url)
    replay = http.client.HTTPConnection(target.hostname or "127.0.0.1", target.port)
    gateway = async_dynamodb(moto_url)
    loop = asyncio.get_running_loop()
    executor = ThreadPoolExecutor(max_workers=4)

    async def via_botocore() -> None:
        await loop.run_in_executor(executor, lambda: botocore.update_item(**params))

    async def via_gateway() -> None:
        await gateway.call("UpdateItem", params)

    async def via_replay() -> None:
        replay.request("POST", "/", captured["body"], captured["headers"])
        json.loads(replay.getresponse().read() or b"{}")

    senders: dict[str, Callable[[], Awaitable[None]]] = {
        "botocore": via_botocore,
        "gateway": via_gateway,
        "http.client": via_replay,
    }
    for send in senders.values():  # warm: connections, models
        for _ in range(20):
            await send()
    samples: dict[str, list[float]] = {name: [] for name in CLIENTS}
    for block in range(blocks):
        order = CLIENTS[block % 3 :] + CLIENTS[: block % 3]
        for name in order:
            started = time.process_time()
            for _ in range(calls):
                await senders[name]()
            samples[name].append((time.process_time() - started) * 1000 / calls)
    replay.close()
    gateway.close()
    executor.shutdown()
    return {name: statistics.median(values) for name, values in samples.items()}


def per_call(moto_url: str, calls: int = 100, blocks: int = 9) -> dict[str, float]:
    """Median over blocks of the process CPU per call, in ms, for each client."""
    return uvloop.run(_per_call(moto_url, calls, blocks))


def render(per_call_ms: dict[str, float], calls_per_request: dict[str, int]) -> list[str]:
    lines = [
        "## DynamoDB calls: CPU per call",
        "",
        "One conditional UpdateItem (a reservation's shape) against moto, 9 interleaved blocks "
        "of 100 calls per client in one process; CPU is the process's, every thread "
        "(bench/dynamodb_cpu.py). `botocore`: a botocore client called through a worker "
        "thread, as the gateway did before; `gateway`: tollgate.adapters.dynamodb_http on the "
        "event loop; `http.client`: the same signed request replayed with http.client (no "
        "signing, no retries, json.loads only). moto keeps connections alive, as DynamoDB does.",
        "",
        "| client | CPU ms per call | × http.client |",
        "|---|---:|---:|",
    ]
    replay = per_call_ms["http.client"]
    for name in CLIENTS:
        lines.append(f"| {name} | {per_call_ms[name]:.3f} | {per_call_ms[name] / replay:.2f}× |")
    saved = per_call_ms["botocore"] - per_call_ms["gateway"]
    lines += [
        "",
        f"The gateway's client saves {saved:.2f} ms of CPU per call against botocore "
        f"({per_call_ms['botocore'] / per_call_ms['gateway']:.1f}× less).",
    ]
    if calls_per_request:
        counted = ", ".join(f"{path} {calls}" for path, calls in calls_per_request.items())
        lines.append(
            f"DynamoDB calls per request (round-trip section): {counted}; at "
            f"{per_call_ms['gateway']:.2f} ms a call."
        )
    lines.append("")
    return lines
