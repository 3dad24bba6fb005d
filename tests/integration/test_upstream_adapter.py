"""The OpenAI upstream adapter against the offline model server, over real HTTP."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import pytest
from openai import AsyncOpenAI

from tests.servers import free_port
from tollgate.adapters.tokenizer import token_counter
from tollgate.adapters.upstream import OpenAIStream, OpenAIUpstream, is_reasoning_by_name
from tollgate.errors import UpstreamError, UpstreamRejected, UpstreamUnavailable
from tollgate.ports import Message

if TYPE_CHECKING:
    from tests.offline_fixture import OfflineModelClient

pytest_plugins = ["tests.offline_fixture"]
pytestmark = [pytest.mark.integration, pytest.mark.anyio]

MESSAGES: list[Message] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about rivers."},
]
CAP = 300


@pytest.fixture
async def client(offline_model: OfflineModelClient) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=offline_model.openai_base_url, api_key="x") as openai_client:
        yield openai_client


def deadline_in(seconds: float) -> float:
    return time.monotonic() + seconds


async def read_all(stream: OpenAIStream) -> str:
    try:
        return "".join([text async for text in stream.deltas()])
    finally:
        await stream.aclose()


def bodies(offline_model: OfflineModelClient) -> list[dict[str, Any]]:
    return [record["body"] for record in offline_model.ended_requests()]


def test_reasoning_models_by_name() -> None:
    for model in ("gpt-5", "gpt-5-mini-2025-08-07", "gpt-5-nano", "o1", "o3", "o4-mini"):
        assert is_reasoning_by_name(model), model
    for model in ("gpt-4.1-mini", "gpt-4o", "gpt-4o-mini-2024-07-18", "gpt-3.5-turbo"):
        assert not is_reasoning_by_name(model), model


# --- what goes upstream ------------------------------------------------------------------


async def test_reasoning_model_gets_max_completion_tokens_and_effort_and_reports_reasoning(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    # Given a reasoning model spending 25 hidden tokens at low effort
    offline_model.set_config(reply_tokens=15, reasoning_tokens={"low": 25})
    upstream = OpenAIUpstream(client, attempt_timeout_s=5, cap_parameter="max_tokens")

    # When /chat's choices go up with it (effort low, a temperature it would refuse)
    stream, tried = await upstream.open_stream(
        ["gpt-5-mini"],
        MESSAGES,
        max_tokens=CAP,
        deadline=deadline_in(10),
        reasoning_effort="low",
        sampling={"temperature": 0.3, "top_p": 0.9, "seed": 7},
    )
    text = await read_all(stream)

    # Then the server accepted the body: the cap as max_completion_tokens, the effort, and
    # none of the sampling parameters a reasoning model refuses
    (body,) = bodies(offline_model)
    assert "max_tokens" not in body
    assert body["max_completion_tokens"] == CAP
    assert body["reasoning_effort"] == "low"
    assert "temperature" not in body
    assert "top_p" not in body
    assert body["seed"] == 7
    # And the usage counts the reasoning as output
    assert tried == ["gpt-5-mini"]
    assert stream.upstream_model == "gpt-5-mini-2025-08-07"
    assert stream.finish_reason == "stop"
    assert len(token_counter().encoding("gpt-5-mini").encode(text)) == 15
    assert stream.usage is not None
    assert stream.usage.reasoning_tokens == 25
    assert stream.usage.output_tokens == 40
    assert stream.usage.input_tokens == token_counter().count_messages("gpt-5-mini", MESSAGES)


@pytest.mark.parametrize(
    ("cap_parameter", "model", "sent_as"),
    [
        ("max_completion_tokens", "gpt-4o-mini", "max_completion_tokens"),
        ("max_tokens", "gpt-4o-mini", "max_tokens"),
        ("max_tokens", "gpt-4.1-mini", "max_tokens"),
        ("max_tokens", "o4-mini", "max_completion_tokens"),
        ("max_completion_tokens", "gpt-5", "max_completion_tokens"),
    ],
)
async def test_cap_parameter_setting_never_reaches_a_reasoning_model(
    client: AsyncOpenAI,
    offline_model: OfflineModelClient,
    cap_parameter: Any,
    model: str,
    sent_as: str,
) -> None:
    upstream = OpenAIUpstream(client, attempt_timeout_s=5, cap_parameter=cap_parameter)

    stream, _ = await upstream.open_stream(
        [model], MESSAGES, max_tokens=5, deadline=deadline_in(10)
    )
    await read_all(stream)

    (body,) = bodies(offline_model)
    other = {"max_tokens", "max_completion_tokens"} - {sent_as}
    assert body[sent_as] == 5
    assert other.isdisjoint(body)


async def test_non_reasoning_models_get_no_effort_and_keep_the_gateways_sampling(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    upstream = OpenAIUpstream(client, attempt_timeout_s=5)

    stream, _ = await upstream.open_stream(
        ["gpt-4.1-mini"],
        MESSAGES,
        max_tokens=CAP,
        deadline=deadline_in(10),
        reasoning_effort="low",  # the offline server refuses it for this model
        sampling={"temperature": 0.3},
    )
    await read_all(stream)

    (body,) = bodies(offline_model)
    assert "reasoning_effort" not in body
    assert body["temperature"] == 0.3


async def test_client_parameters_pass_through_unchanged_but_the_cap_is_the_gateways(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    upstream = OpenAIUpstream(client, attempt_timeout_s=5)
    extra = {"temperature": 0.4, "max_tokens": 5000, "max_completion_tokens": 6000}

    stream, _ = await upstream.open_stream(
        ["gpt-4o-mini"], MESSAGES, max_tokens=CAP, deadline=deadline_in(10), extra=extra
    )
    await read_all(stream)
    # A /v1 client's temperature goes to a reasoning model as sent: upstream's 400 is theirs
    with pytest.raises(UpstreamRejected) as rejected:
        await upstream.open_stream(
            ["gpt-5-mini", "gpt-4o-mini"],
            MESSAGES,
            max_tokens=CAP,
            deadline=deadline_in(10),
            extra=extra,
        )

    first, second = bodies(offline_model)
    assert (first["temperature"], first["max_completion_tokens"]) == (0.4, CAP)
    assert "max_tokens" not in first
    assert (second["temperature"], second["max_completion_tokens"]) == (0.4, CAP)
    assert "max_tokens" not in second
    assert "'temperature' does not support 0.4" in rejected.value.message
    assert rejected.value.models_tried == ["gpt-5-mini"]


async def test_a_reasoning_model_the_table_does_not_know_is_refused_by_upstream(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    # Given a lookup that wrongly calls gpt-5-mini a plain model, and max_tokens configured
    upstream = OpenAIUpstream(
        client, attempt_timeout_s=5, cap_parameter="max_tokens", is_reasoning=lambda _: False
    )

    # Then upstream answers 400 unsupported_parameter: a typed error, not a retry
    with pytest.raises(UpstreamRejected) as rejected:
        await upstream.open_stream(
            ["gpt-5-mini", "gpt-4o-mini"], MESSAGES, max_tokens=CAP, deadline=deadline_in(10)
        )

    assert "Use 'max_completion_tokens' instead" in rejected.value.message
    assert rejected.value.models_tried == ["gpt-5-mini"]
    assert [record["outcome"] for record in offline_model.ended_requests()] == ["invalid_request"]


# --- a reasoning model's silence -----------------------------------------------------------


async def test_open_stream_returns_when_upstream_answers_not_after_the_thinking(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    # Given a reasoning model that thinks longer than the whole deadline
    offline_model.set_config(reasoning_silence_s=60)
    upstream = OpenAIUpstream(client, attempt_timeout_s=30, first_byte_timeout_s=3)

    # When the stream is opened, Then it is in hand while upstream has sent no text yet
    stream, _ = await upstream.open_stream(
        ["gpt-5"], MESSAGES, max_tokens=CAP, deadline=deadline_in(5)
    )
    assert stream.answered_at <= time.monotonic()
    (record,) = offline_model.requests()
    assert (record["outcome"], record["chunks_sent"]) == ("in_progress", 0)

    await stream.aclose()
    (record,) = offline_model.ended_requests()
    assert record["outcome"] == "client_disconnected"


async def test_reasoning_silence_then_text(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.set_config(reasoning_silence_s=0.3, reply_tokens=10)
    upstream = OpenAIUpstream(client, attempt_timeout_s=5, first_byte_timeout_s=0.2)

    stream, _ = await upstream.open_stream(
        ["o3"], MESSAGES, max_tokens=CAP, deadline=deadline_in(10)
    )
    deltas = stream.deltas()
    first = await anext(deltas)
    first_text_at = time.monotonic()
    rest = [text async for text in deltas]

    assert stream.answered_at < first_text_at
    assert len(token_counter().encoding("o3").encode(first + "".join(rest))) == 10
    assert stream.finish_reason == "stop"
    assert stream.usage is not None
    assert stream.usage.reasoning_tokens == 192  # the server's default for medium effort


async def test_cap_reached_while_reasoning_ends_with_length_and_no_text(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.set_config(reasoning_tokens={"low": 64})
    upstream = OpenAIUpstream(client, attempt_timeout_s=5)

    stream, _ = await upstream.open_stream(
        ["gpt-5-mini"], MESSAGES, max_tokens=50, deadline=deadline_in(10), reasoning_effort="low"
    )

    assert await read_all(stream) == ""
    assert stream.finish_reason == "length"
    assert stream.usage is not None
    assert (stream.usage.output_tokens, stream.usage.reasoning_tokens) == (50, 50)


# --- retries and fallback -----------------------------------------------------------------


async def test_each_model_is_retried_once_before_falling_back(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(model="gpt-5-mini", kind="status", status=500)
    upstream = OpenAIUpstream(client, attempt_timeout_s=5)

    stream, tried = await upstream.open_stream(
        ["gpt-5-mini", "gpt-4.1-mini"],
        MESSAGES,
        max_tokens=CAP,
        deadline=deadline_in(20),
        reasoning_effort="low",
    )
    await read_all(stream)

    records = offline_model.ended_requests()
    assert [record["model"] for record in records] == ["gpt-5-mini", "gpt-5-mini", "gpt-4.1-mini"]
    assert [record["outcome"] for record in records] == ["fault_status"] * 2 + ["completed"]
    assert tried == ["gpt-5-mini", "gpt-4.1-mini"]
    # The fallback body suits the fallback model: no effort for a model that refuses it
    assert [record["body"].get("reasoning_effort") for record in records] == ["low", "low", None]
    assert stream.model == "gpt-4.1-mini"


async def test_a_hung_model_is_given_up_after_the_first_byte_timeout(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    # Given a first model that takes the request and never answers, and a deadline that
    # two attempts bounded only by the attempt timeout would use up
    offline_model.add_fault(model="gpt-5-mini", kind="hang")
    upstream = OpenAIUpstream(client, attempt_timeout_s=60, first_byte_timeout_s=0.3)

    # When a stream is opened
    stream, tried = await upstream.open_stream(
        ["gpt-5-mini", "gpt-4.1-mini"], MESSAGES, max_tokens=CAP, deadline=deadline_in(8)
    )
    text = await read_all(stream)

    # Then each attempt on the hung model was abandoned and the second model answered
    assert text
    assert tried == ["gpt-5-mini", "gpt-4.1-mini"]
    records = offline_model.ended_requests()
    assert [(record["model"], record["outcome"]) for record in records] == [
        ("gpt-5-mini", "hung"),
        ("gpt-5-mini", "hung"),
        ("gpt-4.1-mini", "completed"),
    ]


async def test_every_model_hung_is_unavailable_with_the_models_tried(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(kind="hang")
    upstream = OpenAIUpstream(client, attempt_timeout_s=60, first_byte_timeout_s=0.2)

    with pytest.raises(UpstreamUnavailable) as unavailable:
        await upstream.open_stream(
            ["gpt-5-mini", "gpt-4.1-mini"], MESSAGES, max_tokens=CAP, deadline=deadline_in(8)
        )

    error = unavailable.value
    assert isinstance(error, UpstreamError)
    assert error.models_tried == ["gpt-5-mini", "gpt-4.1-mini"]
    assert (error.status, error.code) == (503, "upstream_unavailable")
    assert error.retry_after is not None
    assert len(offline_model.ended_requests()) == 4


async def test_an_upstream_that_refuses_connections_is_unavailable() -> None:
    # Given an upstream address where nothing listens
    async with AsyncOpenAI(base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="x") as nobody:
        upstream = OpenAIUpstream(nobody, attempt_timeout_s=5)

        # When a stream is opened, Then every model was tried (and retried) and the chain
        # is unavailable, naming the connection failure
        with pytest.raises(UpstreamUnavailable) as unavailable:
            await upstream.open_stream(
                ["gpt-4o-mini", "gpt-4o"], MESSAGES, max_tokens=CAP, deadline=deadline_in(20)
            )

    assert unavailable.value.models_tried == ["gpt-4o-mini", "gpt-4o"]
    assert "gpt-4o: APIConnectionError" in unavailable.value.message


async def test_an_answer_slower_than_the_attempt_timeout_moves_the_chain_on(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    # Given a first model that never answers, and no first-byte timeout: only the attempt
    # timeout (the HTTP client's own read timeout) bounds the wait
    offline_model.add_fault(model="gpt-5-mini", kind="hang")
    upstream = OpenAIUpstream(client, attempt_timeout_s=0.3, retries_per_model=0)

    # When a stream is opened, Then the hung model timed out and the next one answered
    stream, tried = await upstream.open_stream(
        ["gpt-5-mini", "gpt-4.1-mini"], MESSAGES, max_tokens=CAP, deadline=deadline_in(8)
    )

    assert await read_all(stream)
    assert tried == ["gpt-5-mini", "gpt-4.1-mini"]
