"""POST /v1/chat/completions with the real openai SDK pointed at the running gateway."""

from __future__ import annotations

import asyncio

import httpx
import openai
import pytest

pytestmark = pytest.mark.integration


def sdk(gateway, user_id: str = "alice", **options) -> openai.AsyncOpenAI:
    token = gateway.headers(user_id)["Authorization"].removeprefix("Bearer ")
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=token, **options)


def test_streaming_through_the_sdk_with_usage(gateway, offline_model) -> None:
    async def run() -> tuple[str, list, object]:
        client = sdk(gateway)
        stream = await client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Hello"},
            ],
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=5000,
            temperature=0.2,
        )
        chunks = [chunk async for chunk in stream]
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        return text, chunks, chunks[-1].usage

    text, chunks, usage = asyncio.run(run())

    upstream = offline_model.ended_requests()[0]
    assert upstream["max_tokens"] == 800  # clamped to MAX_OUTPUT_TOKENS
    assert upstream["messages"][0] == {"role": "system", "content": "You are terse."}
    assert text
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].id.startswith("chatcmpl-")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert usage.prompt_tokens == upstream["prompt_tokens"]
    assert usage.completion_tokens == upstream["completion_tokens"]
    record = gateway.wait_for_records(1)[0]
    assert record["request_id"] == chunks[0].id.removeprefix("chatcmpl-")
    assert record["conversation_id"] is None
    assert gateway.usage()["tokens_used"] == usage.total_tokens


def test_non_streaming_through_the_sdk(gateway, offline_model) -> None:
    async def run():
        return await sdk(gateway).chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}]
        )

    raw = asyncio.run(run())
    completion = raw.parse()

    assert raw.headers["x-request-id"] == completion.id.removeprefix("chatcmpl-")
    assert completion.choices[0].message.content
    assert completion.model == "gpt-4o"
    assert completion.usage.total_tokens == gateway.usage()["tokens_used"]
    assert [r["model"] for r in offline_model.ended_requests()] == ["gpt-4o"]


def test_naming_a_model_falls_back_down_the_chain_from_it(gateway, offline_model) -> None:
    offline_model.add_fault(model="gpt-4o", kind="status", status=503)

    async def run():
        return await sdk(gateway).chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}]
        )

    completion = asyncio.run(run())

    assert completion.model == "gpt-3.5-turbo"
    assert gateway.wait_for_records(1)[0]["models_tried"] == ["gpt-4o", "gpt-3.5-turbo"]


def test_sdk_raises_the_matching_errors(gateway_factory, offline_model) -> None:
    with gateway_factory(daily_token_limit=10) as gateway:

        async def run() -> list[type[Exception]]:
            raised = []
            attempts = [
                (sdk(gateway), "gpt-4o-mini"),
                (sdk(gateway, max_retries=2), "gpt-4o-mini"),
                (openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key="bad"), "gpt-4o-mini"),
                (sdk(gateway), "gpt-5-ultra"),
            ]
            for client, model in attempts:
                try:
                    await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": "Hi"}]
                    )
                except openai.APIStatusError as exc:
                    raised.append(type(exc))
            return raised

        raised = asyncio.run(run())
        records = gateway.cost_records()

    assert raised == [
        openai.RateLimitError,
        openai.RateLimitError,  # x-should-retry: false, so no retries either
        openai.AuthenticationError,
        openai.NotFoundError,
    ]
    assert offline_model.requests() == []
    assert [r["outcome"] for r in records] == ["budget_refused", "budget_refused"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "gpt-4o-mini", "messages": []}, "messages"),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "function", "content": "x"}]},
            "messages[0].role",
        ),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "tool", "content": "x"}]},
            "messages[0].tool_call_id",
        ),
        ({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "n": 2}, "n"),
        (
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "tools": []},
            "tools",
        ),
        (
            {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "x"}],
                "max_tokens": 0,
            },
            "max_tokens",
        ),
    ],
)
def test_invalid_requests_get_openai_shaped_400s(gateway, offline_model, body, param) -> None:
    response = httpx.post(
        gateway.url + "/v1/chat/completions", json=body, headers=gateway.headers()
    )

    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "code", "param"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert offline_model.requests() == []


def test_models_lists_the_chain(gateway) -> None:
    async def run():
        return [model.id async for model in sdk(gateway).models.list()]

    assert asyncio.run(run()) == ["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"]


def test_stream_cut_upstream_ends_with_an_error_chunk(gateway, offline_model) -> None:
    offline_model.add_fault(kind="cut", cut_after_chunks=3)

    async def run():
        stream = await sdk(gateway).chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
        return [chunk async for chunk in stream]

    with pytest.raises(openai.APIError):
        asyncio.run(run())
    record = gateway.wait_for_records(1)[0]
    assert record["outcome"] == "upstream_error"
    assert record["usage_source"] == "estimated"
    assert record["output_tokens"] == 3
