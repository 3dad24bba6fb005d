"""The offline model server's tools, images and billing of structured prompts.

What it bills as prompt tokens, deterministically (the gateway's reservation must cover it):

- each message as OpenAI's chat format counts it (tiktoken), with its text parts joined,
  plus for each assistant tool call its function name and arguments and
  `TOOL_CALL_TOKENS`; a `tool` message bills its content (its `tool_call_id` is not text
  the model reads);
- tool definitions rendered the way OpenAI injects them, a TypeScript-like namespace
  (`namespace functions { // description  type name = (_: { property?: type, }) => any; }`),
  counted with tiktoken, plus `TOOLS_SECTION_TOKENS`; a `json_schema` response format
  likewise renders its schema;
- each image part the model table's upper bound for its `detail` on the answering model
  (a model without one refuses images with OpenAI's 400).

Replies: a request with `tools` (and `tool_choice` not `none`) whose last message is a user
message is answered with one call to the first tool (or the one `tool_choice` names),
`finish_reason` `tool_calls`; its arguments are JSON built from the schema's required
properties. After a `tool` message, or without tools, the reply is text as always.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tollgate.adapters.tokenizer import get_encoding, token_counter
from tollgate.pricing import UnknownModelPrice, price_table

TOOL_CALL_TOKENS = 3  # the call's own framing in an assistant message
TOOLS_SECTION_TOKENS = 8  # the system-message framing of the tools section
SAMPLE_WORDS = ("river", "garden", "market", "signal", "bridge", "letter")


class ImagesNotSupported(Exception):
    """The model takes no image input."""


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            str(part.get("text") or part.get("refusal") or "")
            for part in content
            if isinstance(part, dict)
        )
    return ""


def _images(messages: Sequence[Mapping[str, Any]]) -> list[str]:
    details = []
    for message in messages:
        content = message.get("content")
        for part in content if isinstance(content, list) else ():
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url") or {}
                details.append(str(image.get("detail") or "auto"))
    return details


def _ts_type(schema: Any, indent: str) -> str:
    if not isinstance(schema, dict):
        return "any"
    if "enum" in schema and isinstance(schema["enum"], list):
        return (
            " | ".join(json.dumps(value, ensure_ascii=False) for value in schema["enum"]) or "never"
        )
    kind = schema.get("type")
    if kind == "array":
        return _ts_type(schema.get("items"), indent) + "[]"
    if kind == "object":
        return _ts_object(schema, indent + "  ")
    if kind == "integer":
        return "number"
    return kind if isinstance(kind, str) else "any"


def _ts_object(schema: Mapping[str, Any], indent: str) -> str:
    properties = schema.get("properties")
    if not isinstance(properties, dict) or not properties:
        return "object"
    listed = schema.get("required")
    required = listed if isinstance(listed, list) else []
    lines = ["{"]
    for name, prop in properties.items():
        if isinstance(prop, dict) and isinstance(prop.get("description"), str):
            lines.append(f"{indent}// {prop['description']}")
        optional = "" if name in required else "?"
        lines.append(f"{indent}{name}{optional}: {_ts_type(prop, indent)},")
    lines.append(indent[:-2] + "}")
    return "\n".join(lines)


def render_tools(tools: Sequence[Any]) -> str:
    """Function tools as OpenAI writes them into the prompt."""
    lines = ["# Tools", "", "## functions", "", "namespace functions {", ""]
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            continue
        if isinstance(function.get("description"), str):
            lines.append(f"// {function['description']}")
        parameters = function.get("parameters")
        shape = _ts_object(parameters, "  ") if isinstance(parameters, dict) else "object"
        lines += [f"type {function.get('name')} = (_: {shape}) => any;", ""]
    lines.append("} // namespace functions")
    return "\n".join(lines)


def render_response_format(response_format: Any) -> str:
    if not isinstance(response_format, dict) or response_format.get("type") != "json_schema":
        return ""
    schema = response_format.get("json_schema") or {}
    body = schema.get("schema")
    shape = _ts_object(body, "  ") if isinstance(body, dict) else "object"
    return f"# Response Formats\n\n## {schema.get('name')}\n\n{shape}"


def billed_prompt_tokens(model: str, body: Mapping[str, Any]) -> int:
    """The prompt tokens this server bills for a chat request (see the module's doc)."""
    counter = token_counter()
    encoding = counter.encoding(model)
    messages = body.get("messages") or []
    flat = []
    calls_tokens = 0
    for message in messages:
        entry = {"role": str(message.get("role")), "content": _text(message.get("content"))}
        if isinstance(message.get("name"), str):
            entry["name"] = message["name"]
        flat.append(entry)
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            text = str(function.get("name") or "") + str(function.get("arguments") or "")
            calls_tokens += TOOL_CALL_TOKENS + len(encoding.encode_ordinary(text))
    total = counter.count_messages(model, flat) + calls_tokens
    tools = body.get("tools")
    injected = render_tools(tools) if isinstance(tools, list) and tools else ""
    injected += render_response_format(body.get("response_format"))
    if injected:
        total += TOOLS_SECTION_TOKENS + len(encoding.encode_ordinary(injected))
    return total + image_tokens(model, _images(messages))


def image_tokens(model: str, details: list[str]) -> int:
    if not details:
        return 0
    try:
        bound = price_table().image_token_bound(model, "auto")
    except UnknownModelPrice:
        bound = None
    if bound is None:
        raise ImagesNotSupported(f"Invalid content type. image_url is not supported by {model}.")
    return sum(price_table().image_token_bound(model, detail) or 0 for detail in details)


# --- tool calls --------------------------------------------------------------------------


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    argument_pieces: tuple[str, ...]  # one per token of the arguments

    def as_message(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def deltas(self) -> list[bytes]:
        """OpenAI's `tool_calls` deltas: the call's head, then its arguments token by token."""
        head = {
            "tool_calls": [
                {
                    "index": 0,
                    "id": self.id,
                    "type": "function",
                    "function": {"name": self.name, "arguments": ""},
                }
            ]
        }
        pieces = [
            {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            for piece in self.argument_pieces
        ]
        return [json.dumps(delta, separators=(",", ":")).encode() for delta in [head, *pieces]]

    @property
    def output_tokens(self) -> int:
        """What the call bills as output: its arguments' tokens and one for the name."""
        return len(self.argument_pieces) + 1


def _sample(schema: Any, seed: int) -> Any:
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][seed % len(schema["enum"])]
    kind = schema.get("type")
    if kind == "object":
        return _sample_object(schema, seed)
    if kind == "array":
        return []
    if kind == "integer":
        return seed % 100
    if kind == "number":
        return (seed % 1000) / 10
    if kind == "boolean":
        return seed % 2 == 0
    return SAMPLE_WORDS[seed % len(SAMPLE_WORDS)]


def _sample_object(schema: Mapping[str, Any], seed: int) -> dict[str, Any]:
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, dict) or not isinstance(required, list):
        return {}
    return {
        name: _sample(properties.get(name), seed + offset)
        for offset, name in enumerate(required)
        if name in properties
    }


def planned_tool_call(body: Mapping[str, Any], seed: int, model: str) -> ToolCall | None:
    """The call this request is answered with, or None when it gets text."""
    tools = body.get("tools")
    messages = body.get("messages") or []
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if not messages or messages[-1].get("role") != "user":
        return None
    functions = [tool["function"] for tool in tools if isinstance(tool.get("function"), dict)]
    if not functions:
        return None
    function = functions[0]
    if isinstance(choice, dict):
        named = (choice.get("function") or {}).get("name")
        function = next((f for f in functions if f.get("name") == named), function)
    parameters = function.get("parameters")
    arguments = json.dumps(_sample_object(parameters, seed) if isinstance(parameters, dict) else {})
    encoding = get_encoding(token_counter().encoding_name(model))
    pieces = tuple(
        encoding.decode_single_token_bytes(token).decode()
        for token in encoding.encode_ordinary(arguments)
    )
    call_id = "call_" + hashlib.blake2b(f"{seed}".encode(), digest_size=12).hexdigest()
    return ToolCall(call_id, str(function.get("name")), arguments, pieces)
