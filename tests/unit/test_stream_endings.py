"""However the web layer's task ends, the stream is settled exactly once.

Runs the real ChatService on the in-memory stores with an upstream that streams slowly,
and ends the ASGI response by cancelling its task (CancelledError) and by closing the
frames generator at a yield (GeneratorExit).
"""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from typing import Any

from tollgate.adapters.memory_store import (
    MemoryConversationStore,
    MemoryRequestRegistry,
    MemoryUsageStore,
)
from tollgate.adapters.tokenizer import token_counter
from tollgate.asgi import SSEResponse
from tollgate.budget import Budgets, Payer, WindowLimits
from tollgate.chat import ChatService
from tollgate.chat_config import ChatConfig, ChatRequest
from tollgate.observability import CostRecorder, build_logger
from tollgate.ports import Limits, UpstreamUsage
from tollgate.pricing import price_table
from tollgate.prompts import PromptLibrary
from tollgate.wire.chat import chat_frames


class SlowStream:
    """An upstream reply of many words, one every 10 ms; records when it was closed."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.upstream_model: str | None = "gpt-4o-mini-2024-07-18"
        self.usage: UpstreamUsage | None = None
        self.finish_reason: str | None = None
        self.closed = False

    async def deltas(self) -> AsyncIterator[str]:
        for _ in range(1000):
            if self.closed:
                raise ConnectionError("closed")
            await asyncio.sleep(0.01)
            yield " word"

    async def aclose(self) -> None:
        self.closed = True


class SlowUpstream:
    def __init__(self) -> None:
        self.streams: list[SlowStream] = []

    async def open_stream(self, models: list[str], messages: Any, **_: Any) -> Any:
        stream = SlowStream(models[0])
        self.streams.append(stream)
        return stream, [models[0]]


def service(log: io.StringIO) -> tuple[ChatService, SlowUpstream, MemoryUsageStore]:
    usage, upstream = MemoryUsageStore(), SlowUpstream()
    chat = ChatService(
        ChatConfig(
            model_chain=("gpt-4o-mini",),
            summary_model="gpt-4o-mini",
            max_output_tokens=800,
            max_input_tokens=8000,
            budgets=Budgets(
                plans={"default": WindowLimits(day=Limits(tokens=50_000, cost_micros=None))}
            ),
            conversation_token_limit=200_000,
            history_token_target=4000,
            stream_timeout_s=60,
            summary_timeout_s=20,
            openai_timeout_s=60,
            cancel_poll_s=1.0,
            rate_limit_per_minute=60,
        ),
        usage=usage,
        requests=MemoryRequestRegistry(),
        conversations=MemoryConversationStore(ttl_days=30),
        upstream=upstream,
        tokens=token_counter(),
        prices=price_table(),
        prompts=PromptLibrary.load(),
        recorder=CostRecorder(logger=build_logger(log), stream=log),
    )
    return chat, upstream, usage


def records(log: io.StringIO) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in log.getvalue().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("message") == "cost_record"]


async def never_disconnects() -> dict[str, Any]:
    await asyncio.Event().wait()
    return {"type": "http.disconnect"}


def test_a_cancelled_response_task_still_settles_once() -> None:
    log = io.StringIO()

    async def run() -> tuple[Any, SlowUpstream]:
        chat, upstream, usage = service(log)
        stream = await chat.start(Payer("alice"), ChatRequest("Hello"))
        sent: list[bytes] = []
        five_frames_sent = asyncio.Event()

        async def send(message: dict[str, Any]) -> None:
            sent.append(message.get("body", b""))
            if len(sent) >= 5:
                five_frames_sent.set()

        # Given a response streaming to a client
        task = asyncio.create_task(SSEResponse(stream)({}, never_disconnects, send))
        await five_frames_sent.wait()
        # When the server cancels its task (shutdown, a dropped connection upstream of us)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await asyncio.sleep(0.1)  # the shielded settlement finishes in its own task
        (account,) = usage._budgets
        return await usage.counters(account), upstream

    counters, upstream = asyncio.run(run())

    # Then upstream was closed, one record says so, and no reservation is left open
    assert upstream.streams[0].closed
    written = records(log)
    assert [r["outcome"] for r in written] == ["client_disconnected"]
    assert written[0]["usage_source"] == "estimated"
    assert counters.reserved_tokens == 0
    assert counters.tokens == written[0]["input_tokens"] + written[0]["output_tokens"]


def test_a_frames_generator_closed_at_a_yield_still_settles_once() -> None:
    log = io.StringIO()

    async def run() -> Any:
        chat, _, usage = service(log)
        stream = await chat.start(Payer("alice"), ChatRequest("Hello"))
        frames = chat_frames(stream)
        # Given a client that read a few frames
        for _ in range(4):
            await anext(frames)
        # When the generator is closed where it yielded (GeneratorExit inside it)
        await frames.aclose()
        await stream.aclose()
        (account,) = usage._budgets
        return await usage.counters(account)

    counters = asyncio.run(run())

    # Then the stream was settled once
    assert [r["outcome"] for r in records(log)] == ["client_disconnected"]
    assert counters.reserved_tokens == 0
