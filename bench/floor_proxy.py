"""The floor: the least any streaming proxy in Python can do, as a raw ASGI app.

    FLOOR_UPSTREAM_URL=http://127.0.0.1:9090 python -m uvicorn --factory \
        --app-dir bench floor_proxy:create_app --http httptools --loop uvloop ...

POST /v1/chat/completions is forwarded to FLOOR_UPSTREAM_URL with one shared httpx2
AsyncClient (the HTTP client the OpenAI SDK uses) and the response bytes are streamed back
as they arrive. No auth, no parsing, no budget, no storage: whatever Tollgate costs above
this is Tollgate's own work. GET /health answers 200.
"""

from __future__ import annotations

import os
from typing import Any

import httpx2

Scope = dict[str, Any]
Receive = Any
Send = Any

HEALTH = b'{"status":"ok"}'
FORWARDED_HEADERS = (b"content-type", b"authorization")


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


async def _respond(send: Send, status: int, body: bytes, content_type: bytes) -> None:
    headers = [(b"content-type", content_type)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class FloorProxy:
    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self._client: httpx2.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["path"] == "/health":
            await _respond(send, 200, HEALTH, b"application/json")
        elif scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
            await self._forward(scope, receive, send)
        else:
            await _respond(send, 404, b'{"error":"not found"}', b"application/json")

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                self._client = httpx2.AsyncClient(
                    timeout=60.0, limits=httpx2.Limits(max_connections=1000)
                )
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._client is not None
        body = await _read_body(receive)
        headers = [(name, value) for name, value in scope["headers"] if name in FORWARDED_HEADERS]
        request = self._client.build_request(
            "POST", self._upstream + scope["path"], content=body, headers=headers
        )
        response = await self._client.send(request, stream=True)
        try:
            content_type = response.headers.get("content-type", "application/json").encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": [(b"content-type", content_type), (b"cache-control", b"no-cache")],
                }
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            await response.aclose()


def create_app() -> FloorProxy:
    return FloorProxy(os.environ["FLOOR_UPSTREAM_URL"])
