"""The offline model server's Responses API (`POST /v1/responses`): input and output shapes.

A Responses request is translated into the chat request the server already answers
(`chat_body`): `instructions` becomes a system message, message items their role's message,
`function_call` items assistant `tool_calls`, `function_call_output` items `tool` messages,
function tools chat tools, `max_output_tokens` the cap, `reasoning.effort` the effort and
`text.format` the response format. The answer is then rendered in the Responses shapes
(`ResponseRendering`): a `response` object, or OpenAI's semantic SSE events
(`event: <type>`, `data` with `type` and `sequence_number`), ending with
`response.completed`, or `response.incomplete` when the cap was reached. Reasoning models
put a `reasoning` item (no summary) before the message or call.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.local.offline_tools import ToolCall

# A chat parameter's name in the Responses API, for errors found in the translated request.
RESPONSES_PARAMS = {
    "messages": "input",
    "max_completion_tokens": "max_output_tokens",
    "reasoning_effort": "reasoning.effort",
    "response_format": "text.format",
}
REFUSED_PARAMS = ("previous_response_id", "conversation")  # it keeps no state


class InvalidResponsesRequest(Exception):
    def __init__(self, message: str, param: str | None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _input_text(content: Any, param: str) -> str | list[dict[str, Any]]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidResponsesRequest(f"Invalid '{param}': expected a string or an array.", param)
    parts: list[dict[str, Any]] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text") and isinstance(part.get("text"), str):
            parts.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            image = {"url": part.get("image_url"), "detail": part.get("detail") or "auto"}
            parts.append({"type": "image_url", "image_url": image})
        else:
            raise InvalidResponsesRequest(
                f"Invalid '{param}[{index}]': expected an input_text or input_image part.",
                f"{param}[{index}]",
            )
    return parts


def _messages(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    items = body.get("input")
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list) or not items:
        raise InvalidResponsesRequest("'input' must be a string or a non-empty array.", "input")
    for index, item in enumerate(items):
        param = f"input[{index}]"
        kind = item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message" and isinstance(item.get("role"), str):
            content = _input_text(item.get("content"), f"{param}.content")
            messages.append({"role": item["role"], "content": content})
        elif kind == "function_call":
            call = {"name": item.get("name"), "arguments": item.get("arguments") or ""}
            tool_call = {"id": item.get("call_id"), "type": "function", "function": call}
            messages.append({"role": "assistant", "content": None, "tool_calls": [tool_call]})
        elif kind == "function_call_output":
            output = item.get("output")
            text = output if isinstance(output, str) else json.dumps(output)
            messages.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": text})
        elif kind == "reasoning":
            continue  # an earlier answer's reasoning, handed back: nothing the model reads
        else:
            raise InvalidResponsesRequest(
                f"Invalid '{param}': expected a message, function_call, "
                "function_call_output or reasoning item.",
                param,
            )
    return messages


def _tools(tools: Any) -> list[dict[str, Any]]:
    if not isinstance(tools, list):
        raise InvalidResponsesRequest("Invalid 'tools': expected an array of tools.", "tools")
    functions = []
    for index, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise InvalidResponsesRequest(
                f"Invalid 'tools[{index}]': only function tools are served offline.",
                f"tools[{index}]",
            )
        function = {key: tool[key] for key in ("name", "description", "parameters") if key in tool}
        functions.append({"type": "function", "function": function})
    return functions


def chat_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """The chat request a Responses request is answered as (see the module's doc)."""
    for name in REFUSED_PARAMS:
        if body.get(name) is not None:
            raise InvalidResponsesRequest(
                f"'{name}' is not supported by the offline model server: it stores nothing.", name
            )
    chat: dict[str, Any] = {"model": body.get("model"), "messages": _messages(body)}
    if body.get("tools") is not None:
        chat["tools"] = _tools(body["tools"])
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "function":
        chat["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    elif choice is not None:
        chat["tool_choice"] = choice
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and reasoning.get("effort") is not None:
        chat["reasoning_effort"] = reasoning["effort"]
    text_format = (body.get("text") or {}).get("format")
    if isinstance(text_format, dict) and text_format.get("type") == "json_schema":
        schema = {key: text_format.get(key) for key in ("name", "schema", "strict")}
        chat["response_format"] = {"type": "json_schema", "json_schema": schema}
    for name in ("stream", "temperature", "top_p"):
        if body.get(name) is not None:
            chat[name] = body[name]
    return chat


def _sse(event: dict[str, Any]) -> bytes:
    data = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + data + b"\n\n"


@dataclass(frozen=True)
class ResponseRendering:
    """One answer in the Responses shapes; `pieces` are its visible tokens' texts (for a
    call: an empty head, then its arguments)."""

    id: str
    created_at: int
    model: str
    request: Mapping[str, Any]
    pieces: tuple[str, ...]
    tool_call: ToolCall | None
    incomplete: bool
    reasoning_effort: str | None  # None: not a reasoning model
    chat_usage: Mapping[str, Any]

    @property
    def _status(self) -> str:
        return "incomplete" if self.incomplete else "completed"

    def _reasoning_item(self) -> dict[str, Any] | None:
        if self.reasoning_effort is None:
            return None
        return {"id": "rs_" + self.id.removeprefix("resp_"), "type": "reasoning", "summary": []}

    def _answer_item(self, status: str, text: str) -> dict[str, Any]:
        suffix = self.id.removeprefix("resp_")
        if self.tool_call is None:
            part = {"type": "output_text", "text": text, "annotations": []}
            content = [part] if status != "in_progress" else []
            return {
                "id": "msg_" + suffix,
                "type": "message",
                "status": status,
                "role": "assistant",
                "content": content,
            }
        return {
            "id": "fc_" + suffix,
            "type": "function_call",
            "status": status,
            "call_id": self.tool_call.id,
            "name": self.tool_call.name,
            "arguments": text,
        }

    def _usage(self) -> dict[str, Any]:
        usage = self.chat_usage
        return {
            "input_tokens": usage["prompt_tokens"],
            "input_tokens_details": {
                "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]
            },
            "output_tokens": usage["completion_tokens"],
            "output_tokens_details": {
                "reasoning_tokens": usage["completion_tokens_details"]["reasoning_tokens"]
            },
            "total_tokens": usage["total_tokens"],
        }

    def _output(self) -> list[dict[str, Any]]:
        reasoning = self._reasoning_item()
        output = [] if reasoning is None else [reasoning]
        if self.pieces:
            output.append(self._answer_item(self._status, "".join(self.pieces)))
        return output

    def response(self, *, final: bool) -> dict[str, Any]:
        request = self.request
        text = request.get("text") if isinstance(request.get("text"), dict) else {}
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "status": self._status if final else "in_progress",
            "error": None,
            "incomplete_details": {"reason": "max_output_tokens"}
            if final and self.incomplete
            else None,
            "instructions": request.get("instructions"),
            "max_output_tokens": request.get("max_output_tokens"),
            "model": self.model,
            "output": self._output() if final else [],
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "previous_response_id": None,
            "reasoning": {"effort": self.reasoning_effort, "summary": None},
            "store": request.get("store", True),
            "temperature": request.get("temperature", 1.0),
            "text": {"format": (text or {}).get("format") or {"type": "text"}},
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [],
            "top_p": request.get("top_p", 1.0),
            "truncation": "disabled",
            "usage": self._usage() if final else None,
            "user": None,
            "metadata": request.get("metadata") or {},
        }

    def json_body(self) -> bytes:
        return json.dumps(self.response(final=True), separators=(",", ":")).encode()

    def stream_events(self) -> tuple[bytes, list[bytes], bytes]:
        """What is sent before the reasoning silence, one event group per visible token
        (the first also opening the output item), and everything after the last token."""
        events: list[dict[str, Any]] = []

        def emit(kind: str, **fields: Any) -> bytes:
            event = {"type": kind, "sequence_number": len(events), **fields}
            events.append(event)
            return _sse(event)

        opening = emit("response.created", response=self.response(final=False))
        opening += emit("response.in_progress", response=self.response(final=False))
        reasoning = self._reasoning_item()
        lead = b""
        if reasoning is not None:
            opening += emit("response.output_item.added", output_index=0, item=reasoning)
            lead = emit("response.output_item.done", output_index=0, item=reasoning)
        index = 0 if reasoning is None else 1
        item_id = self._answer_item("in_progress", "")["id"]
        at = {"item_id": item_id, "output_index": index}
        text = "".join(self.pieces)
        tokens: list[bytes] = []
        if self.pieces:
            added = self._answer_item("in_progress", "")
            lead += emit("response.output_item.added", output_index=index, item=added)
        if self.tool_call is None and self.pieces:
            empty = {"type": "output_text", "text": "", "annotations": []}
            lead += emit("response.content_part.added", **at, content_index=0, part=empty)
            for piece in self.pieces:
                delta = emit(
                    "response.output_text.delta", **at, content_index=0, delta=piece, logprobs=[]
                )
                tokens.append(delta)
            full = {"type": "output_text", "text": text, "annotations": []}
            ending = emit(
                "response.output_text.done", **at, content_index=0, text=text, logprobs=[]
            )
            ending += emit("response.content_part.done", **at, content_index=0, part=full)
        elif self.pieces:
            tokens.append(b"")  # the call's head: its name, sent with the item
            for piece in self.pieces[1:]:
                tokens.append(emit("response.function_call_arguments.delta", **at, delta=piece))
            ending = emit("response.function_call_arguments.done", **at, arguments=text)
        else:
            ending = b""
        if self.pieces:
            item = self._answer_item(self._status, text)
            ending += emit("response.output_item.done", output_index=index, item=item)
            tokens[0] = lead + tokens[0]
        else:
            ending = lead + ending
        final = "response.incomplete" if self.incomplete else "response.completed"
        ending += emit(final, response=self.response(final=True))
        return opening, tokens, ending
