"""OpenAI-compatible offline model server: deterministic replies, real token counts, faults.

Used by `make run` without an API key, by demos, by the gateway's integration tests and
by benchmarks. `POST /v1/chat/completions` answers in OpenAI's exact wire format, stream
and non-stream; `GET /v1/models` lists the models it knows (`MODELS`). Tool calls, image
parts and how structured prompts are billed: tollgate.local.offline_tools.
`POST /v1/responses` answers OpenAI's Responses API with the same generation, reasoning,
faults and request log (an unknown model: 404); its shapes: tollgate.local.offline_responses.

Reasoning models (the GPT-5 family, o3, o4-mini and their dated snapshots) behave like
OpenAI's: `max_tokens`, a `temperature` other than 1, `top_p`, penalties and logprobs are
refused with OpenAI's 400 bodies; `max_completion_tokens` and `reasoning_effort` are
accepted. They answer 200 and the role chunk at once, stay silent `reasoning_silence_s`,
spend `reasoning_tokens[effort]` hidden tokens (default effort `medium`), then stream the
visible text. The cap bounds reasoning + visible tokens (reached while reasoning:
`finish_reason` `length`, no text); usage reports them in
`completion_tokens_details.reasoning_tokens`, included in `completion_tokens`. Other
models accept `max_tokens` and `max_completion_tokens` and refuse `reasoning_effort`.

Tests steer it over HTTP:

- `POST /_offline/faults` appends fault rules (one object or a list), `GET` lists them,
  `DELETE` clears them. See `FaultRule`.
- `POST /_offline/config` updates the defaults (`OfflineModelConfig`), `GET` returns them.
- `GET /_offline/requests` lists one record per chat or responses request received
  (`DELETE` clears), with its `api` (`chat.completions` or `responses`), the request `body`
  as received, the `messages` it was answered as and how it ended: `completed`,
  `client_disconnected`, `fault_status`, `cut`, `hung` (the client gave up on a hung
  request) or `invalid_request` (`in_progress` while it runs).

Everything a response needs is computed before its first byte, so streaming a chunk is
one `send` of prebuilt bytes.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import re
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollgate.adapters.tokenizer import get_encoding, token_counter
from tollgate.local.offline_responses import (
    RESPONSES_PARAMS,
    InvalidResponsesRequest,
    ResponseRendering,
    chat_body,
)
from tollgate.local.offline_tools import (
    ImagesNotSupported,
    ToolCall,
    billed_prompt_tokens,
    planned_tool_call,
)


@dataclass(frozen=True)
class KnownModel:
    snapshot: str  # the dated name upstream reports when asked for the base name
    reasoning: bool = False


MODELS = {
    "gpt-5": KnownModel("gpt-5-2025-08-07", reasoning=True),
    "gpt-5-mini": KnownModel("gpt-5-mini-2025-08-07", reasoning=True),
    "gpt-5-nano": KnownModel("gpt-5-nano-2025-08-07", reasoning=True),
    "gpt-4.1": KnownModel("gpt-4.1-2025-04-14"),
    "gpt-4.1-mini": KnownModel("gpt-4.1-mini-2025-04-14"),
    "gpt-4.1-nano": KnownModel("gpt-4.1-nano-2025-04-14"),
    "o3": KnownModel("o3-2025-04-16", reasoning=True),
    "o4-mini": KnownModel("o4-mini-2025-04-16", reasoning=True),
    "gpt-4o-mini": KnownModel("gpt-4o-mini-2024-07-18"),
    "gpt-4o": KnownModel("gpt-4o-2024-08-06"),
    "gpt-3.5-turbo": KnownModel("gpt-3.5-turbo-0125"),
}
DATED_SUFFIX = re.compile(r"-\d{4}-\d{2}-\d{2}$")
REASONING_EFFORTS = ("minimal", "low", "medium", "high")
DEFAULT_REASONING_EFFORT = "medium"
# Refused by reasoning models whatever their value (temperature only when not 1).
REASONING_UNSUPPORTED = (
    "top_p",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
)
SYSTEM_FINGERPRINT = "fp_0ff11ne000"
REQUEST_LOG_LIMIT = 10_000
MIN_NATURAL_REPLY_TOKENS = 20
MAX_NATURAL_REPLY_TOKENS = 60

# Every word below is a single token, with and without a leading space, in both
# o200k_base and cl100k_base (tests/unit/test_offline_text.py checks this), so a reply
# planned as N pieces encodes to exactly N tokens.
OPENERS = ("The", "A", "This", "Every", "Each", "Our", "Your", "Some", "One", "That")
ADJECTIVES = (
    "quick", "small", "bright", "quiet", "early", "late", "simple", "clear", "warm", "cold",
    "green", "old", "new", "large", "soft", "calm", "busy", "gentle", "careful", "steady",
)  # fmt: skip
NOUNS = (
    "river", "garden", "market", "engine", "window", "bridge", "signal", "letter", "table",
    "city", "forest", "road", "report", "model", "server", "budget", "message", "answer",
    "question", "team", "project", "record", "plan", "stream",
)  # fmt: skip
VERBS = (
    "moves", "finds", "keeps", "builds", "opens", "checks", "carries", "follows", "shows",
    "holds", "sends", "reads", "writes", "meets",
)  # fmt: skip
PREPOSITIONS = (
    "near", "over", "under", "beside", "through", "across", "behind", "before", "after",
    "around",
)  # fmt: skip
SHORTEST_FULL_SENTENCE = 4  # "The river moves."
SENTENCE_LENGTHS = (6, 16)

FaultKind = Literal["status", "slow", "cut", "hang"]
ReasoningEffort = Literal["minimal", "low", "medium", "high"]
Api = Literal["chat.completions", "responses"]


def model_facts(requested: str) -> tuple[str, bool]:
    """The model name upstream reports for `requested`, and whether it is a reasoning model."""
    known = MODELS.get(requested)
    if known is not None:
        return known.snapshot, known.reasoning
    base = MODELS.get(DATED_SUFFIX.sub("", requested))
    return requested, base is not None and base.reasoning


# --- configuration and fault rules -------------------------------------------------------


class ReasoningTokens(BaseModel):
    """Hidden tokens a reasoning model spends per `reasoning_effort` (an omitted one: default)."""

    model_config = ConfigDict(extra="forbid")

    minimal: int = Field(default=16, ge=0)
    low: int = Field(default=64, ge=0)
    medium: int = Field(default=192, ge=0)
    high: int = Field(default=512, ge=0)


class OfflineModelConfig(BaseModel):
    """Defaults for every request; a matching fault rule may override the timings."""

    model_config = ConfigDict(extra="forbid")

    first_token_delay_s: float = Field(default=0.0, ge=0)
    chunk_interval_s: float = Field(default=0.0, ge=0)
    reply_tokens: int | None = Field(default=None, ge=1)
    # reasoning models only: silence after the role chunk, hidden tokens per effort
    reasoning_silence_s: float = Field(default=0.0, ge=0)
    reasoning_tokens: ReasoningTokens = Field(default_factory=lambda: ReasoningTokens())


class FaultRule(BaseModel):
    """A fault applied to the next `times` requests for `model` (null: any model).

    kind `status`: answer with an OpenAI-shaped error of that status (with `retry-after` /
    `retry-after-ms` headers when set). kind `cut`: send `cut_after_chunks` content
    chunks, then drop the connection. kind `hang`: read the request, then send nothing
    (not even the status line) until the client goes away. kind `slow` or null: answer
    normally. Every kind also applies the timing overrides, `reasoning_tokens` (this many
    hidden tokens, whatever the effort) and `cached_tokens` it sets.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    kind: FaultKind | None = None
    status: int | None = Field(default=None, ge=400, le=599)
    message: str | None = None
    retry_after: float | None = Field(default=None, ge=0)
    retry_after_ms: int | None = Field(default=None, ge=0)
    times: int | None = Field(default=None, ge=1)
    first_token_delay_s: float | None = Field(default=None, ge=0)
    chunk_interval_s: float | None = Field(default=None, ge=0)
    cut_after_chunks: int = Field(default=0, ge=0)
    cached_tokens: int | None = Field(default=None, ge=0)
    reasoning_silence_s: float | None = Field(default=None, ge=0)
    reasoning_tokens: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _status_kind_has_status(self) -> FaultRule:
        if self.kind == "status" and self.status is None:
            raise ValueError("a rule of kind 'status' needs a 'status'")
        return self


@dataclass
class _ActiveRule:
    rule: FaultRule
    applied: int = 0

    def matches(self, requested_model: str, reported_model: str) -> bool:
        if self.rule.times is not None and self.applied >= self.rule.times:
            return False
        return self.rule.model is None or self.rule.model in (requested_model, reported_model)

    def view(self) -> dict[str, Any]:
        return {**self.rule.model_dump(), "applied": self.applied}


# --- deterministic reply text ------------------------------------------------------------


def messages_seed(messages: Sequence[Mapping[str, Any]]) -> int:
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return int.from_bytes(hashlib.blake2b(canonical.encode(), digest_size=8).digest(), "big")


def natural_reply_length(seed: int) -> int:
    span = MAX_NATURAL_REPLY_TOKENS - MIN_NATURAL_REPLY_TOKENS + 1
    return MIN_NATURAL_REPLY_TOKENS + seed % span


def _sentence(rng: random.Random, length: int) -> list[str]:
    """Words and punctuation of one sentence of exactly `length` pieces."""
    if length < SHORTEST_FULL_SENTENCE:
        return [rng.choice(OPENERS), rng.choice(NOUNS), rng.choice(VERBS)][:length]
    # subject + verb + ".", then an object (+2 pieces), prepositional phrases (+3 each)
    # and adjectives (+1 each, one per noun) until the length is reached.
    extra = length - SHORTEST_FULL_SENTENCE
    has_object = extra >= 2
    extra -= 2 * has_object
    noun_phrases = 1 + has_object
    phrases = 0
    while extra > noun_phrases:
        phrases += 1
        noun_phrases += 1
        extra -= 3
    adjective_slots = set(rng.sample(range(noun_phrases), extra))

    def noun_phrase(slot: int) -> list[str]:
        adjective = [rng.choice(ADJECTIVES)] if slot in adjective_slots else []
        return [*adjective, rng.choice(NOUNS)]

    words = [rng.choice(OPENERS), *noun_phrase(0), rng.choice(VERBS)]
    if has_object:
        words += ["the", *noun_phrase(1)]
    for phrase in range(phrases):
        words += [rng.choice(PREPOSITIONS), "the", *noun_phrase(1 + has_object + phrase)]
    return [*words, "."]


def reply_pieces(seed: int, length: int) -> list[str]:
    """`length` pieces (words with their leading space, or punctuation) of readable text."""
    rng = random.Random(seed)
    low, high = SENTENCE_LENGTHS
    pieces: list[str] = []
    while len(pieces) < length:
        remaining = length - len(pieces)
        sentence_length = rng.randint(low, high)
        if remaining - sentence_length < low:
            sentence_length = remaining
        for word in _sentence(rng, sentence_length):
            pieces.append(word if word == "." or not pieces else " " + word)
    return pieces


def reply_text(seed: int, length: int) -> str:
    return "".join(reply_pieces(seed, length))


@dataclass(frozen=True)
class _Reply:
    token_texts: tuple[str, ...]
    content_deltas: tuple[bytes, ...]  # `{"content":"<token>"}` per token, JSON-encoded


@lru_cache(maxsize=4096)
def _reply(seed: int, length: int, encoding_name: str) -> _Reply:
    encoding = get_encoding(encoding_name)
    tokens = encoding.encode_ordinary(reply_text(seed, length))
    texts = tuple(encoding.decode_single_token_bytes(token).decode() for token in tokens)
    deltas = tuple(b'{"content":' + json.dumps(text).encode() + b"}" for text in texts)
    return _Reply(texts, deltas)


# --- request parsing ---------------------------------------------------------------------


class _InvalidRequest(Exception):
    def __init__(
        self, message: str, param: str | None, code: str | None = None, status: int = 400
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.status = status


@dataclass(frozen=True)
class _ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    stream: bool
    include_usage: bool
    max_tokens: int | None
    body: dict[str, Any]
    reported_model: str
    reasoning: bool
    reasoning_effort: ReasoningEffort | None
    prompt_tokens: int


def _unsupported_parameter(name: str) -> _InvalidRequest:
    return _InvalidRequest(
        f"Unsupported parameter: '{name}' is not supported with this model.",
        name,
        "unsupported_parameter",
    )


def _check_reasoning_parameters(body: Mapping[str, Any]) -> ReasoningEffort | None:
    """Refuse what OpenAI's reasoning models refuse, with their messages; the effort asked."""
    if body.get("max_tokens") is not None:
        raise _InvalidRequest(
            "Unsupported parameter: 'max_tokens' is not supported with this model. "
            "Use 'max_completion_tokens' instead.",
            "max_tokens",
            "unsupported_parameter",
        )
    temperature = body.get("temperature")
    if temperature is not None and temperature != 1:
        raise _InvalidRequest(
            f"Unsupported value: 'temperature' does not support {json.dumps(temperature)} "
            "with this model. Only the default (1) value is supported.",
            "temperature",
            "unsupported_value",
        )
    for name in REASONING_UNSUPPORTED:
        if body.get(name) is not None:
            raise _unsupported_parameter(name)
    effort = body.get("reasoning_effort")
    if effort is None:
        return None
    if effort not in REASONING_EFFORTS:
        shown = f"'{effort}'" if isinstance(effort, str) else json.dumps(effort)
        raise _InvalidRequest(
            f"Unsupported value: 'reasoning_effort' does not support {shown} "
            "with this model. Supported values are: 'minimal', 'low', 'medium', and 'high'.",
            "reasoning_effort",
            "unsupported_value",
        )
    chosen: ReasoningEffort = effort
    return chosen


def _optional_positive_int(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _InvalidRequest(f"Invalid '{name}': expected an integer >= 1.", name)
    return value


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise _InvalidRequest("The request body is not valid JSON.", None) from None
    if not isinstance(body, dict):
        raise _InvalidRequest("The request body must be a JSON object.", None)
    return body


def parse_chat_request(raw: bytes) -> _ChatRequest:
    body = _json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _InvalidRequest("You must provide a model parameter.", "model")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _InvalidRequest("'messages' must be a non-empty array of messages.", "messages")
    for index, message in enumerate(messages):
        param = f"messages.[{index}]"
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise _InvalidRequest(f"Invalid '{param}': expected an object with a 'role'.", param)
        if not isinstance(message.get("content"), str | list | None):
            raise _InvalidRequest(f"Invalid '{param}.content': expected a string.", param)
    stream = body.get("stream") or False
    if not isinstance(stream, bool):
        raise _InvalidRequest("Invalid 'stream': expected a boolean.", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise _InvalidRequest("Invalid 'stream_options': expected an object.", "stream_options")
    max_completion_tokens = _optional_positive_int(body, "max_completion_tokens")
    max_tokens = _optional_positive_int(body, "max_tokens")
    tools = body.get("tools")
    if tools is not None and (
        not isinstance(tools, list) or not all(isinstance(tool, dict) for tool in tools)
    ):
        raise _InvalidRequest("Invalid 'tools': expected an array of tools.", "tools")
    try:
        prompt_tokens = billed_prompt_tokens(model, body)
    except ImagesNotSupported as exc:
        raise _InvalidRequest(str(exc), "messages", "invalid_image_content") from None
    reported_model, reasoning = model_facts(model)
    if reasoning:
        reasoning_effort = _check_reasoning_parameters(body)
    elif body.get("reasoning_effort") is not None:
        raise _unsupported_parameter("reasoning_effort")
    else:
        reasoning_effort = None
    return _ChatRequest(
        model=model,
        messages=messages,
        stream=stream,
        include_usage=stream and stream_options.get("include_usage") is True,
        max_tokens=max_completion_tokens if max_completion_tokens is not None else max_tokens,
        body=body,
        reported_model=reported_model,
        reasoning=reasoning,
        reasoning_effort=reasoning_effort,
        prompt_tokens=prompt_tokens,
    )


def parse_responses_request(raw: bytes) -> _ChatRequest:
    """A `/v1/responses` request as the chat request it is answered as."""
    body = _json_object(raw)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _InvalidRequest("You must provide a model parameter.", "model")
    if DATED_SUFFIX.sub("", model) not in MODELS:
        raise _InvalidRequest(
            f"The model '{model}' does not exist or you do not have access to it.",
            "model",
            "model_not_found",
            status=404,
        )
    try:
        chat = chat_body(body)
    except InvalidResponsesRequest as exc:
        raise _InvalidRequest(exc.message, exc.param) from None
    try:
        return parse_chat_request(json.dumps(chat).encode())
    except _InvalidRequest as exc:
        param = RESPONSES_PARAMS.get(exc.param or "", exc.param)
        message = exc.message.replace(f"'{exc.param}'", f"'{param}'")
        raise _InvalidRequest(message, param, exc.code) from None


# --- responses ---------------------------------------------------------------------------

_ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]
JSON_HEADERS = [(b"content-type", b"application/json")]
DONE_EVENT = b"data: [DONE]\n\n"


def openai_error(
    status: int, message: str, *, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    error_type, default_code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {
        "error": {
            "message": message,
            "type": error_type,
            "param": param,
            "code": code or default_code,
        }
    }


def _fault_response(rule: FaultRule) -> JSONResponse:
    status = rule.status or 500
    headers: dict[str, str] = {}
    if rule.retry_after is not None:
        headers["retry-after"] = format(rule.retry_after, "g")
    if rule.retry_after_ms is not None:
        headers["retry-after-ms"] = str(rule.retry_after_ms)
    message = rule.message or f"Injected fault: status {status}."
    return JSONResponse(openai_error(status, message), status_code=status, headers=headers)


def _usage(
    prompt_tokens: int, completion_tokens: int, cached_tokens: int, reasoning_tokens: int
) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _body(data: bytes, *, more_body: bool = True) -> Message:
    return {"type": "http.response.body", "body": data, "more_body": more_body}


class _InjectedCut(Exception):
    """Raised mid-response so that uvicorn drops the connection, as a broken upstream would."""


class _HideInjectedCuts(logging.Filter):
    """uvicorn logs an exception escaping the app as an error; an injected cut is not one."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _InjectedCut))


@dataclass
class _Completion:
    """One answer, fully computed before its first byte is sent."""

    id: str
    created: int
    reported_model: str
    reply: _Reply
    visible_tokens: int
    finish_reason: str
    usage: dict[str, Any]
    reasoning_silence_s: float  # before the first visible token, after the role chunk
    first_token_delay_s: float
    chunk_interval_s: float
    cut_after_chunks: int | None
    tool_call: ToolCall | None = None

    @property
    def content(self) -> str:
        return "".join(self.reply.token_texts[: self.visible_tokens])

    def message(self) -> dict[str, Any]:
        if self.tool_call is None:
            return {"role": "assistant", "content": self.content, "refusal": None}
        call = self.tool_call.as_message()
        call["function"]["arguments"] = self.content  # cut short at the cap, if it was
        return {"role": "assistant", "content": None, "tool_calls": [call], "refusal": None}

    def json_body(self) -> bytes:
        completion = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.reported_model,
            "choices": [
                {
                    "index": 0,
                    "message": self.message(),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        return json.dumps(completion, separators=(",", ":")).encode()

    def stream_events(self, include_usage: bool) -> tuple[bytes, list[bytes], bytes]:
        """The role event, one event per content token, and everything after the content."""
        head = (
            b'data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,'
            b'"system_fingerprint":"%s","choices":[{"index":0,"delta":'
            % (
                self.id.encode(),
                self.created,
                json.dumps(self.reported_model).encode(),
                SYSTEM_FINGERPRINT.encode(),
            )
        )
        usage_field = b',"usage":null' if include_usage else b""
        tail = b',"logprobs":null,"finish_reason":null}]' + usage_field + b"}\n\n"
        opening = b'""' if self.tool_call is None else b"null"
        role = head + b'{"role":"assistant","content":' + opening + b',"refusal":null}' + tail
        content = [
            head + delta + tail for delta in self.reply.content_deltas[: self.visible_tokens]
        ]
        ending = [
            head
            + b'{},"logprobs":null,"finish_reason":"%s"}]' % self.finish_reason.encode()
            + usage_field
            + b"}\n\n"
        ]
        if include_usage:
            usage_chunk = {
                "id": self.id,
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.reported_model,
                "system_fingerprint": SYSTEM_FINGERPRINT,
                "choices": [],
                "usage": self.usage,
            }
            ending.append(b"data: " + json.dumps(usage_chunk, separators=(",", ":")).encode())
            ending.append(b"\n\n")
        ending.append(DONE_EVENT)
        return role, content, b"".join(ending)


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _run_until_disconnect(receive: Receive, sending: Awaitable[None]) -> bool:
    """Run `sending` while watching for the client going away; True if it went away first.

    Watching `receive` notices a disconnect at once, also while we sleep between chunks;
    uvicorn silently drops sends to a closed connection, so they would not tell us.
    """
    send_task = asyncio.ensure_future(sending)
    watch_task = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await asyncio.wait((send_task, watch_task), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch_task.cancel()
        if not send_task.done():
            send_task.cancel()
            with suppress(asyncio.CancelledError):
                await send_task
    if send_task.cancelled():
        return True
    send_task.result()
    return False


# --- the server --------------------------------------------------------------------------


class OfflineModel:
    """State shared by the endpoints: defaults, fault rules and the request log."""

    def __init__(self, config: OfflineModelConfig) -> None:
        self.config = config
        self.rules: list[_ActiveRule] = []
        self.request_log: deque[dict[str, Any]] = deque(maxlen=REQUEST_LOG_LIMIT)

    def take_matching_rule(self, requested_model: str, reported_model: str) -> FaultRule | None:
        for active in self.rules:
            if active.matches(requested_model, reported_model):
                active.applied += 1
                return active.rule
        return None

    # admin endpoints

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def list_models(self, request: Request) -> Response:
        names = [name for base, known in MODELS.items() for name in (base, known.snapshot)]
        data = [
            {"id": name, "object": "model", "created": 0, "owned_by": "system"} for name in names
        ]
        return JSONResponse({"object": "list", "data": data})

    async def list_faults(self, request: Request) -> Response:
        return JSONResponse([active.view() for active in self.rules])

    async def add_faults(self, request: Request) -> Response:
        try:
            payload = await request.json()
            items = payload if isinstance(payload, list) else [payload]
            rules = [FaultRule.model_validate(item) for item in items]
        except (ValueError, ValidationError) as exc:
            return JSONResponse(openai_error(400, f"Invalid fault rule: {exc}"), status_code=400)
        self.rules.extend(_ActiveRule(rule) for rule in rules)
        return JSONResponse([active.view() for active in self.rules])

    async def clear_faults(self, request: Request) -> Response:
        self.rules.clear()
        return Response(status_code=204)

    async def get_config(self, request: Request) -> Response:
        return JSONResponse(self.config.model_dump())

    async def update_config(self, request: Request) -> Response:
        try:
            changes = await request.json()
            if not isinstance(changes, dict):
                raise ValueError("expected a JSON object")
            self.config = OfflineModelConfig.model_validate(self.config.model_dump() | changes)
        except (ValueError, ValidationError) as exc:
            return JSONResponse(openai_error(400, f"Invalid config: {exc}"), status_code=400)
        return JSONResponse(self.config.model_dump())

    async def list_requests(self, request: Request) -> Response:
        return JSONResponse(list(self.request_log))

    async def clear_requests(self, request: Request) -> Response:
        self.request_log.clear()
        return Response(status_code=204)

    # the chat completions and responses endpoints

    async def chat_completions(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send, "chat.completions")

    async def responses(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._serve(scope, receive, send, "responses")

    async def _serve(self, scope: Scope, receive: Receive, send: Send, api: Api) -> None:
        request = Request(scope, receive)
        record: dict[str, Any] = {
            "api": api,
            "id": None,
            "model": None,
            "messages": None,
            "max_tokens": None,
            "stream": None,
            "body": None,
            "outcome": "in_progress",
            "status": None,
            "chunks_sent": 0,
            "prompt_tokens": None,
            "completion_tokens": None,
            "reasoning_tokens": None,
            "started_at": time.time(),
            "ended_at": None,
        }
        self.request_log.append(record)
        try:
            await self._answer(request, receive, send, record, api)
        finally:
            record["ended_at"] = time.time()

    async def _answer(
        self, request: Request, receive: Receive, send: Send, record: dict[str, Any], api: Api
    ) -> None:
        raw = await request.body()
        with suppress(ValueError):
            record["body"] = json.loads(raw)
        try:
            chat = parse_responses_request(raw) if api == "responses" else parse_chat_request(raw)
        except _InvalidRequest as exc:
            record.update(outcome="invalid_request", status=exc.status)
            error = openai_error(exc.status, exc.message, param=exc.param, code=exc.code)
            await JSONResponse(error, status_code=exc.status)(request.scope, receive, send)
            return
        record.update(
            model=chat.model, messages=chat.messages, max_tokens=chat.max_tokens, stream=chat.stream
        )
        rule = self.take_matching_rule(chat.model, chat.reported_model)
        if rule is not None and rule.kind == "status":
            response = _fault_response(rule)
            record.update(outcome="fault_status", status=response.status_code)
            await response(request.scope, receive, send)
            return
        if rule is not None and rule.kind == "hang":
            await _until_disconnect(receive)
            record["outcome"] = "hung"
            return
        completion = self._complete(chat, rule, "resp_" if api == "responses" else "chatcmpl-")
        usage = completion.usage
        record.update(
            id=completion.id,
            status=200,
            prompt_tokens=usage["prompt_tokens"],
            completion_tokens=usage["completion_tokens"],
            reasoning_tokens=usage["completion_tokens_details"]["reasoning_tokens"],
        )
        if api == "responses":
            rendering = _responses_rendering(record["body"], chat, completion)
            if chat.stream:
                sending = self._send_stream(send, completion, rendering.stream_events(), record)
            else:
                sending = self._send_json(send, completion, rendering.json_body())
        elif chat.stream:
            events = completion.stream_events(chat.include_usage)
            sending = self._send_stream(send, completion, events, record)
        else:
            sending = self._send_json(send, completion, completion.json_body())
        try:
            disconnected = await _run_until_disconnect(receive, sending)
        except _InjectedCut:
            record["outcome"] = "cut"
            raise
        record["outcome"] = "client_disconnected" if disconnected else "completed"

    def _reasoning(self, chat: _ChatRequest, rule: FaultRule | None) -> tuple[int, float]:
        """Hidden tokens the request spends and the silence before its first visible token."""
        if not chat.reasoning:
            return 0, 0.0
        effort = chat.reasoning_effort or DEFAULT_REASONING_EFFORT
        tokens: int = getattr(self.config.reasoning_tokens, effort)
        silence_s = self.config.reasoning_silence_s
        if rule is not None:
            if rule.reasoning_tokens is not None:
                tokens = rule.reasoning_tokens
            if rule.reasoning_silence_s is not None:
                silence_s = rule.reasoning_silence_s
        return tokens, silence_s

    def _complete(self, chat: _ChatRequest, rule: FaultRule | None, id_prefix: str) -> _Completion:
        counter = token_counter()
        prompt_tokens = chat.prompt_tokens
        seed = messages_seed(chat.messages)
        tool_call = planned_tool_call(chat.body, seed, chat.model)
        if tool_call is None:
            length = self.config.reply_tokens or natural_reply_length(seed)
            reply = _reply(seed, length, counter.encoding(chat.model).name)
            finish_reason = "stop"
        else:
            # One output token per delta: the call's head (its name), then its arguments.
            reply = _Reply(("", *tool_call.argument_pieces), tuple(tool_call.deltas()))
            finish_reason = "tool_calls"
        reasoning_tokens, reasoning_silence_s = self._reasoning(chat, rule)
        visible_tokens = len(reply.token_texts)
        # The cap bounds reasoning + visible tokens; reached while reasoning, nothing shows.
        if chat.max_tokens is not None and chat.max_tokens < reasoning_tokens + visible_tokens:
            reasoning_tokens = min(reasoning_tokens, chat.max_tokens)
            visible_tokens = chat.max_tokens - reasoning_tokens
            finish_reason = "length"
        cached_tokens = min(rule.cached_tokens or 0, prompt_tokens) if rule else 0
        first_token_delay_s = self.config.first_token_delay_s
        chunk_interval_s = self.config.chunk_interval_s
        if rule is not None:
            if rule.first_token_delay_s is not None:
                first_token_delay_s = rule.first_token_delay_s
            if rule.chunk_interval_s is not None:
                chunk_interval_s = rule.chunk_interval_s
        return _Completion(
            id=id_prefix + secrets.token_urlsafe(21).replace("-", "x").replace("_", "y"),
            created=int(time.time()),
            reported_model=chat.reported_model,
            reply=reply,
            visible_tokens=visible_tokens,
            finish_reason=finish_reason,
            usage=_usage(
                prompt_tokens, reasoning_tokens + visible_tokens, cached_tokens, reasoning_tokens
            ),
            reasoning_silence_s=reasoning_silence_s,
            first_token_delay_s=first_token_delay_s,
            chunk_interval_s=chunk_interval_s,
            cut_after_chunks=rule.cut_after_chunks if rule and rule.kind == "cut" else None,
            tool_call=tool_call,
        )

    @staticmethod
    async def _send_stream(
        send: Send,
        completion: _Completion,
        events: tuple[bytes, list[bytes], bytes],
        record: dict[str, Any],
    ) -> None:
        role, content, ending = events
        cut_after = completion.cut_after_chunks
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        await send(_body(role))
        if completion.reasoning_silence_s:
            await asyncio.sleep(completion.reasoning_silence_s)
        delay = completion.first_token_delay_s
        for sent, event in enumerate(content):
            if sent == cut_after:
                raise _InjectedCut(f"injected cut after {sent} chunks")
            if delay:
                await asyncio.sleep(delay)
            elif sent % 64 == 63:
                await asyncio.sleep(0)  # let the disconnect watcher run during long bursts
            await send(_body(event))
            record["chunks_sent"] = sent + 1
            delay = completion.chunk_interval_s
        if cut_after is not None:
            raise _InjectedCut(f"injected cut after {len(content)} chunks")
        await send(_body(ending, more_body=False))

    @staticmethod
    async def _send_json(send: Send, completion: _Completion, body: bytes) -> None:
        generation_s = (
            completion.reasoning_silence_s
            + completion.first_token_delay_s
            + completion.chunk_interval_s * max(0, completion.visible_tokens - 1)
        )
        if generation_s:
            await asyncio.sleep(generation_s)
        await send({"type": "http.response.start", "status": 200, "headers": JSON_HEADERS})
        if completion.cut_after_chunks is not None:
            await send(_body(body[: len(body) // 2]))
            raise _InjectedCut("injected cut in a non-stream response")
        await send(_body(body, more_body=False))


def _responses_rendering(
    request: Mapping[str, Any], chat: _ChatRequest, completion: _Completion
) -> ResponseRendering:
    effort = (chat.reasoning_effort or DEFAULT_REASONING_EFFORT) if chat.reasoning else None
    return ResponseRendering(
        id=completion.id,
        created_at=completion.created,
        model=completion.reported_model,
        request=request,
        pieces=completion.reply.token_texts[: completion.visible_tokens],
        tool_call=completion.tool_call,
        incomplete=completion.finish_reason == "length",
        reasoning_effort=effort,
        chat_usage=completion.usage,
    )


class _AsgiEndpoint:
    """Lets Starlette route to a raw ASGI handler (it wraps plain functions and methods)."""

    def __init__(self, handler: ASGIApp) -> None:
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.handler(scope, receive, send)


def create_app(config: OfflineModelConfig | None = None) -> Starlette:
    model = OfflineModel(config or OfflineModelConfig())

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # Added here, not at import: uvicorn sets its loggers up before starting the app.
        cut_filter = _HideInjectedCuts()
        uvicorn_errors = logging.getLogger("uvicorn.error")
        uvicorn_errors.addFilter(cut_filter)
        # Loading an encoding takes ~0.3 s: pay it now, not in the first request's latency.
        token_counter().encoding("gpt-4o-mini")
        try:
            yield
        finally:
            uvicorn_errors.removeFilter(cut_filter)

    routes = [
        Route("/v1/chat/completions", _AsgiEndpoint(model.chat_completions), methods=["POST"]),
        Route("/v1/responses", _AsgiEndpoint(model.responses), methods=["POST"]),
        Route("/v1/models", model.list_models, methods=["GET"]),
        Route("/health", model.health, methods=["GET"]),
        Route("/_offline/faults", model.list_faults, methods=["GET"]),
        Route("/_offline/faults", model.add_faults, methods=["POST"]),
        Route("/_offline/faults", model.clear_faults, methods=["DELETE"]),
        Route("/_offline/config", model.get_config, methods=["GET"]),
        Route("/_offline/config", model.update_config, methods=["POST"]),
        Route("/_offline/requests", model.list_requests, methods=["GET"]),
        Route("/_offline/requests", model.clear_requests, methods=["DELETE"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


def _env_float(name: str) -> float | None:
    value = os.environ.get(name)
    return float(value) if value else None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="OpenAI-compatible offline model server")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9090)
    parser.add_argument("--log-level", default="warning")
    args = parser.parse_args(argv)
    reply_tokens = os.environ.get("OFFLINE_MODEL_REPLY_TOKENS")
    config = OfflineModelConfig(
        first_token_delay_s=_env_float("OFFLINE_MODEL_FIRST_TOKEN_DELAY_S") or 0.0,
        chunk_interval_s=_env_float("OFFLINE_MODEL_CHUNK_INTERVAL_S") or 0.0,
        reply_tokens=int(reply_tokens) if reply_tokens else None,
        reasoning_silence_s=_env_float("OFFLINE_MODEL_REASONING_SILENCE_S") or 0.0,
    )
    uvicorn.run(
        create_app(config),
        host=args.host,
        port=args.port,
        http="httptools",
        log_level=args.log_level,
        access_log=False,
    )


if __name__ == "__main__":
    main()
