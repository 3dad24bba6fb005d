"""POST /v1/chat/completions: OpenAI's wire format over the same budgets, caps and records.

Stateless: the caller owns the whole prompt (system messages included). Requests are
validated here (tool definitions, tool calls and results, content parts, response formats:
enough to answer a malformed one with OpenAI's 400 and its `param`), and replies are
encoded as OpenAI's chunks or completion object, tool calls included.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from tollgate.errors import GatewayError, InvalidParameter
from tollgate.ports import ReplyStream, ToolCallDelta
from tollgate.stream import Outcome
from tollgate.wire import sse
from tollgate.wire.body import json_object

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})
IMAGE_DETAILS = frozenset({"auto", "low", "high"})
TOOL_CHOICES = frozenset({"none", "auto", "required"})
RESPONSE_FORMATS = frozenset({"text", "json_object", "json_schema"})
# Sampling and format parameters forwarded to upstream as they are.
PASS_THROUGH = frozenset(
    {
        "temperature",
        "top_p",
        "stop",
        "presence_penalty",
        "frequency_penalty",
        "seed",
        "response_format",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "logit_bias",
        "reasoning_effort",
        "verbosity",
        "service_tier",
        "metadata",
        "prompt_cache_key",
    }
)
# The tiers the price table prices: "flex", "priority" and "scale" bill at other rates.
PRICED_SERVICE_TIERS = frozenset({"auto", "default"})
# Set by the gateway whatever the client sends (see billing_parameters); `user` is dropped.
GATEWAY_OWNED = frozenset({"store", "user", "safety_identifier"})
# Parameters whose replies the gateway cannot encode or bound: refused, not dropped.
UNSUPPORTED = frozenset(
    {
        "functions",
        "function_call",
        "logprobs",
        "top_logprobs",
        "audio",
        "modalities",
        "prediction",
        "web_search_options",
    }
)
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
}


@dataclass(frozen=True, slots=True)
class CompletionRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    # The body as sent: what the response cache keys a request by (tollgate.cache)
    body: dict[str, Any] = field(default_factory=dict)


def openai_error_body(error: GatewayError) -> dict[str, Any]:
    error_type = ERROR_TYPES.get(error.status, "api_error")
    return {
        "error": {
            "message": error.message,
            "type": error_type,
            "code": error.code,
            "param": getattr(error, "param", None),
            **error.details(),
        }
    }


def failure_body(code: str, message: str) -> dict[str, Any]:
    """A stream that failed after it started (timeout, upstream cut), in OpenAI's shape."""
    return {"error": {"message": message, "type": "api_error", "code": code, "param": None}}


def failure_status(code: str) -> int:
    return 504 if code == "timeout" else 502


def one_of(value: Any, allowed: frozenset[str]) -> bool:
    """`value in allowed`, for any JSON value (a list or an object is unhashable)."""
    return isinstance(value, str) and value in allowed


def _text_parts(param: str, parts: list[Any], allowed: frozenset[str]) -> list[dict[str, Any]]:
    clean = []
    for number, part in enumerate(parts):
        where = f"{param}[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if not isinstance(kind, str) or kind not in allowed:
            raise InvalidParameter(
                f"{where}.type", f"content part type must be one of {', '.join(sorted(allowed))}"
            )
        assert isinstance(part, dict)
        if kind == "image_url":
            clean.append({"type": "image_url", "image_url": _image(f"{where}.image_url", part)})
            continue
        text = part.get(kind)
        if not isinstance(text, str):
            raise InvalidParameter(f"{where}.{kind}", f"a {kind} part needs `{kind}`")
        clean.append({"type": kind, kind: text})
    return clean


def _image(param: str, part: dict[str, Any]) -> dict[str, Any]:
    image = part.get("image_url")
    if not isinstance(image, dict) or not isinstance(image.get("url"), str) or not image["url"]:
        raise InvalidParameter(f"{param}.url", "an image part needs `image_url.url`")
    detail = image.get("detail", "auto")
    if not one_of(detail, IMAGE_DETAILS):
        raise InvalidParameter(f"{param}.detail", "detail must be one of auto, high, low")
    return {"url": image["url"], "detail": detail}


def _content(index: int, role: str, message: dict[str, Any]) -> str | list[dict[str, Any]] | None:
    param = f"messages[{index}].content"
    content = message.get("content")
    if isinstance(content, str):
        return content
    if content is None and role == "assistant" and message.get("tool_calls"):
        return None
    if isinstance(content, list) and content:
        allowed = {
            "user": frozenset({"text", "image_url"}),
            "assistant": frozenset({"text", "refusal"}),
        }
        return _text_parts(param, content, allowed.get(role, frozenset({"text"})))
    raise InvalidParameter(param, "content must be a string or a non-empty array of parts")


def _tool_calls(index: int, raw: Any) -> list[dict[str, Any]]:
    param = f"messages[{index}].tool_calls"
    if not isinstance(raw, list) or not raw:
        raise InvalidParameter(param, "`tool_calls` must be a non-empty array")
    calls = []
    for number, call in enumerate(raw):
        where = f"{param}[{number}]"
        if not isinstance(call, dict) or not isinstance(call.get("id"), str):
            raise InvalidParameter(f"{where}.id", "each tool call needs an `id`")
        if call.get("type", "function") != "function":
            raise InvalidParameter(f"{where}.type", "only function tool calls are supported")
        function = call.get("function")
        if (
            not isinstance(function, dict)
            or not isinstance(function.get("name"), str)
            or not isinstance(function.get("arguments"), str)
        ):
            raise InvalidParameter(
                f"{where}.function", "a tool call needs `function.name` and `function.arguments`"
            )
        calls.append(
            {
                "id": call["id"],
                "type": "function",
                "function": {"name": function["name"], "arguments": function["arguments"]},
            }
        )
    return calls


def _messages(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        raise InvalidParameter("messages", "`messages` must be a non-empty array")
    messages = []
    for index, message in enumerate(raw):
        if not isinstance(message, dict):
            raise InvalidParameter(f"messages[{index}]", "each message must be an object")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidParameter(
                f"messages[{index}].role", f"role must be one of {', '.join(sorted(ROLES))}"
            )
        clean: dict[str, Any] = {"role": role, "content": _content(index, role, message)}
        name = message.get("name")
        if name is not None:
            if not isinstance(name, str) or not name:
                raise InvalidParameter(f"messages[{index}].name", "name must be a string")
            clean["name"] = name
        if role == "assistant" and message.get("tool_calls") is not None:
            clean["tool_calls"] = _tool_calls(index, message["tool_calls"])
        if role == "tool":
            call_id = message.get("tool_call_id")
            if not isinstance(call_id, str) or not call_id:
                raise InvalidParameter(
                    f"messages[{index}].tool_call_id", "a tool message needs `tool_call_id`"
                )
            clean["tool_call_id"] = call_id
        messages.append(clean)
    return messages


def _tools(raw: Any) -> None:
    if not isinstance(raw, list) or not raw:
        raise InvalidParameter("tools", "`tools` must be a non-empty array")
    for index, tool in enumerate(raw):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidParameter(f"tools[{index}].type", "only function tools are supported")
        function = tool.get("function")
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise InvalidParameter(f"tools[{index}].function.name", "a tool needs a name")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidParameter(
                f"tools[{index}].function.parameters", "`parameters` must be a JSON schema object"
            )


def _tool_choice(raw: Any) -> None:
    if isinstance(raw, str) and raw in TOOL_CHOICES:
        return
    if (
        isinstance(raw, dict)
        and raw.get("type") == "function"
        and isinstance(raw.get("function"), dict)
        and isinstance(raw["function"].get("name"), str)
    ):
        return
    raise InvalidParameter(
        "tool_choice", "`tool_choice` must be none, auto, required or a named function"
    )


def _response_format(raw: Any) -> None:
    kind = raw.get("type") if isinstance(raw, dict) else None
    if not one_of(kind, RESPONSE_FORMATS):
        raise InvalidParameter(
            "response_format.type", "response_format type must be text, json_object or json_schema"
        )
    if kind == "json_schema":
        schema = raw.get("json_schema")
        if not isinstance(schema, dict) or not isinstance(schema.get("name"), str):
            raise InvalidParameter("response_format.json_schema", "json_schema needs a `name`")
        if schema.get("schema") is not None and not isinstance(schema["schema"], dict):
            raise InvalidParameter(
                "response_format.json_schema.schema", "`schema` must be a JSON schema object"
            )


def check_tool_parameters(payload: dict[str, Any]) -> None:
    if payload.get("tools") is not None:
        _tools(payload["tools"])
    if payload.get("tool_choice") is not None:
        _tool_choice(payload["tool_choice"])
    parallel = payload.get("parallel_tool_calls")
    if parallel is not None and not isinstance(parallel, bool):
        raise InvalidParameter("parallel_tool_calls", "`parallel_tool_calls` must be a boolean")
    if payload.get("response_format") is not None:
        _response_format(payload["response_format"])


def _positive_int(payload: dict[str, Any], name: str) -> int | None:
    value = payload.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidParameter(name, f"`{name}` must be a positive integer")
    return value


def parse_completion_request(body: bytes) -> CompletionRequest:
    payload = json_object(body)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParameter("model", "`model` must be a string")
    service_tier = payload.get("service_tier")
    if service_tier is not None and (
        not isinstance(service_tier, str) or service_tier not in PRICED_SERVICE_TIERS
    ):
        raise InvalidParameter(
            "service_tier", "only service_tier 'auto' or 'default' is supported by Tollgate"
        )
    unsupported = sorted(UNSUPPORTED.intersection(payload))
    if unsupported:
        raise InvalidParameter(unsupported[0], f"`{unsupported[0]}` is not supported by Tollgate")
    check_tool_parameters(payload)
    n = payload.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise InvalidParameter("n", "only n=1 is supported")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidParameter("stream", "`stream` must be a boolean")
    options = payload.get("stream_options")
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise InvalidParameter("stream_options", "`stream_options` must be an object")
    include_usage = options.get("include_usage", False)
    if not isinstance(include_usage, bool):
        raise InvalidParameter("stream_options.include_usage", "`include_usage` must be a boolean")
    caps = [
        cap
        for cap in (
            _positive_int(payload, "max_tokens"),
            _positive_int(payload, "max_completion_tokens"),
        )
        if cap is not None
    ]
    return CompletionRequest(
        model=model,
        messages=_messages(payload.get("messages")),
        stream=stream,
        include_usage=include_usage,
        max_tokens=min(caps) if caps else None,
        extra={
            key: value
            for key, value in payload.items()
            if key in PASS_THROUGH and value is not None
        },
        body=payload,
    )


def billing_parameters(extra: dict[str, Any], safety_identifier: str | None) -> dict[str, Any]:
    """What upstream receives beside the client's parameters: never kept, and attributed.

    `store` is always false (prompts are never kept in the operator's OpenAI account);
    `safety_identifier` is the gateway's keyed hash of the authenticated user (OpenAI's
    abuse reports then name a user the operator can find), never a client's own string.
    """
    parameters = {key: value for key, value in extra.items() if key not in GATEWAY_OWNED}
    parameters["store"] = False
    if safety_identifier is not None:
        parameters["safety_identifier"] = safety_identifier
    return parameters


def _frame(body: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def _usage(outcome: Outcome) -> dict[str, Any]:
    return {
        "prompt_tokens": outcome.input_tokens,
        "completion_tokens": outcome.output_tokens,
        "total_tokens": outcome.input_tokens + outcome.output_tokens,
        "prompt_tokens_details": {"cached_tokens": outcome.cached_input_tokens},
        "completion_tokens_details": {"reasoning_tokens": outcome.reasoning_tokens},
    }


def _finish_reason(outcome: Outcome) -> str:
    return outcome.finish_reason or "stop"


class CompletionEncoder:
    """Writes one stream's chunks in OpenAI's exact format."""

    def __init__(self, stream: ReplyStream, include_usage: bool) -> None:
        self._stream = stream
        self._include_usage = include_usage
        self.id = f"chatcmpl-{stream.request_id}"
        self.created = int(time.time())
        # Content chunks are the hot path: only the text is encoded per chunk.
        self._content_prefix = (
            f'data: {{"id":{json.dumps(self.id)},"object":"chat.completion.chunk",'
            f'"created":{self.created},"model":{json.dumps(stream.model)},'
            '"choices":[{"index":0,"delta":{"content":'
        ).encode()
        usage = ',"usage":null' if include_usage else ""
        self._content_suffix = f'}},"logprobs":null,"finish_reason":null}}]{usage}}}\n\n'.encode()

    def _chunk(self, choices: list[dict[str, Any]], **fields: Any) -> bytes:
        body: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self._stream.model,
            "choices": choices,
        }
        if self._include_usage:
            body["usage"] = None
        body.update(fields)
        return _frame(body)

    async def frames(self) -> AsyncGenerator[bytes, None]:
        stream = self._stream
        yield self._chunk(
            [
                {
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": None,
                    "finish_reason": None,
                }
            ]
        )
        async for delta in stream.events():
            if isinstance(delta, str):
                yield self._content_prefix + sse.json_string(delta).encode() + self._content_suffix
            else:
                yield self._chunk(
                    [
                        {
                            "index": 0,
                            "delta": {"tool_calls": [tool_call_delta(delta)]},
                            "logprobs": None,
                            "finish_reason": None,
                        }
                    ]
                )
        outcome = await stream.finish_now()
        failure = outcome.failure()
        if failure is None:
            yield self._chunk(
                [
                    {
                        "index": 0,
                        "delta": {},
                        "logprobs": None,
                        "finish_reason": _finish_reason(outcome),
                    }
                ]
            )
        if self._include_usage:
            yield self._chunk([], usage=_usage(outcome))
        if failure is not None:
            yield _frame(failure_body(*failure))
        yield sse.DONE


def tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    """OpenAI's `tool_calls[]` delta entry: only the fields upstream sent in this fragment."""
    entry: dict[str, Any] = {"index": delta.index}
    if delta.id is not None:
        entry["id"] = delta.id
    if delta.type is not None:
        entry["type"] = delta.type
    function = {
        key: value
        for key, value in (("name", delta.name), ("arguments", delta.arguments))
        if value is not None
    }
    if function:
        entry["function"] = function
    return entry


async def collect(stream: ReplyStream) -> Outcome:
    """A non-stream reply: upstream still streams, so cancel and timeouts work the same."""
    async for _ in stream.events():
        pass
    return await stream.finish_now()


def _message(outcome: Outcome) -> dict[str, Any]:
    message: dict[str, Any] = {
        "role": "assistant",
        "content": outcome.text if outcome.text or not outcome.tool_calls else None,
        "refusal": None,
    }
    if outcome.tool_calls:
        message["tool_calls"] = outcome.tool_calls
    return message


def completion_body(stream: ReplyStream, outcome: Outcome) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{stream.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": stream.model,
        "choices": [
            {
                "index": 0,
                "message": _message(outcome),
                "logprobs": None,
                "finish_reason": _finish_reason(outcome),
            }
        ],
        "usage": _usage(outcome),
    }
