"""The response cache's rules: what a first question is looked up by, what may be kept.

A `/chat` request that starts a conversation is keyed by the prompt (name and text),
the message with its whitespace normalised, the first model of the chain and the
effective cap; `/v1/chat/completions` (only with `X-Tollgate-Cache: on`) by its
canonical body without `stream`, `stream_options` and `user`. With `CACHE_SCOPE=user`
the user id is part of the key. Only a reply that completed normally (`finish_reason`
`stop`) and fits in `MAX_ENTRY_BYTES` is kept. No I/O here: the store is a ReplyCache.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any, Literal

from tollgate.ports import CachedReply, ReplyCache

CACHE_HEADER = "x-tollgate-cache"
CACHE_HEADER_HIT = "hit"
# A reply whose stored form is larger is simply not cached (a DynamoDB item holds 400 KB).
MAX_ENTRY_BYTES = 100_000
# Request fields that do not change the reply: left out of a /v1 key.
COMPLETION_FIELDS_NOT_KEYED = frozenset({"stream", "stream_options", "user"})
KEY_VERSION = 1
REPLAY_WORDS_PER_CHUNK = 4
_WORDS = re.compile(r"\s*\S+")

CacheScope = Literal["global", "user"]


def normalise_message(message: str) -> str:
    """Leading and trailing whitespace removed, every run of whitespace one space."""
    return " ".join(message.split())


def chat_wants_cache(header: str | None) -> bool:
    """/chat uses the cache unless the request says `X-Tollgate-Cache: off`."""
    return (header or "").strip().lower() != "off"


def completion_wants_cache(header: str | None) -> bool:
    """/v1/chat/completions uses the cache only when the request says `X-Tollgate-Cache: on`."""
    return (header or "").strip().lower() == "on"


def _digest(parts: Mapping[str, Any]) -> str:
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()


@dataclass(frozen=True, slots=True)
class CachePolicy:
    ttl_s: int
    scope: CacheScope = "global"

    @property
    def enabled(self) -> bool:
        return self.ttl_s > 0

    def _owner(self, user_id: str) -> str | None:
        return user_id if self.scope == "user" else None

    def chat_key(
        self,
        *,
        user_id: str,
        prompt_name: str,
        prompt_text: str,
        message: str,
        model: str,
        cap: int,
    ) -> str:
        return _digest(
            {
                "v": KEY_VERSION,
                "kind": "chat",
                "prompt": prompt_name,
                "prompt_text": prompt_text,
                "message": normalise_message(message),
                "model": model,
                "cap": cap,
                "user": self._owner(user_id),
            }
        )

    def completion_key(self, *, user_id: str, body: Mapping[str, Any]) -> str:
        keyed = {k: v for k, v in body.items() if k not in COMPLETION_FIELDS_NOT_KEYED}
        return _digest(
            {"v": KEY_VERSION, "kind": "completion", "body": keyed, "user": self._owner(user_id)}
        )

    def entry(self, text: str, model: str, cost_micros: int, now: datetime) -> CachedReply | None:
        """The entry to store for a reply, None when it is too large to keep."""
        reply = CachedReply(
            text=text,
            model=model,
            cost_micros=cost_micros,
            expires_at=int(now.timestamp()) + self.ttl_s,
        )
        return reply if fits(reply) else None


CACHE_OFF = CachePolicy(ttl_s=0)


def fits(reply: CachedReply) -> bool:
    serialised = json.dumps(asdict(reply), separators=(",", ":"), ensure_ascii=False)
    return len(serialised.encode("utf-8", "surrogatepass")) <= MAX_ENTRY_BYTES


def storable(outcome: str, finish_reason: str | None, text: str) -> bool:
    """Only a reply that completed normally: not cut by the cap, a cancel, a timeout, an error."""
    return outcome == "completed" and finish_reason == "stop" and bool(text)


def replay_chunks(text: str, words: int = REPLAY_WORDS_PER_CHUNK) -> list[str]:
    """A stored reply as deltas of a few words each; joined, they are the text exactly."""
    pieces = _WORDS.findall(text)
    chunks = ["".join(pieces[i : i + words]) for i in range(0, len(pieces), words)]
    tail = text[sum(len(chunk) for chunk in chunks) :]
    if tail:
        if chunks:
            chunks[-1] += tail
        else:
            chunks.append(tail)
    return chunks


class ReplyKeeper:
    """Offers one request's reply to the cache once its stream has ended."""

    def __init__(
        self,
        cache: ReplyCache,
        policy: CachePolicy,
        key: str,
        *,
        clock: Callable[[], datetime],
        on_error: Callable[[Exception], None],
    ) -> None:
        self._cache = cache
        self._policy = policy
        self._key = key
        self._clock = clock
        self._on_error = on_error

    async def offer(
        self, outcome: str, finish_reason: str | None, text: str, model: str, cost_micros: int
    ) -> bool:
        """Store the reply when it may be kept; True when it was stored."""
        if not storable(outcome, finish_reason, text):
            return False
        entry = self._policy.entry(text, model, cost_micros, self._clock())
        if entry is None:
            return False
        try:
            await self._cache.put(self._key, entry)
        except Exception as exc:  # a reply not cached is only a later miss
            self._on_error(exc)
            return False
        return True


class ResponseCache:
    """The cache as a chat request uses it: a lookup (any error is a miss) and a keeper per
    key. Without a store (the cache off) it finds nothing and keeps nothing."""

    def __init__(
        self,
        replies: ReplyCache | None,
        policy: CachePolicy,
        *,
        clock: Callable[[], datetime],
        warn: Callable[[str, Exception], None],
    ) -> None:
        self._replies = replies
        self._policy = policy
        self._clock = clock
        self._warn = warn

    @property
    def enabled(self) -> bool:
        return self._replies is not None

    async def lookup(self, key: str | None) -> CachedReply | None:
        if key is None or self._replies is None:
            return None
        try:
            return await self._replies.get(key, int(self._clock().timestamp()))
        except Exception as exc:  # an unreadable cache is a miss
            self._warn("cache_lookup_failed", exc)
            return None

    def keeper(self, key: str | None) -> ReplyKeeper | None:
        if key is None or self._replies is None:
            return None
        return ReplyKeeper(
            self._replies,
            self._policy,
            key,
            clock=self._clock,
            on_error=lambda exc: self._warn("cache_store_failed", exc),
        )
