"""The offline model server's Responses API, over real HTTP, through the real OpenAI SDK."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.responses import FunctionToolParam, ResponseInputParam

from tollgate.adapters.tokenizer import token_counter

if TYPE_CHECKING:
    from tests.offline_fixture import OfflineModelClient

pytest_plugins = ["tests.offline_fixture"]
pytestmark = [pytest.mark.integration, pytest.mark.anyio]

INSTRUCTIONS = "You are terse."
QUESTION = "Tell me about rivers."
WEATHER_TOOL: FunctionToolParam = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
    "strict": None,
}


async def test_non_stream_text_is_the_chat_reply_as_a_response_object(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    response = await client.responses.create(
        model="gpt-4o-mini", instructions=INSTRUCTIONS, input=QUESTION, store=False
    )
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[
            {"role": "system", "content": INSTRUCTIONS},
            {"role": "user", "content": QUESTION},
        ],
    )

    assert response.id.startswith("resp_")
    assert response.object == "response"
    assert response.status == "completed"
    assert response.incomplete_details is None
    assert response.model == "gpt-4o-mini-2024-07-18"
    (message,) = response.output
    assert message.type == "message"
    assert message.role == "assistant"
    assert message.status == "completed"
    (part,) = message.content
    assert part.type == "output_text"
    assert part.annotations == []
    assert response.output_text == part.text == completion.choices[0].message.content
    usage = response.usage
    assert usage is not None
    assert completion.usage is not None
    assert usage.input_tokens == completion.usage.prompt_tokens
    assert usage.output_tokens == len(token_counter().encoding("gpt-4o-mini").encode(part.text))
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0

    record, _ = offline_model.ended_requests()
    assert (record["api"], record["outcome"], record["id"]) == (
        "responses",
        "completed",
        response.id,
    )
    assert record["body"]["input"] == QUESTION
    assert record["body"]["store"] is False
    assert record["completion_tokens"] == usage.output_tokens


async def test_streamed_events_follow_openais_order_and_assemble_the_text(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    stream = await client.responses.create(model="gpt-4.1-mini", input=QUESTION, stream=True)
    events = [event async for event in stream]
    whole = await client.responses.create(model="gpt-4.1-mini", input=QUESTION)

    kinds = [event.type for event in events]
    deltas = [event for event in events if event.type == "response.output_text.delta"]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * len(deltas),
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event.sequence_number for event in events] == list(range(len(events)))
    created, completed = events[0], events[-1]
    assert created.type == "response.created"
    assert completed.type == "response.completed"
    assert created.response.status == "in_progress"
    assert created.response.usage is None
    assert created.response.id == completed.response.id
    text = "".join(delta.delta for delta in deltas)
    assert text == completed.response.output_text == whole.output_text
    item_ids = {delta.item_id for delta in deltas}
    assert item_ids == {completed.response.output[0].id}
    assert completed.response.usage is not None
    assert whole.usage is not None
    assert completed.response.usage.output_tokens == len(deltas) == whole.usage.output_tokens
    assert offline_model.ended_requests()[0]["chunks_sent"] == len(deltas)


async def test_function_call_round_trip(client: AsyncOpenAI) -> None:
    conversation: ResponseInputParam = [{"role": "user", "content": "Weather in Paris?"}]
    first = await client.responses.create(model="gpt-4o", input=conversation, tools=[WEATHER_TOOL])
    (call,) = first.output
    assert call.type == "function_call"
    assert call.id.startswith("fc_")
    assert call.call_id.startswith("call_")
    assert call.name == "get_weather"
    assert set(json.loads(call.arguments)) == {"city", "days"}
    assert call.status == "completed"

    stream = await client.responses.create(
        model="gpt-4o", input=conversation, tools=[WEATHER_TOOL], stream=True
    )
    events = [event async for event in stream]
    argument_deltas = [
        event.delta for event in events if event.type == "response.function_call_arguments.delta"
    ]
    (arguments_done,) = [
        event for event in events if event.type == "response.function_call_arguments.done"
    ]
    assert "".join(argument_deltas) == arguments_done.arguments == call.arguments
    assert events[2].type == "response.output_item.added"
    assert events[2].item.type == "function_call"
    assert events[2].item.name == "get_weather"

    follow_up: ResponseInputParam = [
        *conversation,
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        },
        {"type": "function_call_output", "call_id": call.call_id, "output": '{"temp_c": 18}'},
    ]
    second = await client.responses.create(model="gpt-4o", input=follow_up, tools=[WEATHER_TOOL])
    assert second.output[0].type == "message"
    assert second.output_text
    assert second.usage is not None
    assert first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


async def test_reasoning_model_reports_hidden_tokens_and_its_cap(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.set_config(reasoning_tokens={"low": 64}, reply_tokens=12)

    response = await client.responses.create(
        model="gpt-5-mini", input=QUESTION, reasoning={"effort": "low"}
    )
    capped = await client.responses.create(
        model="gpt-5-mini", input=QUESTION, reasoning={"effort": "low"}, max_output_tokens=40
    )

    assert [item.type for item in response.output] == ["reasoning", "message"]
    assert response.reasoning is not None
    assert response.reasoning.effort == "low"
    assert response.usage is not None
    assert response.usage.output_tokens_details.reasoning_tokens == 64
    assert response.usage.output_tokens == 64 + 12
    assert capped.status == "incomplete"
    assert capped.incomplete_details is not None
    assert capped.incomplete_details.reason == "max_output_tokens"
    assert [item.type for item in capped.output] == ["reasoning"]
    assert capped.usage is not None
    assert capped.usage.output_tokens == capped.usage.output_tokens_details.reasoning_tokens == 40


async def test_status_faults_raise_the_sdk_errors(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(model="gpt-4o", kind="status", status=429, retry_after=1, times=1)
    offline_model.add_fault(kind="status", status=500, times=1)

    with pytest.raises(openai.RateLimitError):
        await client.responses.create(model="gpt-4o", input=QUESTION)
    with pytest.raises(openai.InternalServerError):
        await client.responses.create(model="gpt-4o", input=QUESTION, stream=True)
    assert (await client.responses.create(model="gpt-4o", input=QUESTION)).output_text

    outcomes = [(r["outcome"], r["status"]) for r in offline_model.ended_requests()]
    assert outcomes == [("fault_status", 429), ("fault_status", 500), ("completed", 200)]


async def test_cut_breaks_the_stream_after_the_given_deltas(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(kind="cut", cut_after_chunks=3, times=1)
    stream = await client.responses.create(model="gpt-4o-mini", input=QUESTION, stream=True)
    deltas: list[str] = []

    async def read_to_the_end() -> None:
        async for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)

    with pytest.raises(openai.APIConnectionError):
        await read_to_the_end()

    assert len(deltas) == 3
    (record,) = offline_model.ended_requests()
    assert (record["api"], record["outcome"], record["chunks_sent"]) == ("responses", "cut", 3)


def responses_body(**overrides: Any) -> dict[str, Any]:
    return {"model": "gpt-4o", "input": QUESTION, **overrides}


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        (responses_body(model="gpt-9"), 404, "model"),
        (responses_body(input=[]), 400, "input"),
        (responses_body(input=[{"type": "item_reference", "id": "x"}]), 400, "input[0]"),
        (responses_body(max_output_tokens=0), 400, "max_output_tokens"),
        (responses_body(reasoning={"effort": "low"}), 400, "reasoning.effort"),
        (responses_body(tools=[{"type": "web_search"}]), 400, "tools[0]"),
        (responses_body(previous_response_id="resp_1"), 400, "previous_response_id"),
    ],
)
async def test_invalid_requests_get_openai_errors(
    http: httpx.AsyncClient,
    offline_model: OfflineModelClient,
    body: dict[str, Any],
    status: int,
    param: str,
) -> None:
    response = await http.post("/v1/responses", json=body)

    assert response.status_code == status
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]
    assert error["type"] == ("not_found_error" if status == 404 else "invalid_request_error")
    (record,) = offline_model.requests()
    assert (record["outcome"], record["status"]) == ("invalid_request", status)


async def test_unknown_model_is_the_sdks_not_found_error(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="gpt-9"):
        await client.responses.create(model="gpt-9", input=QUESTION)
