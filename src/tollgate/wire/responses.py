"""POST /v1/responses: OpenAI's Responses API, translated to Chat Completions upstream.

The request becomes a /v1/chat/completions call of ChatService.start_completion (the same
budgets, caps, fallback, cancel, cost records and rollups); the reply is encoded as the
Responses API's events or response object. Stateless: `store` is always sent as false
(a client's `store: true` is overridden, not refused: the gateway keeps nothing either
way, and the response object says `store: false`), and `previous_response_id` is refused,
because the gateway cannot bound the cost of a context it does not hold. Function tools
only: a built-in tool bills per call at prices the model table does not have.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from tollgate.errors import InvalidParameter
from tollgate.ports import ReplyStream, ToolCallDelta
from tollgate.stream import Outcome
from tollgate.wire.body import json_object
from tollgate.wire.openai import IMAGE_DETAILS, check_tool_parameters, one_of

INPUT_ROLES = frozenset({"user", "system", "developer", "assistant"})
# Parameters forwarded to the chat completion as they are.
# Billing fields (`store`, `safety_identifier`) are the gateway's: see billing_parameters.
PASS_THROUGH = frozenset({"temperature", "top_p", "parallel_tool_calls", "prompt_cache_key"})
# Stateful features: the gateway holds no context it could bound.
STATEFUL = ("previous_response_id", "conversation", "prompt")


class UnsupportedTool(InvalidParameter):
    """A built-in tool (web search, file search, ...): its per-call fee is not in the table."""

    def __init__(self, param: str, kind: str) -> None:
        super().__init__(
            param,
            f"tool type {kind!r} is not supported: Tollgate forwards function tools only, "
            "because a built-in tool's per-call fee is not in its price table",
        )
        self.code = "unsupported_tool"


@dataclass(frozen=True, slots=True)
class ResponsesRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    max_tokens: int | None
    extra: dict[str, Any]
    echo: dict[str, Any] = field(default_factory=dict)  # request fields the response repeats


def _text(param: str, value: Any) -> str:
    if not isinstance(value, str):
        raise InvalidParameter(param, "expected a string")
    return value


def _content(param: str, role: str, content: Any) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list) or not content:
        raise InvalidParameter(param, "content must be a string or a non-empty array of parts")
    parts: list[dict[str, Any]] = []
    for number, part in enumerate(content):
        where = f"{param}[{number}]"
        kind = part.get("type") if isinstance(part, dict) else None
        assert kind is None or isinstance(part, dict)
        if kind in ("input_text", "output_text"):
            parts.append({"type": "text", "text": _text(f"{where}.text", part.get("text"))})
        elif kind == "refusal" and role == "assistant":
            parts.append(
                {"type": "refusal", "refusal": _text(f"{where}.refusal", part.get("refusal"))}
            )
        elif kind == "input_image" and role == "user":
            url = part.get("image_url")
            if not isinstance(url, str) or not url:
                raise InvalidParameter(f"{where}.image_url", "an input_image needs `image_url`")
            detail = part.get("detail", "auto")
            if not one_of(detail, IMAGE_DETAILS):
                raise InvalidParameter(f"{where}.detail", "detail must be one of auto, high, low")
            parts.append({"type": "image_url", "image_url": {"url": url, "detail": detail}})
        else:
            raise InvalidParameter(f"{where}.type", f"content part type {kind!r} is not supported")
    return parts


def _input(raw: Any, instructions: Any) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if instructions is not None:
        messages.append({"role": "system", "content": _text("instructions", instructions)})
    if isinstance(raw, str):
        return [*messages, {"role": "user", "content": raw}]
    if not isinstance(raw, list) or not raw:
        raise InvalidParameter("input", "`input` must be a string or a non-empty array of items")
    for index, item in enumerate(raw):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise InvalidParameter(param, "each input item must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if not isinstance(role, str) or role not in INPUT_ROLES:
                raise InvalidParameter(
                    f"{param}.role", "role must be user, system, developer or assistant"
                )
            messages.append(
                {"role": role, "content": _content(f"{param}.content", role, item.get("content"))}
            )
        elif kind == "function_call":
            call = {
                "id": _text(f"{param}.call_id", item.get("call_id")),
                "type": "function",
                "function": {
                    "name": _text(f"{param}.name", item.get("name")),
                    "arguments": _text(f"{param}.arguments", item.get("arguments")),
                },
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)  # parallel calls share one assistant message
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": _text(f"{param}.call_id", item.get("call_id")),
                    "content": output if isinstance(output, str) else json.dumps(output),
                }
            )
        else:
            raise InvalidParameter(f"{param}.type", f"input item type {kind!r} is not supported")
    return messages


def _tools(raw: Any) -> list[dict[str, Any]]:
    if not isinstance(raw, list):
        raise InvalidParameter("tools", "`tools` must be an array")
    tools = []
    for index, tool in enumerate(raw):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if kind != "function":
            raise UnsupportedTool(f"tools[{index}].type", str(kind))
        assert isinstance(tool, dict)
        function = {
            key: tool[key] for key in ("name", "description", "parameters", "strict") if key in tool
        }
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any) -> Any:
    if isinstance(raw, dict) and raw.get("type") == "function":
        return {"type": "function", "function": {"name": raw.get("name")}}
    if isinstance(raw, dict):
        raise UnsupportedTool("tool_choice.type", str(raw.get("type")))
    return raw


def _response_format(text: Any) -> dict[str, Any] | None:
    if not isinstance(text, dict):
        raise InvalidParameter("text", "`text` must be an object")
    fmt = text.get("format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise InvalidParameter("text.format", "`text.format` must be an object")
    if fmt.get("type") == "json_schema":
        schema = {
            key: fmt[key] for key in ("name", "schema", "strict", "description") if key in fmt
        }
        return {"type": "json_schema", "json_schema": schema}
    return {"type": fmt.get("type")}


def parse_responses_request(body: bytes) -> ResponsesRequest:
    payload = json_object(body)
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidParameter("model", "`model` must be a string")
    for name in STATEFUL:
        if payload.get(name) is not None:
            raise InvalidParameter(
                name, f"`{name}` is not supported: Tollgate is stateless, send the whole input"
            )
    if payload.get("background"):
        raise InvalidParameter("background", "background responses are not supported")
    stream = payload.get("stream", False)
    if not isinstance(stream, bool):
        raise InvalidParameter("stream", "`stream` must be a boolean")
    cap = payload.get("max_output_tokens")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise InvalidParameter(
            "max_output_tokens", "`max_output_tokens` must be a positive integer"
        )
    extra: dict[str, Any] = {
        key: value for key, value in payload.items() if key in PASS_THROUGH and value is not None
    }
    if payload.get("tools"):
        extra["tools"] = _tools(payload["tools"])
    if payload.get("tool_choice") is not None:
        extra["tool_choice"] = _tool_choice(payload["tool_choice"])
    reasoning = payload.get("reasoning")
    if reasoning is not None:
        if not isinstance(reasoning, dict):
            raise InvalidParameter("reasoning", "`reasoning` must be an object")
        if reasoning.get("effort") is not None:
            extra["reasoning_effort"] = reasoning["effort"]
    text = payload.get("text")
    if text is not None:
        response_format = _response_format(text)
        if response_format is not None:
            extra["response_format"] = response_format
        if isinstance(text, dict) and text.get("verbosity") is not None:
            extra["verbosity"] = text["verbosity"]
    try:
        check_tool_parameters(extra)
    except InvalidParameter as error:  # name the Responses API's field, not the chat one
        error.param = {"response_format": "text.format"}.get(error.param.split(".")[0], error.param)
        raise
    echo = {
        "instructions": payload.get("instructions"),
        "tools": payload.get("tools") or [],
        "tool_choice": payload.get("tool_choice", "auto"),
        "parallel_tool_calls": payload.get("parallel_tool_calls", True),
        "temperature": payload.get("temperature"),
        "top_p": payload.get("top_p"),
        "reasoning": {"effort": (reasoning or {}).get("effort"), "summary": None},
        "text": {"format": (text or {}).get("format") or {"type": "text"}},
        "metadata": payload.get("metadata") or {},
        "max_output_tokens": cap,
    }
    return ResponsesRequest(
        model=model,
        messages=_input(payload.get("input"), payload.get("instructions")),
        stream=stream,
        max_tokens=cap,
        extra=extra,
        echo=echo,
    )


# ---------------------------------------------------------------- replies


def _usage(outcome: Outcome) -> dict[str, Any]:
    return {
        "input_tokens": outcome.input_tokens,
        "input_tokens_details": {"cached_tokens": outcome.cached_input_tokens},
        "output_tokens": outcome.output_tokens,
        "output_tokens_details": {"reasoning_tokens": outcome.reasoning_tokens},
        "total_tokens": outcome.input_tokens + outcome.output_tokens,
    }


def _status(outcome: Outcome | None) -> tuple[str, dict[str, Any] | None]:
    """The response's status and its incomplete_details."""
    if outcome is None:
        return "in_progress", None
    if outcome.failure() is not None:
        return "failed", None
    if outcome.outcome == "cancelled":
        return "cancelled", None
    if outcome.outcome != "completed":
        return "incomplete", {"reason": outcome.outcome}
    if outcome.finish_reason == "length":
        return "incomplete", {"reason": "max_output_tokens"}
    if outcome.finish_reason == "content_filter":
        return "incomplete", {"reason": "content_filter"}
    return "completed", None


class ResponseBuilder:
    """The response object and its output items for one stream, as they grow."""

    def __init__(self, stream: ReplyStream, echo: dict[str, Any]) -> None:
        self._stream = stream
        self._echo = echo
        self.id = f"resp_{stream.request_id}"
        self.message_id = f"msg_{stream.request_id}"
        self.created_at = int(time.time())

    def message_item(self, text: str, status: str) -> dict[str, Any]:
        content = [] if status == "in_progress" else [self.text_part(text)]
        return {
            "id": self.message_id,
            "type": "message",
            "status": status,
            "role": "assistant",
            "content": content,
        }

    @staticmethod
    def text_part(text: str) -> dict[str, Any]:
        return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}

    def call_item_id(self, index: int) -> str:
        return f"fc_{self._stream.request_id}_{index}"

    def call_item(self, index: int, call: dict[str, Any], status: str) -> dict[str, Any]:
        function = call["function"]
        return {
            "id": self.call_item_id(index),
            "type": "function_call",
            "status": status,
            "call_id": call["id"],
            "name": function["name"],
            "arguments": function["arguments"] if status != "in_progress" else "",
        }

    def output(self, outcome: Outcome) -> list[dict[str, Any]]:
        items = []
        if outcome.text or not outcome.tool_calls:
            items.append(self.message_item(outcome.text, "completed"))
        items += [
            self.call_item(index, call, "completed")
            for index, call in enumerate(outcome.tool_calls)
        ]
        return items

    def body(self, outcome: Outcome | None, output: list[dict[str, Any]]) -> dict[str, Any]:
        status, incomplete = _status(outcome)
        failure = outcome.failure() if outcome is not None else None
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "error": None if failure is None else {"code": "server_error", "message": failure[1]},
            "incomplete_details": incomplete,
            "model": self._stream.model,
            "output": output,
            "previous_response_id": None,
            "store": False,
            "truncation": "disabled",
            "usage": None if outcome is None else _usage(outcome),
            **self._echo,
        }


def response_body(stream: ReplyStream, outcome: Outcome, echo: dict[str, Any]) -> dict[str, Any]:
    builder = ResponseBuilder(stream, echo)
    return builder.body(outcome, builder.output(outcome))


class ResponseEncoder:
    """Writes one stream as the Responses API's events, each with `type` and `sequence_number`."""

    def __init__(self, stream: ReplyStream, echo: dict[str, Any]) -> None:
        self._stream = stream
        self._builder = ResponseBuilder(stream, echo)
        self._sequence = 0
        self._output: list[dict[str, Any]] = []  # finished items, in output order
        self._text: list[str] | None = None  # the open message item's text
        self._text_index = 0
        self._calls: dict[int, tuple[int, dict[str, Any]]] = {}  # upstream index -> open call

    def _event(self, kind: str, **fields: Any) -> bytes:
        body = {"type": kind, "sequence_number": self._sequence, **fields}
        self._sequence += 1
        data = json.dumps(body, separators=(",", ":"))
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def _next_index(self) -> int:
        return len(self._output) + (self._text is not None) + len(self._calls)

    def _open_text(self) -> list[bytes]:
        self._text_index = self._next_index()
        self._text = []
        builder = self._builder
        return [
            self._event(
                "response.output_item.added",
                output_index=self._text_index,
                item=builder.message_item("", "in_progress"),
            ),
            self._event(
                "response.content_part.added",
                item_id=builder.message_id,
                output_index=self._text_index,
                content_index=0,
                part=builder.text_part(""),
            ),
        ]

    def _close_text(self) -> list[bytes]:
        if self._text is None:
            return []
        text = "".join(self._text)
        self._text = None
        builder = self._builder
        where = {"item_id": builder.message_id, "output_index": self._text_index}
        item = builder.message_item(text, "completed")
        self._output.append(item)
        return [
            self._event(
                "response.output_text.done", **where, content_index=0, text=text, logprobs=[]
            ),
            self._event(
                "response.content_part.done", **where, content_index=0, part=builder.text_part(text)
            ),
            self._event("response.output_item.done", output_index=self._text_index, item=item),
        ]

    def _call_delta(self, delta: ToolCallDelta) -> list[bytes]:
        frames = []
        opened = self._calls.get(delta.index)
        if opened is None:
            frames += self._close_text()
            call: dict[str, Any] = {
                "id": delta.id or "",
                "function": {"name": delta.name or "", "arguments": ""},
            }
            opened = self._calls[delta.index] = (self._next_index(), call)
            item = self._builder.call_item(delta.index, call, "in_progress")
            frames.append(
                self._event("response.output_item.added", output_index=opened[0], item=item)
            )
        elif delta.name:
            opened[1]["function"]["name"] += delta.name
        output_index, open_call = opened
        if delta.arguments:
            open_call["function"]["arguments"] += delta.arguments
            frames.append(
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=self._builder.call_item_id(delta.index),
                    output_index=output_index,
                    delta=delta.arguments,
                )
            )
        return frames

    def _close_calls(self) -> list[bytes]:
        frames = []
        for index, (output_index, call) in sorted(self._calls.items(), key=lambda c: c[1][0]):
            item = self._builder.call_item(index, call, "completed")
            frames.append(
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=output_index,
                    name=item["name"],
                    arguments=item["arguments"],
                )
            )
            frames.append(
                self._event("response.output_item.done", output_index=output_index, item=item)
            )
            self._output.append(item)
        self._calls.clear()
        return frames

    async def frames(self) -> AsyncGenerator[bytes, None]:
        stream = self._stream
        builder = self._builder
        yield self._event("response.created", response=builder.body(None, []))
        yield self._event("response.in_progress", response=builder.body(None, []))
        async for delta in stream.events():
            if isinstance(delta, str):
                if self._text is None:
                    for frame in self._open_text():
                        yield frame
                assert self._text is not None
                self._text.append(delta)
                yield self._event(
                    "response.output_text.delta",
                    item_id=builder.message_id,
                    output_index=self._text_index,
                    content_index=0,
                    delta=delta,
                    logprobs=[],
                )
            else:
                for frame in self._call_delta(delta):
                    yield frame
        outcome = await stream.finish_now()
        for frame in [*self._close_text(), *self._close_calls()]:
            yield frame
        final = builder.body(outcome, self._output)
        kind = {
            "completed": "response.completed",
            "failed": "response.failed",
        }.get(final["status"], "response.incomplete")
        yield self._event(kind, response=final)
