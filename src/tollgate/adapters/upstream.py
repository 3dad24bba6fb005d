"""OpenAI upstream: one SDK client per process, retries and fallback inside the stream's deadline.

The SDK's own retries are off (`max_retries=0`) so they cannot multiply with the model
chain into minutes: this module retries and falls back itself, with the SDK's timeouts,
error classes and Retry-After parsing semantics. Streams are read as raw SSE lines
(`with_streaming_response`): parsing JSON per chunk costs a fraction of building the
SDK's model object per chunk. The body is passed as `extra_body` so the SDK does not walk
it against its TypedDicts (its `transform` step: ~0.5 ms of CPU per request for nothing
here, since plain string messages come out unchanged). After `[DONE]` the response is
read to its end, so its connection goes back to the pool instead of being dropped (a new
TCP + TLS handshake with OpenAI on every request otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from typing import Any

import httpx2
import openai
from openai import AsyncOpenAI

from tollgate.adapters.secrets import FixedSecret, RotatingSecret
from tollgate.errors import (
    GatewayError,
    UpstreamMisconfigured,
    UpstreamRejected,
    UpstreamUnavailable,
)
from tollgate.ports import Message, UpstreamUsage

RETRIES_PER_MODEL = 1
BASE_BACKOFF_S = 0.25
MAX_BACKOFF_S = 2.0
# Below this much time left an attempt cannot produce anything useful.
MIN_ATTEMPT_S = 0.05
# After [DONE], how long to wait for the response's end so its connection can be reused.
DRAIN_TIMEOUT_S = 1.0


class UpstreamCut(Exception):
    """The upstream stream ended without finishing (connection cut, error chunk)."""


def _with_models(error: GatewayError, models_tried: list[str]) -> GatewayError:
    error.models_tried = list(models_tried)  # type: ignore[attr-defined]
    return error


def retry_after_s(headers: httpx2.Headers | None) -> float | None:
    if headers is None:
        return None
    value = headers.get("retry-after-ms")
    if value:
        try:
            return float(value) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return None


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
    return str(exc.message)


class OpenAIStream:
    """A 200 response from upstream, read line by line."""

    def __init__(self, model: str, response: Any) -> None:
        self.model = model
        self.upstream_model: str | None = None
        self.usage: UpstreamUsage | None = None
        self.finish_reason: str | None = None
        self._response = response

    async def deltas(self) -> AsyncIterator[str]:
        finished = False
        lines = self._response.iter_lines()
        try:
            async for line in lines:
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    finished = True
                    break
                chunk = json.loads(payload)
                if "error" in chunk:
                    raise UpstreamCut(str(chunk["error"]))
                if self.upstream_model is None:
                    self.upstream_model = chunk.get("model")
                usage = chunk.get("usage")
                if usage:
                    details = usage.get("prompt_tokens_details") or {}
                    self.usage = UpstreamUsage(
                        input_tokens=int(usage.get("prompt_tokens") or 0),
                        cached_input_tokens=int(details.get("cached_tokens") or 0),
                        output_tokens=int(usage.get("completion_tokens") or 0),
                    )
                for choice in chunk.get("choices") or ():
                    if choice.get("finish_reason"):
                        self.finish_reason = choice["finish_reason"]
                    content = (choice.get("delta") or {}).get("content")
                    if content:
                        yield content
        except (httpx2.HTTPError, openai.APIError, ValueError) as exc:
            raise UpstreamCut(f"upstream stream broke: {exc}") from exc
        if not finished:
            raise UpstreamCut("upstream stream ended before [DONE]")
        await _drain(lines)

    async def aclose(self) -> None:
        # Closing an unfinished response drops the connection: upstream sees the client leave.
        await self._response.close()


async def _drain(lines: AsyncIterator[str]) -> None:
    """Read what follows [DONE] (normally just the end of the body): the connection is reused."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in lines:
                pass


class OpenAIUpstream:
    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        attempt_timeout_s: float,
        retries_per_model: int = RETRIES_PER_MODEL,
        api_key: RotatingSecret | FixedSecret | None = None,
    ) -> None:
        self._client = client.with_options(max_retries=0)
        self._attempt_timeout_s = attempt_timeout_s
        self._retries_per_model = retries_per_model
        self._api_key = api_key

    async def _current_client(self) -> AsyncOpenAI:
        """The client with the current key; without one, nothing is sent upstream."""
        if self._api_key is not None:
            key = await self._api_key.current()
            if not key:
                raise UpstreamMisconfigured(
                    "the gateway has no OpenAI API key (OPENAI_API_KEY is empty, or its secret "
                    "is not filled yet)"
                )
            if key != self._client.api_key:
                self._client = self._client.with_options(api_key=key)
        return self._client

    async def open_stream(
        self,
        models: list[str],
        messages: list[Message],
        *,
        max_tokens: int,
        deadline: float,
        extra: dict[str, Any] | None = None,
    ) -> tuple[OpenAIStream, list[str]]:
        tried: list[str] = []
        client = await self._current_client()  # no key: refused before anything is sent
        last_error = "no model was tried"
        retry_hint: float | None = None
        for model in models:
            tried.append(model)
            for attempt in range(self._retries_per_model + 1):
                remaining = deadline - time.monotonic()
                if remaining < MIN_ATTEMPT_S:
                    raise _with_models(
                        UpstreamUnavailable(
                            f"upstream did not answer in time ({last_error})", retry_after=5
                        ),
                        tried,
                    )
                try:
                    stream = await self._attempt(
                        client, model, messages, max_tokens, remaining, extra
                    )
                    return stream, tried
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    if status == 400 or (
                        400 <= status < 500 and status not in (401, 403, 404, 429)
                    ):
                        raise _with_models(UpstreamRejected(_error_message(exc)), tried) from exc
                    if status in (401, 403, 404):
                        if status == 401 and self._api_key is not None:
                            self._api_key.expire()  # rotated? read it again next time
                        raise _with_models(
                            UpstreamMisconfigured(
                                f"upstream refused the gateway's call for {model} ({status})"
                            ),
                            tried,
                        ) from exc
                    last_error = f"{model}: HTTP {status}"
                    wait = retry_after_s(exc.response.headers)
                except (openai.APITimeoutError, openai.APIConnectionError, TimeoutError) as exc:
                    last_error = f"{model}: {type(exc).__name__}"
                    wait = None
                if wait is not None:
                    retry_hint = wait if retry_hint is None else min(retry_hint, wait)
                if attempt == self._retries_per_model:
                    break
                delay = wait if wait is not None else self._backoff(attempt)
                # A wait longer than the time left goes to the next model at once.
                if delay > min(MAX_BACKOFF_S * 4, deadline - time.monotonic() - MIN_ATTEMPT_S):
                    break
                await asyncio.sleep(delay)
        raise _with_models(
            UpstreamUnavailable(
                f"every model in the chain failed (last: {last_error})",
                retry_after=max(1, round(retry_hint or 5)),
            ),
            tried,
        )

    @staticmethod
    def _backoff(attempt: int) -> float:
        ceiling: float = min(MAX_BACKOFF_S, BASE_BACKOFF_S * 2**attempt)
        return ceiling * (0.5 + random.random() / 2)

    async def _attempt(
        self,
        client: AsyncOpenAI,
        model: str,
        messages: list[Message],
        max_tokens: int,
        remaining: float,
        extra: dict[str, Any] | None,
    ) -> OpenAIStream:
        timeout = min(self._attempt_timeout_s, remaining)
        # model and stream are the SDK's to set: extra_body would override them
        body = {k: v for k, v in (extra or {}).items() if k not in ("model", "stream")}
        # `max_tokens` (not its newer alias) is the cap every OpenAI-compatible server honours.
        body.update(
            messages=messages,
            max_tokens=max_tokens,
            stream_options={"include_usage": True},
        )
        # `messages=[]` is replaced by extra_body's: the SDK's per-request transform of the
        # typed params (a recursive walk of every message) is skipped, the wire body is the same.
        context = client.chat.completions.with_streaming_response.create(
            model=model, messages=[], stream=True, extra_body=body, timeout=timeout
        )
        async with asyncio.timeout(timeout):
            response = await context.__aenter__()
        return OpenAIStream(model, response)
