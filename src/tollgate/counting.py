"""Prompt token counts: exact, or byte-length upper bounds while the encodings load.

A cold instance does not make its first requests wait for tiktoken (~0.3 s of CPU per
encoding): it counts with upper bounds (every token is at least one byte) and settles
to what upstream reports. A request that a bound would refuse is never refused on a
bound: `PromptCounter.attempt` runs it again on exact counts.

Counts are taken for every model the request may reach, in each one's encoding, and the
largest wins: a fallback to a model with a less efficient tokenizer is still covered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from tollgate.errors import GatewayError
from tollgate.ports import Message, TokenCounter

T = TypeVar("T")
# tiktoken's chat format: every message is framed by 3 tokens (4 with a name), and the
# reply is primed with 3 more.
MESSAGE_FRAMING_BOUND = 4
REPLY_PRIMING = 3


class RecountExactly(Exception):
    """A refusal decided on upper bounds: the request is tried again on exact counts."""


def utf8_bound(text: str) -> int:
    """At least the text's token count in any encoding: every token is one byte or more."""
    return len(text.encode("utf-8"))


def messages_bound(messages: Iterable[Message]) -> int:
    """At least count_messages() in any encoding: each string's bytes plus the framing."""
    return REPLY_PRIMING + sum(
        MESSAGE_FRAMING_BOUND
        + sum(utf8_bound(value) for value in message.values() if isinstance(value, str))
        for message in messages
    )


@dataclass(frozen=True, slots=True)
class Counts:
    """The counting mode of one attempt at a request."""

    exact: bool
    _tokens: TokenCounter

    def text(self, models: Sequence[str], text: str) -> int:
        if not self.exact:
            return utf8_bound(text)
        return max(
            self._tokens.count_text(model, text) for model in _by_encoding(self._tokens, models)
        )

    def messages(self, models: Sequence[str], messages: list[Message]) -> int:
        if not self.exact:
            return messages_bound(messages)
        return max(
            self._tokens.count_messages(model, messages)
            for model in _by_encoding(self._tokens, models)
        )

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
    def __init__(self, tokens: TokenCounter, models: Sequence[str], *, lazy_encoding: bool) -> None:
        """`models`: every model this process may count for; `lazy_encoding`: start on bounds."""
        self.tokens = tokens
        self._models = _by_encoding(tokens, models)
        self._lazy = lazy_encoding
        self._warming: asyncio.Future[None] | None = None
        self._system_tokens: dict[tuple[tuple[str, ...], str], int] = {}

    def ready(self) -> bool:
        if self._warming is not None:
            return self._warming.done()
        return not self._lazy or all(self.tokens.is_loaded(model) for model in self._models)

    def counts(self) -> Counts:
        return Counts(self.ready(), self.tokens)

    async def loaded(self) -> None:
        """Wait until exact counts are cheap: the encodings load in a thread, once."""
        if self.ready():
            return
        if self._warming is None:
            self._warming = asyncio.ensure_future(asyncio.to_thread(self._load_all))
        await asyncio.shield(self._warming)

    def _load_all(self) -> None:
        for model in self._models:
            self.tokens.count_text(model, "warm")

    async def attempt(self, run: Callable[[Counts], Awaitable[T]]) -> T:
        """Run a request's checks on the counts at hand; a refusal on bounds runs it exactly."""
        try:
            return await run(self.counts())
        except RecountExactly:
            await self.loaded()
            return await run(Counts(True, self.tokens))

    def system_prompt(self, counts: Counts, models: Sequence[str], name: str, text: str) -> int:
        """A system prompt's tokens, cached per prompt once exact."""
        if not counts.exact:
            return utf8_bound(text)
        key = (tuple(models), name)
        if key not in self._system_tokens:
            self._system_tokens[key] = counts.text(models, text)
        return self._system_tokens[key]
