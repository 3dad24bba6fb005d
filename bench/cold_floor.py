"""The cold-start floor: what any gateway on the same stack pays before its first token.

    OPENAI_BASE_URL=... python -m uvicorn --factory --app-dir bench cold_floor:create_app \
        --http httptools --loop uvloop ...

It imports `openai` and `boto3`, creates an AsyncOpenAI client and a boto3 DynamoDB client
(both unavoidable for a gateway that streams from OpenAI and keeps budgets in DynamoDB),
serves GET /health, and proxies POST /v1/chat/completions through the SDK's raw streaming
response, so its first token includes the upstream's own first-token time.
"""

from __future__ import annotations

import json
import os
from typing import Any

import boto3
import openai

Scope = dict[str, Any]
Receive = Any
Send = Any


async def _read_body(receive: Receive) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return bytes(body)


class ColdFloor:
    def __init__(self) -> None:
        self.openai = openai.AsyncOpenAI(
            api_key=os.environ.get("OPENAI_API_KEY", "missing"),
            base_url=os.environ.get("OPENAI_BASE_URL"),
            max_retries=0,
        )
        self.dynamodb = boto3.client("dynamodb")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["path"] == "/v1/chat/completions" and scope["method"] == "POST":
            await self._proxy(receive, send)
            return
        status = 200 if scope["path"] == "/health" else 404
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def _proxy(self, receive: Receive, send: Send) -> None:
        params = json.loads(await _read_body(receive))
        context = self.openai.chat.completions.with_streaming_response.create(**params)
        async with context as response:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")],
                }
            )
            async for chunk in response.iter_bytes():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def create_app() -> ColdFloor:
    return ColdFloor()
