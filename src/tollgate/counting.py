"""Prompt token counts: exact, or byte-length upper bounds while an encoding is not loaded.

A cold instance does not make its first requests wait for tiktoken (~0.3 s of CPU per
encoding): it counts with upper bounds (every token is at least one byte) and settles
to what upstream reports. A request that a bound would refuse is never refused on a
bound: `PromptCounter.attempt` runs it again on exact counts.

Counts are taken for every model the request may reach, in each one's encoding, and the
largest wins: a fallback to a model with a less efficient tokenizer is still covered. A
fallback model's encoding (tens of MB) is loaded only when a count must be exact; until
then its byte bound stands in, which over-holds and settles to what upstream reports.

Messages that are not plain strings (/v1: lists of content parts, assistant `tool_calls`,
`tool` results) are counted as text: text parts joined, anything structured as its JSON,
plus a per-part and per-call allowance for the framing OpenAI puts around them. Image
parts are not text: each reserves the model table's upper bound (tollgate.chat). Tool
definitions (and a `response_format` schema) are injected into the prompt by upstream in
its own rendering; their compact JSON is longer than that rendering (every key quoted,
every brace spelled), and a per-definition allowance covers the wrapping around it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from tollgate.errors import GatewayError
from tollgate.ports import Message, TokenCounter
from tollgate.pricing import PriceTable

T = TypeVar("T")
# tiktoken's chat format: every message is framed by 3 tokens (4 with a name), and the
# reply is primed with 3 more.
MESSAGE_FRAMING_BOUND = 4
REPLY_PRIMING = 3


# Upper bounds of the framing around structured prompt pieces (tokens).
CONTENT_PART_FRAMING_BOUND = 2  # a text part's boundary when parts are joined
TOOL_CALL_FRAMING_BOUND = 16  # an assistant tool call around its name and arguments
TOOL_DEFINITION_FRAMING_BOUND = 16  # one tool's wrapping (namespace, type line, braces)
TOOLS_FRAMING_BOUND = 32  # the tools section's header and its system-message framing


class RecountExactly(Exception):
    """A refusal decided on upper bounds: the request is tried again on exact counts."""


def utf8_bound(text: str) -> int:
    """At least the text's token count in any encoding: every token is one byte or more."""
    return len(text.encode("utf-8"))


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def countable(message: Message) -> dict[str, str]:
    """The message as strings only, what a TokenCounter counts: text parts joined (image
    parts left out, they are bounded apart), structured fields as their JSON."""
    flat: dict[str, str] = {}
    for key, value in message.items():
        if value is None:
            continue
        if isinstance(value, str):
            flat[key] = value
        elif key == "content" and isinstance(value, list):
            flat[key] = "".join(
                str(part.get("text") or part.get("refusal") or "")
                for part in value
                if isinstance(part, dict) and part.get("type") in ("text", "refusal")
            )
        else:
            flat[key] = _compact_json(value)
    return flat


def structure_allowance(messages: Iterable[Message]) -> int:
    """Framing tokens of content parts and tool calls beyond what their text counts."""
    total = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            total += CONTENT_PART_FRAMING_BOUND * len(content)
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            total += TOOL_CALL_FRAMING_BOUND * len(calls)
    return total


def image_details(messages: Iterable[Message]) -> list[str]:
    """The `detail` of every image part of the messages (`auto` when not given)."""
    details = []
    for message in messages:
        content = message.get("content")
        if not isinstance(content, list):
            continue
        for part in content:
            if isinstance(part, dict) and part.get("type") == "image_url":
                image = part.get("image_url")
                detail = image.get("detail") if isinstance(image, dict) else None
                details.append(detail if isinstance(detail, str) else "auto")
    return details


def definitions_text(tools: list[Any] | None, response_format: Any) -> tuple[str, int]:
    """The tool definitions and response schema as counted text, and their framing bound."""
    pieces: list[Any] = list(tools or [])
    if isinstance(response_format, dict) and response_format.get("type") != "text":
        pieces.append(response_format)
    if not pieces:
        return "", 0
    framing = TOOLS_FRAMING_BOUND + TOOL_DEFINITION_FRAMING_BOUND * len(pieces)
    return "".join(_compact_json(piece) for piece in pieces), framing


def messages_bound(messages: Iterable[Message]) -> int:
    """At least count_messages() in any encoding: each string's bytes plus the framing."""
    listed = list(messages)
    return (
        REPLY_PRIMING
        + structure_allowance(listed)
        + sum(
            MESSAGE_FRAMING_BOUND + sum(utf8_bound(value) for value in countable(message).values())
            for message in listed
        )
    )


class Counts:
    """The counts of one attempt at a request.

    With `exact`, each model's encoding counts exactly once it is loaded; an encoding not
    loaded yet (a fallback model's, which a process loads only when it must) counts with
    byte bounds instead. Without, everything is a byte bound (a cold instance). `exact`
    stays true only while no bound was used: a refusal decided on a bound is retried.
    """

    __slots__ = ("_tokens", "_use_encodings", "exact")

    def __init__(self, exact: bool, tokens: TokenCounter) -> None:
        self._tokens = tokens
        self._use_encodings = exact
        self.exact = exact

    def _largest(self, models: Sequence[str], exact: Callable[[str], int], bound: int) -> int:
        if not self._use_encodings:
            return bound
        largest = 0
        for model in _by_encoding(self._tokens, models):
            if self._tokens.is_loaded(model):
                largest = max(largest, exact(model))
            else:
                self.exact = False
                largest = max(largest, bound)
        return largest

    def text(self, models: Sequence[str], text: str) -> int:
        return self._largest(
            models, lambda model: self._tokens.count_text(model, text), utf8_bound(text)
        )

    def messages(self, models: Sequence[str], messages: list[Message]) -> int:
        """The messages' prompt tokens (images apart): content parts and tool calls included."""
        if not self._use_encodings:
            return messages_bound(messages)
        flat = [countable(message) for message in messages]
        return structure_allowance(messages) + self._largest(
            models,
            lambda model: self._tokens.count_messages(model, flat),
            messages_bound(messages) - structure_allowance(messages),
        )

    def definitions(
        self, models: Sequence[str], tools: list[Any] | None, response_format: Any
    ) -> int:
        """An upper bound of the prompt tokens upstream injects for tools and a response schema."""
        text, framing = definitions_text(tools, response_format)
        return framing + self.text(models, text) if text else 0

    def refuse(self, error: GatewayError) -> Exception:
        """What to raise for a refusal: the error itself only when the counts were exact."""
        return error if self.exact else RecountExactly()


def _by_encoding(tokens: TokenCounter, models: Sequence[str]) -> list[str]:
    """One model per distinct encoding, in chain order."""
    seen: dict[str, str] = {}
    for model in models:
        seen.setdefault(tokens.encoding_name(model), model)
    return list(seen.values())


class PromptCounter:
    """Loads encodings off the event loop, each when first needed: the first model's after a
    cold instance's first reply, a fallback model's only when a count must be exact."""

    def __init__(self, tokens: TokenCounter, models: Sequence[str], *, lazy_encoding: bool) -> None:
        """`models`: every model this process may count for; `lazy_encoding`: start on bounds."""
        self.tokens = tokens
        self._models = _by_encoding(tokens, models)
        self._lazy = lazy_encoding
        self._loading: dict[str, asyncio.Future[int]] = {}
        self._system_tokens: dict[tuple[tuple[str, ...], str], int] = {}

    def ready(self) -> bool:
        """Whether the first model's encoding counts without a wait."""
        loading = self._loading.get(self.tokens.encoding_name(self._models[0]))
        if loading is not None:
            return loading.done()
        return not self._lazy or self.tokens.is_loaded(self._models[0])

    def counts(self) -> Counts:
        return Counts(self.ready(), self.tokens)

    async def loaded(self, model: str | None = None) -> None:
        """Wait until `model`'s encoding (None: every encoding) is loaded, in a thread, once."""
        models = self._models if model is None else [model]
        waiting = []
        for name in models:
            encoding = self.tokens.encoding_name(name)
            if encoding not in self._loading:
                if self.tokens.is_loaded(name):
                    continue
                self._loading[encoding] = asyncio.ensure_future(
                    asyncio.to_thread(self.tokens.count_text, name, "warm")
                )
            waiting.append(self._loading[encoding])
        if waiting:
            await asyncio.shield(asyncio.gather(*waiting))

    async def attempt(self, run: Callable[[Counts], Awaitable[T]]) -> T:
        """Run a request's checks on the counts at hand; a refusal on bounds runs it exactly."""
        try:
            return await run(self.counts())
        except RecountExactly:
            await self.loaded()
            return await run(Counts(True, self.tokens))

    def system_prompt(self, counts: Counts, models: Sequence[str], name: str, text: str) -> int:
        """A system prompt's tokens, cached per prompt once counted exactly."""
        key = (tuple(models), name)
        cached = self._system_tokens.get(key)
        if cached is not None:
            return cached
        probe = Counts(counts.exact, self.tokens)
        tokens = probe.text(models, text)
        if probe.exact:
            self._system_tokens[key] = tokens
        else:
            counts.exact = False
        return tokens


@dataclass(frozen=True, slots=True)
class CompletionPrompt:
    """A /v1 prompt's upper bound in its parts (tokens)."""

    messages: int  # the messages' text, tool calls and results included
    definitions: int  # tool definitions and a response schema
    images: int  # each image at the most it may cost on any model the request may reach

    @property
    def text(self) -> int:
        """What the input limit applies to: images are not text."""
        return self.messages + self.definitions

    @property
    def beside_messages(self) -> int:
        return self.definitions + self.images

    @property
    def bound(self) -> int:
        return self.messages + self.definitions + self.images


def completion_prompt(
    counts: Counts,
    prices: PriceTable,
    models: Sequence[str],
    messages: list[Message],
    tools: list[Any] | None,
    response_format: Any,
) -> CompletionPrompt:
    images = sum(
        max(prices.image_token_bound(model, detail) or 0 for model in models)
        for detail in image_details(messages)
    )
    return CompletionPrompt(
        counts.messages(models, messages),
        counts.definitions(models, tools, response_format),
        images,
    )
