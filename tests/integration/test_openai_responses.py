"""POST /v1/responses with the real openai SDK pointed at the running gateway."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest

from tests.integration.test_openai_compat import sdk
from tests.integration.test_openai_tools import upstream_total

pytestmark = pytest.mark.integration

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}


def test_a_response_non_stream(gateway, offline_model) -> None:
    async def run():
        return await sdk(gateway).responses.with_raw_response.create(
            model="gpt-4o-mini",
            instructions="Be brief.",
            input="Hello",
            max_output_tokens=5000,
            store=True,
            text={"format": {"type": "json_object"}},
        )

    raw = asyncio.run(run())
    response = raw.parse()

    assert response.object == "response"
    assert response.status == "completed"
    assert response.id == "resp_" + raw.headers["x-request-id"]
    assert response.output_text
    assert response.store is False
    sent = offline_model.ended_requests()[0]
    assert sent["max_tokens"] == 800  # clamped to MAX_OUTPUT_TOKENS
    assert sent["body"]["store"] is False  # the client's store: true is overridden
    assert sent["body"]["response_format"] == {"type": "json_object"}
    assert sent["body"]["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello"},
    ]
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens) == (
        sent["prompt_tokens"],
        sent["completion_tokens"],
    )
    assert usage.total_tokens == gateway.usage()["tokens_used"]
    record = gateway.wait_for_records(1)[0]
    assert record["request_id"] == raw.headers["x-request-id"]


def test_a_response_streamed_carries_openais_events(gateway, offline_model) -> None:
    async def run():
        stream = await sdk(gateway).responses.create(
            model="gpt-4o-mini", input=[{"role": "user", "content": "Tell me"}], stream=True
        )
        return [event async for event in stream]

    events = asyncio.run(run())

    types = [event.type for event in events]
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    completed = events[-1].response
    assert completed.output_text == text
    assert events[-4].text == text
    sent = offline_model.ended_requests()[0]
    assert completed.usage.input_tokens == sent["prompt_tokens"]
    assert completed.usage.output_tokens_details.reasoning_tokens == 0
    assert completed.usage.total_tokens == gateway.usage()["tokens_used"]


def test_function_tools_stream_a_call_and_take_its_output(gateway, offline_model) -> None:
    async def run():
        client = sdk(gateway)
        stream = await client.responses.create(
            model="gpt-4o-mini", input="Weather in Oslo?", tools=[WEATHER], stream=True
        )
        events = [event async for event in stream]
        call = events[-1].response.output[0]
        follow_up = await client.responses.create(
            model="gpt-4o-mini",
            tools=[WEATHER],
            input=[
                {"role": "user", "content": "Weather in Oslo?"},
                {
                    "type": "function_call",
                    "call_id": call.call_id,
                    "name": call.name,
                    "arguments": call.arguments,
                },
                {"type": "function_call_output", "call_id": call.call_id, "output": "7 C"},
            ],
        )
        return events, follow_up

    events, follow_up = asyncio.run(run())

    types = [event.type for event in events]
    assert types[2] == "response.output_item.added"
    assert events[2].item.type == "function_call"
    assert "response.function_call_arguments.delta" in types
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    assert set(json.loads(done.arguments)) == {"city"}
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert deltas == done.arguments
    call = events[-1].response.output[0]
    assert (call.type, call.name, call.arguments) == ("function_call", "get_weather", deltas)
    assert follow_up.output_text
    sent = offline_model.ended_requests()
    assert sent[0]["body"]["tools"] == [
        {
            "type": "function",
            "function": {k: v for k, v in WEATHER.items() if k != "type"},
        }
    ]
    replayed = sent[1]["body"]["messages"]
    assert replayed[1]["tool_calls"][0]["id"] == call.call_id
    assert replayed[2] == {"role": "tool", "tool_call_id": call.call_id, "content": "7 C"}
    assert gateway.usage()["tokens_used"] == upstream_total(offline_model)


@pytest.mark.parametrize(
    ("fields", "param", "code"),
    [
        ({"tools": [{"type": "web_search"}]}, "tools[0].type", "unsupported_tool"),
        ({"tools": [WEATHER, {"type": "file_search"}]}, "tools[1].type", "unsupported_tool"),
        ({"tools": [{"type": "code_interpreter"}]}, "tools[0].type", "unsupported_tool"),
        ({"previous_response_id": "resp_123"}, "previous_response_id", "invalid_request"),
        ({"input": [{"type": "reasoning"}]}, "input[0].type", "invalid_request"),
        ({"max_output_tokens": 0}, "max_output_tokens", "invalid_request"),
    ],
)
def test_refusals_are_openai_shaped(gateway, offline_model, fields, param, code) -> None:
    async def run():
        with pytest.raises(openai.BadRequestError) as raised:
            await sdk(gateway).responses.create(**{"model": "gpt-4o-mini", "input": "x", **fields})
        return raised.value

    error = asyncio.run(run())
    assert (error.body["param"], error.body["code"]) == (param, code)
    assert offline_model.requests() == []


def test_budget_refusal_is_a_rate_limit_error_on_both_apis(gateway_factory, offline_model) -> None:
    with gateway_factory(daily_token_limit=10) as gateway:

        async def run():
            client = sdk(gateway, max_retries=2)
            raised = []
            with pytest.raises(openai.RateLimitError) as chat:
                await client.chat.completions.create(
                    model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
                )
            raised.append(chat.value)
            with pytest.raises(openai.RateLimitError) as responses:
                await client.responses.create(model="gpt-4o-mini", input="Hi")
            raised.append(responses.value)
            return raised

        raised = asyncio.run(run())
        records = gateway.cost_records()

    for error in raised:
        assert error.response.headers["x-should-retry"] == "false"
        assert error.body["code"] == "budget_exceeded"
    assert [r["outcome"] for r in records] == ["budget_refused", "budget_refused"]  # no retries
    assert offline_model.requests() == []


def test_a_streamed_response_is_cancelled_through_chat_cancel(gateway, offline_model) -> None:
    offline_model.set_config(chunk_interval_s=0.05, reply_tokens=200)

    async def run():
        client = sdk(gateway)
        stream = await client.responses.create(model="gpt-4o-mini", input="Go on", stream=True)
        events = []
        async for event in stream:
            events.append(event)
            if event.type == "response.output_text.delta" and len(events) == 6:
                request_id = events[0].response.id.removeprefix("resp_")
                async with httpx.AsyncClient(base_url=gateway.url) as http:
                    cancelled = await http.post(
                        f"/chat/{request_id}/cancel", headers=gateway.headers()
                    )
                assert cancelled.status_code == 202
        return events

    events = asyncio.run(run())

    assert events[-1].type == "response.incomplete"
    assert events[-1].response.status == "cancelled"
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) < 200
    record = gateway.wait_for_records(1)[0]
    assert record["outcome"] == "cancelled"
    assert gateway.usage()["tokens_used"] == record["input_tokens"] + record["output_tokens"]
