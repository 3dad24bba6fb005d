"""Tools, tool results and images on /v1/chat/completions with the real openai SDK over HTTP."""

from __future__ import annotations

import asyncio
import json

import openai
import pytest

from tests.integration.test_openai_compat import sdk

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city", "unit"],
        },
    },
}
IMAGE = {"url": "https://example.com/cat.png", "detail": "low"}


def upstream_total(offline_model) -> int:
    return sum(
        r["prompt_tokens"] + r["completion_tokens"]
        for r in offline_model.ended_requests()
        if r["status"] == 200
    )


def test_a_streamed_tool_call_is_assembled_from_its_deltas(gateway, offline_model) -> None:
    async def run():
        stream = await sdk(gateway).chat.completions.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": "Weather in Paris?"}],
            tools=[WEATHER],
            tool_choice="auto",
            parallel_tool_calls=False,
            stream=True,
            stream_options={"include_usage": True},
        )
        return [chunk async for chunk in stream]

    chunks = asyncio.run(run())

    fragments = [
        call for c in chunks if c.choices for call in (c.choices[0].delta.tool_calls or [])
    ]
    head, *rest = fragments
    assert (head.index, head.type, head.function.name) == (0, "function", "get_weather")
    assert head.id.startswith("call_")
    assert all(f.id is None and f.function.name is None for f in rest)
    arguments = json.loads("".join(f.function.arguments or "" for f in fragments))
    assert set(arguments) == {"city", "unit"}
    assert arguments["unit"] in ("celsius", "fahrenheit")
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    sent = offline_model.ended_requests()[0]["body"]
    assert sent["tools"] == [WEATHER]
    assert (sent["tool_choice"], sent["parallel_tool_calls"]) == ("auto", False)
    assert chunks[-1].usage.total_tokens == upstream_total(offline_model)
    assert gateway.usage()["tokens_used"] == upstream_total(offline_model)


def test_a_tool_result_round_trip(gateway, offline_model) -> None:
    async def run():
        client = sdk(gateway)
        messages: list = [{"role": "user", "content": "Weather in Paris?"}]
        first = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=[WEATHER]
        )
        call = first.choices[0].message.tool_calls[0]
        messages += [
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'},
        ]
        second = await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=[WEATHER]
        )
        return first, second

    first, second = asyncio.run(run())

    assert first.choices[0].finish_reason == "tool_calls"
    assert first.choices[0].message.content is None
    assert json.loads(first.choices[0].message.tool_calls[0].function.arguments)["city"]
    assert second.choices[0].finish_reason == "stop"
    assert second.choices[0].message.content
    requests = offline_model.ended_requests()
    replayed = requests[1]["body"]["messages"]
    assert replayed[1]["tool_calls"][0]["id"] == first.choices[0].message.tool_calls[0].id
    assert replayed[2]["role"] == "tool"
    records = gateway.wait_for_records(2)
    assert [r["input_tokens"] for r in records] == [r["prompt_tokens"] for r in requests]
    assert gateway.usage()["tokens_used"] == upstream_total(offline_model)


def test_images_and_structured_output_pass_through_and_settle_to_upstream_usage(
    gateway, offline_model
) -> None:
    async def run():
        return await sdk(gateway).chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "What is in this picture?"},
                        {"type": "image_url", "image_url": IMAGE},
                    ],
                }
            ],
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "caption", "schema": {"type": "object"}},
            },
        )

    completion = asyncio.run(run())

    sent = offline_model.ended_requests()[0]
    assert sent["body"]["messages"][0]["content"][1] == {"type": "image_url", "image_url": IMAGE}
    assert sent["body"]["response_format"]["type"] == "json_schema"
    # gpt-4o-mini bills its low-detail image bound (2833) beside the text
    assert sent["prompt_tokens"] > 2833
    assert completion.usage.prompt_tokens == sent["prompt_tokens"]
    assert gateway.usage()["tokens_used"] == upstream_total(offline_model)


def test_an_image_falls_back_only_to_models_that_take_images(gateway, offline_model) -> None:
    offline_model.add_fault(model="gpt-4o", kind="status", status=503)
    message = {"role": "user", "content": [{"type": "image_url", "image_url": IMAGE}]}

    async def run():
        client = sdk(gateway)
        with pytest.raises(openai.BadRequestError) as refused:
            await client.chat.completions.create(model="gpt-3.5-turbo", messages=[message])
        with pytest.raises(openai.APIStatusError) as unavailable:
            await client.chat.completions.create(model="gpt-4o", messages=[message])
        return refused.value, unavailable.value

    refused, unavailable = asyncio.run(run())

    assert refused.body["param"] == "messages"
    assert unavailable.status_code == 503
    # gpt-3.5-turbo (no image input) is not tried after gpt-4o
    assert {r["model"] for r in offline_model.ended_requests()} == {"gpt-4o"}


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [{"type": "function", "function": {}}]}, "tools[0].function.name"),
        ({"tool_choice": "sometimes"}, "tool_choice"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"response_format": {"type": "yaml"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        (
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            "messages[0].content[0].image_url.url",
        ),
        (
            {"messages": [{"role": "user", "content": [{"type": "input_audio"}]}]},
            "messages[0].content[0].type",
        ),
        (
            {"messages": [{"role": "assistant", "content": None, "tool_calls": [{"id": "c"}]}]},
            "messages[0].tool_calls[0].function",
        ),
        ({"n": 2}, "n"),
    ],
)
def test_malformed_tool_requests_get_openai_400s_with_their_param(
    gateway, offline_model, fields, param
) -> None:
    async def run():
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], **fields}
        with pytest.raises(openai.BadRequestError) as raised:
            await sdk(gateway).chat.completions.create(**body)
        return raised.value

    error = asyncio.run(run())
    assert error.body["param"] == param
    assert offline_model.requests() == []
