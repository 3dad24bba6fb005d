"""The upstream adapter's wire: the request it sends is the SDK's own request, its failures are
the SDK's errors, and a stream reads the same however its bytes are split into reads.

Both the adapter and the SDK talk to an in-process transport (httpx2.MockTransport) that
records what each sent, so the two can be compared byte for byte where it matters.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import openai
import pytest
from openai import AsyncOpenAI

from tollgate.adapters.upstream import OpenAIStream, OpenAIUpstream
from tollgate.errors import UpstreamRejected
from tollgate.ports import Message

MESSAGES: list[Message] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about rivers: Émile, 東京, 🌊."},
]
DONE_STREAM = b'data: {"choices":[]}\n\ndata: [DONE]\n\n'

Handler = Callable[[httpx2.Request], httpx2.Response]


def sdk_client(handler: Handler, **options: Any) -> AsyncOpenAI:
    transport = httpx2.MockTransport(handler)
    return AsyncOpenAI(
        api_key="sk-test-key",
        base_url="http://upstream.test/v1",
        http_client=httpx2.AsyncClient(transport=transport),
        max_retries=0,
        **options,
    )


def answering(status: int, body: bytes, sent: list[httpx2.Request]) -> Handler:
    def handle(request: httpx2.Request) -> httpx2.Response:
        sent.append(request)
        return httpx2.Response(status, content=body, headers={"content-type": "text/plain"})

    return handle


async def adapter_request(client: AsyncOpenAI, *, timeout_s: float) -> None:
    upstream = OpenAIUpstream(client, attempt_timeout_s=timeout_s)
    stream, _ = await upstream.open_stream(
        ["gpt-4o-mini"], MESSAGES, max_tokens=77, deadline=time.monotonic() + 3600
    )
    await stream.aclose()


async def sdk_request(client: AsyncOpenAI, *, timeout_s: float) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=77,
        timeout=timeout_s,
    )
    await stream.close()


@pytest.mark.parametrize("organization", [None, "org-tollgate"])
def test_the_request_sent_upstream_is_the_sdks_own(organization: str | None) -> None:
    # Given the same client settings for the adapter and for the SDK's own call
    ours: list[httpx2.Request] = []
    theirs: list[httpx2.Request] = []

    # When each sends the same chat completion request
    asyncio.run(
        adapter_request(
            sdk_client(answering(200, DONE_STREAM, ours), organization=organization),
            timeout_s=12.5,
        )
    )
    asyncio.run(
        sdk_request(
            sdk_client(answering(200, DONE_STREAM, theirs), organization=organization),
            timeout_s=12.5,
        )
    )

    # Then method, URL, every header (the key, the SDK's user agent and platform headers,
    # the organization) and the JSON body are the same
    (mine,), (sdk,) = ours, theirs
    assert (mine.method, str(mine.url)) == (sdk.method, str(sdk.url))
    assert dict(mine.headers) == dict(sdk.headers)
    assert mine.headers["authorization"] == "Bearer sk-test-key"
    assert json.loads(mine.content) == json.loads(sdk.content)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (400, b'{"error": {"message": "bad parameter xyz", "type": "invalid_request_error"}}'),
        (400, b'{"error": {"type": "invalid_request_error"}}'),
        (429, b'{"message": "slow down"}'),
        (500, b"upstream exploded"),
        (503, b""),
    ],
)
def test_a_refusal_is_the_sdks_error(status: int, body: bytes) -> None:
    # Given upstream refusing with this status and body
    async def raised(send: Callable[[AsyncOpenAI], Any]) -> openai.APIStatusError:
        client = sdk_client(answering(status, body, []))
        try:
            await send(client)
        except openai.APIStatusError as exc:
            return exc
        raise AssertionError("no error")

    async def through_adapter(client: AsyncOpenAI) -> None:
        upstream = OpenAIUpstream(client, attempt_timeout_s=5, retries_per_model=0)
        await upstream._attempt(client, "gpt-4o-mini", {"messages": MESSAGES}, 5.0)

    # When the adapter's attempt and the SDK's own call meet it
    mine = asyncio.run(raised(through_adapter))
    sdk = asyncio.run(raised(lambda client: sdk_request(client, timeout_s=5)))

    # Then both raise the same status, message and error body
    assert (mine.status_code, mine.message, mine.body) == (sdk.status_code, sdk.message, sdk.body)


def test_an_upstream_400_is_refused_with_upstreams_own_message() -> None:
    refusal = b'{"error": {"message": "bad parameter xyz", "type": "invalid_request_error"}}'
    client = sdk_client(answering(400, refusal, []))
    upstream = OpenAIUpstream(client, attempt_timeout_s=5)

    with pytest.raises(UpstreamRejected) as raised:
        asyncio.run(
            upstream.open_stream(
                ["gpt-4o-mini"], MESSAGES, max_tokens=5, deadline=time.monotonic() + 60
            )
        )

    assert raised.value.message == "bad parameter xyz"


class Pieces(httpx2.AsyncByteStream):
    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for piece in self.pieces:
            yield piece


def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return json.dumps({"model": "gpt-4o-mini-2024-07-18", "choices": [choice]}, ensure_ascii=False)


USAGE = json.dumps(
    {
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [],
        "usage": {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15},
    }
)
# Raw U+2028, U+0085 and U+001C inside a JSON string end no SSE line (only CR and LF do).
TEXTS = ["Rivers ", "run — ", "東京 ", "\u2028\x85\x1c", "🌊"]


def stream_bytes(line_end: str) -> bytes:
    events = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": text}) for text in TEXTS]
    events += [chunk({}, "stop"), USAGE]
    body = "".join(f": comment{line_end}data: {event}{line_end}{line_end}" for event in events)
    return (body + f"data: [DONE]{line_end}{line_end}").encode()


@pytest.mark.parametrize("line_end", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("piece_size", [1, 3, 7, 64, 100_000])
def test_a_stream_reads_the_same_however_its_bytes_arrive(line_end: str, piece_size: int) -> None:
    # Given a stream cut into reads of `piece_size` bytes: through lines, through the
    # `data:` prefix, through multi-byte characters
    raw = stream_bytes(line_end)
    pieces = [raw[start : start + piece_size] for start in range(0, len(raw), piece_size)]
    response = httpx2.Response(200, stream=Pieces(pieces))
    stream = OpenAIStream("gpt-4o-mini", response, answered_at=0.0)

    # When it is read
    async def read() -> list[Any]:
        return [delta async for delta in stream.deltas()]

    deltas = asyncio.run(read())

    # Then the text, the model upstream reported, the finish reason and the usage are whole
    assert deltas == TEXTS
    assert stream.upstream_model == "gpt-4o-mini-2024-07-18"
    assert stream.finish_reason == "stop"
    assert stream.usage is not None
    assert (stream.usage.input_tokens, stream.usage.output_tokens) == (11, 4)


def test_a_malformed_utf8_byte_is_replaced_not_a_broken_stream() -> None:
    # Given a chunk whose text holds a byte that is not UTF-8
    raw = stream_bytes("\n").replace(b"Rivers ", b"Riv\xffers ")
    stream = OpenAIStream("gpt-4o-mini", httpx2.Response(200, stream=Pieces([raw])), 0.0)

    async def read() -> list[Any]:
        return [delta async for delta in stream.deltas()]

    # When it is read, Then the byte reads as U+FFFD (as httpx decodes text) and the rest is whole
    assert asyncio.run(read()) == ["Riv\ufffders ", *TEXTS[1:]]


def test_a_compressed_stream_reads_the_same() -> None:
    # Given upstream answering with a gzip-encoded body, in small reads
    raw = gzip.compress(stream_bytes("\n"))
    pieces = [raw[start : start + 5] for start in range(0, len(raw), 5)]
    response = httpx2.Response(200, headers={"content-encoding": "gzip"}, stream=Pieces(pieces))
    stream = OpenAIStream("gpt-4o-mini", response, 0.0)

    async def read() -> list[Any]:
        return [delta async for delta in stream.deltas()]

    # When it is read, Then it reads as the plain stream does
    assert asyncio.run(read()) == TEXTS
    assert stream.finish_reason == "stop"
