"""The offline model server, over real HTTP, through the real OpenAI SDK where it fits."""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletionMessageParam

from tollgate.adapters.tokenizer import token_counter

if TYPE_CHECKING:
    from tests.offline_fixture import OfflineModelClient

pytest_plugins = ["tests.offline_fixture"]
pytestmark = [pytest.mark.integration, pytest.mark.anyio]

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Tell me about rivers."},
]


def chat_body(**overrides: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": MESSAGES, **overrides}


async def test_stream_matches_openai_format_and_the_non_stream_reply(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    completion = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
    )

    role_chunk, *content_chunks, finish_chunk, usage_chunk = chunks
    assert {chunk.id for chunk in chunks} == {role_chunk.id}
    assert role_chunk.id.startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == "gpt-4o-mini-2024-07-18"
        assert chunk.system_fingerprint
    assert role_chunk.choices[0].delta.role == "assistant"
    assert role_chunk.choices[0].delta.content == ""
    assert all(chunk.choices[0].finish_reason is None for chunk in content_chunks)
    assert finish_chunk.choices[0].finish_reason == "stop"
    assert finish_chunk.choices[0].delta.content is None
    assert usage_chunk.choices == []

    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in content_chunks)
    assert streamed == completion.choices[0].message.content
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == "gpt-4o-mini-2024-07-18"

    encoding = token_counter().encoding("gpt-4o-mini")
    expected_prompt_tokens = token_counter().count_messages("gpt-4o-mini", MESSAGES)
    for usage in (usage_chunk.usage, completion.usage):
        assert usage is not None
        assert usage.prompt_tokens == expected_prompt_tokens
        assert usage.completion_tokens == len(encoding.encode(streamed)) == len(content_chunks)
        assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
        assert usage.prompt_tokens_details is not None
        assert usage.prompt_tokens_details.cached_tokens == 0
    assert 20 <= len(content_chunks) <= 60

    stream_record, completion_record = offline_model.ended_requests()
    assert stream_record["outcome"] == completion_record["outcome"] == "completed"
    assert stream_record["chunks_sent"] == len(content_chunks)
    assert stream_record["id"] == role_chunk.id
    assert stream_record["messages"] == MESSAGES
    assert (stream_record["stream"], completion_record["stream"]) == (True, False)


@pytest.mark.parametrize("include_usage", [True, False])
async def test_stream_wire_format(http: httpx.AsyncClient, include_usage: bool) -> None:
    body = chat_body(stream=True, stream_options={"include_usage": include_usage})
    response = await http.post("/v1/chat/completions", json=body)

    assert response.headers["content-type"].startswith("text/event-stream")
    assert "\r" not in response.text
    events = response.text.split("\n\n")
    assert events.pop() == ""
    assert events.pop() == "data: [DONE]"
    assert all(event.startswith("data: ") for event in events)
    chunks = [json.loads(event.removeprefix("data: ")) for event in events]
    if include_usage:
        usage_chunk = chunks.pop()
        assert usage_chunk["choices"] == []
        assert usage_chunk["usage"]["completion_tokens"] == len(chunks) - 2
        assert all(chunk["usage"] is None for chunk in chunks)
    else:
        assert all("usage" not in chunk for chunk in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert chunks[-1]["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    for chunk in chunks[1:-1]:
        assert list(chunk["choices"][0]["delta"]) == ["content"]
        assert chunk["choices"][0]["logprobs"] is None


@pytest.mark.parametrize("cap_field", ["max_tokens", "max_completion_tokens"])
async def test_cap_truncates_the_reply_with_finish_reason_length(
    http: httpx.AsyncClient, offline_model: OfflineModelClient, cap_field: str
) -> None:
    full = (await http.post("/v1/chat/completions", json=chat_body())).json()
    capped = (await http.post("/v1/chat/completions", json=chat_body(**{cap_field: 5}))).json()

    assert capped["choices"][0]["finish_reason"] == "length"
    assert capped["usage"]["completion_tokens"] == 5
    assert full["choices"][0]["message"]["content"].startswith(
        capped["choices"][0]["message"]["content"]
    )
    assert offline_model.requests()[1]["max_tokens"] == 5


async def test_models_report_snapshots_and_count_with_their_encoding(
    http: httpx.AsyncClient, offline_model: OfflineModelClient
) -> None:
    offline_model.set_config(reply_tokens=12)
    for requested, reported in [
        ("gpt-3.5-turbo", "gpt-3.5-turbo-0125"),
        ("gpt-4o", "gpt-4o-2024-08-06"),
        ("my-local-model", "my-local-model"),
    ]:
        completion = (
            await http.post("/v1/chat/completions", json=chat_body(model=requested))
        ).json()
        assert completion["model"] == reported
        assert completion["usage"]["prompt_tokens"] == token_counter().count_messages(
            requested, MESSAGES
        )
        content = completion["choices"][0]["message"]["content"]
        assert len(token_counter().encoding(requested).encode(content)) == 12
        assert completion["usage"]["completion_tokens"] == 12


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"{not json", None),
        (b"[]", None),
        (json.dumps({"messages": MESSAGES}).encode(), "model"),
        (json.dumps({"model": "gpt-4o-mini", "messages": []}).encode(), "messages"),
        (json.dumps({"model": "gpt-4o-mini", "messages": ["hi"]}).encode(), "messages.[0]"),
        (json.dumps(chat_body(max_tokens=0)).encode(), "max_tokens"),
        (json.dumps(chat_body(stream="yes")).encode(), "stream"),
    ],
)
async def test_invalid_requests_get_openai_errors(
    http: httpx.AsyncClient, offline_model: OfflineModelClient, body: bytes, param: str | None
) -> None:
    response = await http.post("/v1/chat/completions", content=body)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]
    assert offline_model.requests()[0]["outcome"] == "invalid_request"


async def test_rate_limit_fault_carries_retry_headers_for_its_times(
    http: httpx.AsyncClient, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(kind="status", status=429, retry_after=2, retry_after_ms=1500, times=2)

    statuses = []
    for _ in range(3):
        response = await http.post("/v1/chat/completions", json=chat_body(stream=True))
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert response.headers["retry-after"] == "2"
            assert response.headers["retry-after-ms"] == "1500"
            assert response.json()["error"]["type"] == "rate_limit_error"

    assert statuses == [429, 429, 200]
    outcomes = [(r["outcome"], r["status"]) for r in offline_model.ended_requests()]
    assert outcomes == [("fault_status", 429), ("fault_status", 429), ("completed", 200)]


async def test_status_faults_raise_the_sdk_errors(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(kind="status", status=500, times=1)
    offline_model.add_fault(kind="status", status=400, message="bad prompt", times=1)

    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    with pytest.raises(openai.BadRequestError, match="bad prompt"):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    completion = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert completion.choices[0].message.content


async def test_rules_match_by_model_in_order(
    http: httpx.AsyncClient, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(model="gpt-4o", kind="status", status=503)
    offline_model.add_fault(kind="status", status=500, times=1)
    offline_model.add_fault(kind="status", status=404)

    async def status_for(model: str) -> int:
        response = await http.post("/v1/chat/completions", json=chat_body(model=model))
        return response.status_code

    assert await status_for("gpt-4o") == 503
    assert await status_for("gpt-4o-mini") == 500
    assert await status_for("gpt-4o-mini") == 404
    assert await status_for("gpt-4o") == 503
    applied = [rule["applied"] for rule in (await http.get("/_offline/faults")).json()]
    assert applied == [2, 1, 1]


async def test_slow_fault_delays_first_token_and_chunks(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.set_config(reply_tokens=10)
    offline_model.add_fault(kind="slow", first_token_delay_s=0.3, chunk_interval_s=0.02, times=1)

    started = time.monotonic()
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
    )
    first_token_at = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content and first_token_at is None:
            first_token_at = time.monotonic()
    ended = time.monotonic()

    assert first_token_at is not None
    assert 0.3 <= first_token_at - started < 2.0
    assert ended - first_token_at >= 9 * 0.02 * 0.9


async def test_cut_breaks_the_stream_after_the_given_chunks(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(kind="cut", cut_after_chunks=3, times=1)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    contents: list[str] = []

    async def read_to_the_end() -> None:
        async for chunk in stream:
            contents.extend(
                choice.delta.content for choice in chunk.choices if choice.delta.content
            )

    with pytest.raises(openai.APIConnectionError) as raised:
        await read_to_the_end()

    assert "incomplete chunked read" in str(raised.value.__cause__)
    assert len(contents) == 3
    (record,) = offline_model.ended_requests()
    assert (record["outcome"], record["chunks_sent"]) == ("cut", 3)


async def test_cut_non_stream_response_fails_in_the_sdk(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(kind="cut", times=1)

    with pytest.raises(openai.APIConnectionError):
        await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert offline_model.ended_requests()[0]["outcome"] == "cut"


async def test_client_closing_a_stream_is_recorded_promptly(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.set_config(reply_tokens=40, chunk_interval_s=0.05)
    stream = await client.chat.completions.create(
        model="gpt-4o-mini",
        messages=MESSAGES,
        stream=True,
    )
    received = 0
    async for chunk in stream:
        received += bool(chunk.choices[0].delta.content)
        if received == 3:
            break
    await stream.close()

    (record,) = offline_model.ended_requests(timeout_s=1.0)
    assert record["outcome"] == "client_disconnected"
    assert 3 <= record["chunks_sent"] < 40


async def test_client_giving_up_on_a_non_stream_request_is_recorded(
    http: httpx.AsyncClient, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(first_token_delay_s=5, times=1)

    with pytest.raises(httpx.ReadTimeout):
        await http.post("/v1/chat/completions", json=chat_body(), timeout=0.2)

    (record,) = offline_model.ended_requests(timeout_s=1.0)
    assert record["outcome"] == "client_disconnected"


async def test_cached_tokens_rule_is_reported_in_usage(
    client: AsyncOpenAI, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(model="gpt-4o-mini", cached_tokens=8)

    completion = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    assert completion.usage is not None
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 8


async def test_admin_endpoints_validate_and_round_trip(http: httpx.AsyncClient) -> None:
    assert (await http.get("/health")).status_code == 200
    config = await http.post(
        "/_offline/config", json={"chunk_interval_s": 0.01, "reasoning_tokens": {"low": 5}}
    )
    assert config.json() == {
        "first_token_delay_s": 0.0,
        "chunk_interval_s": 0.01,
        "reply_tokens": None,
        "reasoning_silence_s": 0.0,
        "reasoning_tokens": {"minimal": 16, "low": 5, "medium": 192, "high": 512},
    }
    assert (await http.get("/_offline/config")).json() == config.json()
    assert (await http.post("/_offline/config", json={"reply_tokens": 0})).status_code == 400
    bad_effort = {"reasoning_tokens": {"none": 1}}
    assert (await http.post("/_offline/config", json=bad_effort)).status_code == 400
    assert (await http.post("/_offline/faults", json={"kind": "status"})).status_code == 400
    assert (await http.post("/_offline/faults", json={"kind": "melt"})).status_code == 400

    added = await http.post("/_offline/faults", json=[{"kind": "cut"}, {"kind": "slow"}])
    assert [rule["kind"] for rule in added.json()] == ["cut", "slow"]
    assert (await http.delete("/_offline/faults")).status_code == 204
    assert (await http.get("/_offline/faults")).json() == []


# --- reasoning models -------------------------------------------------------------------

REASONING_MODELS = ["gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini", "gpt-5-mini-2025-08-07"]


async def test_model_list_has_todays_models(http: httpx.AsyncClient) -> None:
    listing = (await http.get("/v1/models")).json()

    assert listing["object"] == "list"
    ids = {model["id"] for model in listing["data"]}
    for name in ("gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"):
        assert name in ids
    assert {"o3", "o4-mini", "gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"} <= ids
    assert "gpt-5-mini-2025-08-07" in ids


@pytest.mark.parametrize("model", REASONING_MODELS)
async def test_reasoning_models_refuse_max_tokens_with_openais_error(
    http: httpx.AsyncClient, offline_model: OfflineModelClient, model: str
) -> None:
    response = await http.post(
        "/v1/chat/completions", json=chat_body(model=model, max_tokens=100, stream=True)
    )

    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "message": "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "type": "invalid_request_error",
            "param": "max_tokens",
            "code": "unsupported_parameter",
        }
    }
    (record,) = offline_model.requests()
    assert record["outcome"] == "invalid_request"
    assert record["body"]["max_tokens"] == 100


async def test_reasoning_models_refuse_sampling_parameters_like_openai(
    client: AsyncOpenAI,
) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(model="gpt-5-mini", messages=MESSAGES, temperature=0.7)
    assert raised.value.body == {
        "message": "Unsupported value: 'temperature' does not support 0.7 with this model. "
        "Only the default (1) value is supported.",
        "type": "invalid_request_error",
        "param": "temperature",
        "code": "unsupported_value",
    }
    for name, value in [("top_p", 0.9), ("presence_penalty", 0.5), ("logprobs", True)]:
        with pytest.raises(openai.BadRequestError) as raised:
            await client.chat.completions.create(
                model="o4-mini", messages=MESSAGES, extra_body={name: value}
            )
        assert raised.value.code == "unsupported_parameter"
        assert raised.value.param == name

    accepted = await client.chat.completions.create(
        model="gpt-5-mini", messages=MESSAGES, temperature=1, max_completion_tokens=400
    )
    assert accepted.choices[0].message.content


async def test_reasoning_effort_is_for_reasoning_models_only(client: AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model="gpt-4.1-mini", messages=MESSAGES, reasoning_effort="low"
        )
    assert raised.value.code == "unsupported_parameter"
    assert raised.value.param == "reasoning_effort"

    with pytest.raises(openai.BadRequestError) as raised:
        await client.chat.completions.create(
            model="gpt-5", messages=MESSAGES, extra_body={"reasoning_effort": "extreme"}
        )
    assert raised.value.code == "unsupported_value"
    assert "'extreme'" in raised.value.message


@pytest.mark.parametrize("cap_field", ["max_tokens", "max_completion_tokens"])
async def test_non_reasoning_models_accept_both_cap_fields(
    http: httpx.AsyncClient, cap_field: str
) -> None:
    response = await http.post(
        "/v1/chat/completions", json=chat_body(model="gpt-4.1-mini", **{cap_field: 4})
    )

    assert response.status_code == 200
    completion = response.json()
    assert completion["model"] == "gpt-4.1-mini-2025-04-14"
    assert completion["usage"]["completion_tokens"] == 4
    assert completion["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0


@pytest.mark.parametrize(("effort", "reasoning_tokens"), [(None, 30), ("minimal", 0), ("high", 70)])
async def test_reasoning_tokens_are_spent_per_effort_and_reported_in_usage(
    client: AsyncOpenAI,
    offline_model: OfflineModelClient,
    effort: str | None,
    reasoning_tokens: int,
) -> None:
    offline_model.set_config(
        reply_tokens=12, reasoning_tokens={"minimal": 0, "medium": 30, "high": 70}
    )
    extra = {"reasoning_effort": effort} if effort else {}
    stream = await client.chat.completions.create(
        model="gpt-5-mini",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        max_completion_tokens=500,
        extra_body=extra,
    )
    chunks = [chunk async for chunk in stream]

    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(token_counter().encoding("gpt-5-mini").encode(text)) == 12
    usage = chunks[-1].usage
    assert usage is not None
    assert usage.completion_tokens == reasoning_tokens + 12
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == reasoning_tokens
    assert usage.prompt_tokens == token_counter().count_messages("gpt-5-mini", MESSAGES)
    assert chunks[0].model == "gpt-5-mini-2025-08-07"
    (record,) = offline_model.ended_requests()
    assert (record["completion_tokens"], record["reasoning_tokens"]) == (
        reasoning_tokens + 12,
        reasoning_tokens,
    )


@pytest.mark.parametrize("stream", [True, False])
async def test_cap_reached_while_reasoning_shows_no_text(
    http: httpx.AsyncClient, offline_model: OfflineModelClient, stream: bool
) -> None:
    offline_model.set_config(reasoning_tokens={"low": 64})
    body = chat_body(
        model="o3",
        max_completion_tokens=40,
        reasoning_effort="low",
        stream=stream,
        stream_options={"include_usage": True} if stream else None,
    )
    response = await http.post("/v1/chat/completions", json=body)

    if stream:
        events = response.text.split("\n\n")[:-2]
        chunks = [json.loads(event.removeprefix("data: ")) for event in events]
        role, finish, usage_chunk = chunks
        assert role["choices"][0]["delta"]["role"] == "assistant"
        assert finish["choices"][0]["finish_reason"] == "length"
        usage = usage_chunk["usage"]
    else:
        completion = response.json()
        assert completion["choices"][0]["message"]["content"] == ""
        assert completion["choices"][0]["finish_reason"] == "length"
        usage = completion["usage"]
    assert usage["completion_tokens"] == 40
    assert usage["completion_tokens_details"]["reasoning_tokens"] == 40


async def test_cap_reached_after_reasoning_shortens_the_text(
    http: httpx.AsyncClient, offline_model: OfflineModelClient
) -> None:
    offline_model.set_config(reasoning_tokens={"low": 64}, reply_tokens=30)
    body = chat_body(model="gpt-5-nano", max_completion_tokens=70, reasoning_effort="low")
    completion = (await http.post("/v1/chat/completions", json=body)).json()

    assert completion["choices"][0]["finish_reason"] == "length"
    assert (
        len(
            token_counter()
            .encoding("gpt-5-nano")
            .encode(completion["choices"][0]["message"]["content"])
        )
        == 6
    )
    assert completion["usage"]["completion_tokens"] == 70
    assert completion["usage"]["completion_tokens_details"]["reasoning_tokens"] == 64


async def test_reasoning_model_answers_at_once_then_thinks_in_silence(
    offline_model: OfflineModelClient,
) -> None:
    # Given a model that thinks far longer than this client waits for any byte
    offline_model.set_config(reasoning_silence_s=60)
    body = chat_body(model="gpt-5", stream=True, max_completion_tokens=500)
    async with (
        httpx.AsyncClient(base_url=offline_model.url, timeout=5.0) as http,
        http.stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        # When the response starts, Then the status and the role chunk are already in
        assert response.status_code == 200
        first_event = await anext(response.aiter_text())
        assert '"role":"assistant","content":""' in first_event
        assert offline_model.requests()[0]["chunks_sent"] == 0

    (record,) = offline_model.ended_requests()
    assert (record["outcome"], record["chunks_sent"]) == ("client_disconnected", 0)


async def test_hang_fault_never_sends_the_status_line_for_its_model(
    http: httpx.AsyncClient, offline_model: OfflineModelClient
) -> None:
    offline_model.add_fault(model="gpt-5-mini", kind="hang")

    with pytest.raises(httpx.ReadTimeout):
        await http.post(
            "/v1/chat/completions",
            json=chat_body(model="gpt-5-mini", stream=True),
            timeout=httpx.Timeout(5.0, read=0.3),
        )
    other = await http.post("/v1/chat/completions", json=chat_body(model="gpt-4.1-mini"))

    assert other.status_code == 200
    hung, answered = offline_model.ended_requests()
    assert (hung["model"], hung["outcome"], hung["status"]) == ("gpt-5-mini", "hung", None)
    assert answered["outcome"] == "completed"
