"""A latency-injecting HTTP proxy for DynamoDB: a fixed delay per call, calls concurrent.

    LATENCY_PROXY_UPSTREAM=http://127.0.0.1:<moto> python -m uvicorn --factory \
        --app-dir bench latency_proxy:create_app --http httptools --loop uvloop ...

Every request is held for the configured delay, then forwarded to the upstream (the moto
server) and its response returned byte for byte. Each request waits on its own, so calls
that the gateway makes concurrently overlap here too: the delay models one network round
trip, not a queue. Each call is logged with its wall-clock start and end, its DynamoDB
operation (the X-Amz-Target header) and its payload sizes:

- `GET /_proxy/calls` lists the log, `DELETE /_proxy/calls` clears it;
- `POST /_proxy/config` `{"delay_ms": 40}` sets the delay (default 0).

Everything else is forwarded.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import httpx

Scope = dict[str, Any]
Receive = Any
Send = Any

# Hop-by-hop headers and those the proxy recomputes.
NOT_FORWARDED = {b"host", b"content-length", b"connection", b"transfer-encoding", b"keep-alive"}


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


async def _respond(send: Send, status: int, body: bytes, headers: list[Any]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _json(send: Send, status: int, value: Any) -> None:
    content_type = [(b"content-type", b"application/json")]
    await _respond(send, status, json.dumps(value).encode(), content_type)


def transact_items(operation: str, body: bytes) -> int:
    """Items in a TransactWriteItems / TransactGetItems call (each costs double units)."""
    if not operation.startswith("Transact"):
        return 0
    try:
        return len(json.loads(body).get("TransactItems", []))
    except ValueError:
        return 0


class LatencyProxy:
    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self._client: httpx.AsyncClient | None = None
        self.delay_s = 0.0
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["path"] == "/_proxy/calls" and scope["method"] == "GET":
            await _json(send, 200, self.calls)
        elif scope["path"] == "/_proxy/calls" and scope["method"] == "DELETE":
            self.calls.clear()
            await _json(send, 200, {})
        elif scope["path"] == "/_proxy/config" and scope["method"] == "POST":
            self.delay_s = float(json.loads(await _read_body(receive))["delay_ms"]) / 1000
            await _json(send, 200, {"delay_ms": self.delay_s * 1000})
        else:
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
                self._client = httpx.AsyncClient(timeout=60.0, limits=limits)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._client is not None
        started_at = time.time()
        body = await _read_body(receive)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in NOT_FORWARDED]
        target = dict(headers).get(b"x-amz-target", b"").decode()
        operation = target.rpartition(".")[2]
        await asyncio.sleep(self.delay_s)
        url = self._upstream + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode()
        request = self._client.build_request(scope["method"], url, content=body, headers=headers)
        response = await self._client.send(request, stream=True)
        try:
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
        finally:
            await response.aclose()
        response_headers = [
            (k, v) for k, v in response.headers.raw if k.lower() not in NOT_FORWARDED
        ]
        await _respond(send, response.status_code, raw, response_headers)
        if operation:
            self.calls.append(
                {
                    "operation": operation,
                    "started_at": started_at,
                    "ended_at": time.time(),
                    "status": response.status_code,
                    "request_bytes": len(body),
                    "response_bytes": len(raw),
                    "transact_items": transact_items(operation, body),
                    "consistent_read": b'"ConsistentRead": true' in body
                    or b'"ConsistentRead":true' in body,
                }
            )


def create_app() -> LatencyProxy:
    return LatencyProxy(os.environ["LATENCY_PROXY_UPSTREAM"])
