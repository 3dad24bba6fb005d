"""OpenAI upstream: one SDK client per process, retries and fallback inside the stream's deadline.

The SDK's own retries are off (`max_retries=0`) so they cannot multiply with the model
chain into minutes: this module retries and falls back itself, with the SDK's timeouts,
error classes and Retry-After parsing semantics. The request goes out as the SDK would
send it (its URL, headers and key, its JSON) through the SDK client's own connection
pool, but is built here: the SDK's request machinery (options models, a walk of the body
against its TypedDicts, header merging) costs ~0.3 ms of CPU before the first byte, for
a body this module builds anyway. Streams are read as SSE bytes split into lines here:
one JSON parse per chunk, none of the SDK's model objects nor httpx's text and line
decoders. After `[DONE]` the response is read to its end, so its connection goes back to
the pool instead of being dropped (a new TCP + TLS handshake with OpenAI on every request
otherwise).

Reasoning models (the GPT-5 family, o-series) reject `max_tokens` and sampling parameters
and think in silence after answering 200, so the cap goes up as `max_completion_tokens`,
the gateway's sampling choices stay home, and an attempt's wait for the status line has
its own bound (`first_byte_timeout_s`): a hung model moves the chain on in seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import Any, get_args

import anyio
import httpx2
import openai
from openai import AsyncOpenAI

from tollgate.adapters.secrets import FixedSecret, RotatingSecret
from tollgate.errors import (
    UpstreamMisconfigured,
    UpstreamRejected,
    UpstreamUnavailable,
)
from tollgate.ports import Delta, Message, ToolCallDelta, UpstreamUsage
from tollgate.pricing import CapParameter

RETRIES_PER_MODEL = 1
BASE_BACKOFF_S = 0.25
MAX_BACKOFF_S = 2.0
# Below this much time left an attempt cannot produce anything useful.
MIN_ATTEMPT_S = 0.05
# After [DONE], how long to wait for the response's end so its connection can be reused.
DRAIN_TIMEOUT_S = 1.0

# The cap is the gateway's: a client's own value never reaches upstream beside it.
CAP_PARAMETERS = get_args(CapParameter)
# What OpenAI's reasoning models answer 400 to; the gateway's own choices of these stay home.
REASONING_REJECTS = frozenset(
    {"temperature", "top_p", "presence_penalty", "frequency_penalty", "logprobs", "top_logprobs"}
)
REASONING_NAME_PREFIXES = ("gpt-5", "o1", "o3", "o4")


def is_reasoning_by_name(model: str) -> bool:
    """OpenAI's naming: the GPT-5 family and the o-series reason (dated snapshots included)."""
    return model.startswith(REASONING_NAME_PREFIXES)


class UpstreamCut(Exception):
    """The upstream stream ended without finishing (connection cut, error chunk)."""


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

    def __init__(self, model: str, response: httpx2.Response, answered_at: float) -> None:
        self.model = model
        self.upstream_model: str | None = None
        self.usage: UpstreamUsage | None = None
        self.finish_reason: str | None = None
        self.answered_at = answered_at
        self._response = response

    async def deltas(self) -> AsyncIterator[Delta]:
        finished = False
        response = self._response
        # A content-encoded (compressed) body is decoded by httpx; a plain one read as it comes.
        encoded = "content-encoding" in response.headers
        chunks = response.aiter_bytes() if encoded else response.aiter_raw()
        pending = b""
        try:
            async for data in chunks:
                lines, pending = _complete_lines(pending + data)
                for line in lines:
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        finished = True
                        break
                    # Decoded as httpx decodes text: UTF-8, a malformed byte replaced.
                    chunk = json.loads(payload.decode("utf-8", "replace"))
                    for delta in self._read_chunk(chunk):
                        yield delta
                if finished:
                    break
        except (httpx2.HTTPError, ValueError) as exc:
            raise UpstreamCut(f"upstream stream broke: {exc}") from exc
        if not finished:
            raise UpstreamCut("upstream stream ended before [DONE]")
        await _drain(chunks)

    def _read_chunk(self, chunk: Any) -> list[Delta]:
        """Note what a chunk reports (model, usage, finish reason); its text and tool calls."""
        if "error" in chunk:
            raise UpstreamCut(str(chunk["error"]))
        if self.upstream_model is None:
            self.upstream_model = chunk.get("model")
        usage = chunk.get("usage")
        if usage:
            self.usage = _usage(usage)
        deltas: list[Delta] = []
        for choice in chunk.get("choices") or ():
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if content:
                deltas.append(content)
            deltas.extend(_tool_call_delta(call) for call in delta.get("tool_calls") or ())
        return deltas

    async def aclose(self) -> None:
        # Closing an unfinished response drops the connection: upstream sees the client leave.
        await self._response.aclose()


def _tool_call_delta(call: Mapping[str, Any]) -> ToolCallDelta:
    function = call.get("function") or {}
    return ToolCallDelta(
        index=int(call.get("index") or 0),
        id=call.get("id"),
        type=call.get("type"),
        name=function.get("name"),
        arguments=function.get("arguments"),
    )


def _usage(usage: Mapping[str, Any]) -> UpstreamUsage:
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return UpstreamUsage(
        input_tokens=int(usage.get("prompt_tokens") or 0),
        cached_input_tokens=int(prompt_details.get("cached_tokens") or 0),
        output_tokens=int(usage.get("completion_tokens") or 0),
        reasoning_tokens=int(completion_details.get("reasoning_tokens") or 0),
    )


def _complete_lines(buffer: bytes) -> tuple[list[bytes], bytes]:
    """The complete lines at the start of `buffer` (ended by LF, CRLF or CR), and the rest."""
    lines = buffer.splitlines(keepends=True)
    if lines and not lines[-1].endswith((b"\n", b"\r")):
        return lines, lines.pop()
    return lines, b""


async def _drain(chunks: AsyncIterator[bytes]) -> None:
    """Read what follows [DONE] (normally just the end of the body): the connection is reused."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(DRAIN_TIMEOUT_S):
            async for _ in chunks:
                pass


class OpenAIUpstream:
    """Each model is tried once and retried once (`retries_per_model`) before falling back.

    An attempt waits for upstream's status line at most `first_byte_timeout_s` (None: only
    `attempt_timeout_s` bounds it); both stop at the stream's deadline. `is_reasoning`
    says which models reason (they get `max_completion_tokens` whatever `cap_parameter`
    says, `reasoning_effort`, and none of the gateway's sampling parameters).
    """

    def __init__(
        self,
        client: AsyncOpenAI,
        *,
        attempt_timeout_s: float,
        first_byte_timeout_s: float | None = None,
        retries_per_model: int = RETRIES_PER_MODEL,
        api_key: RotatingSecret | FixedSecret | None = None,
        cap_parameter: CapParameter = "max_completion_tokens",
        is_reasoning: Callable[[str], bool] = is_reasoning_by_name,
    ) -> None:
        self._client = client.with_options(max_retries=0)
        # Built once per client (a new key makes a new client): parsed URL, encoded headers
        self._endpoint_of: AsyncOpenAI | None = None
        self._url = httpx2.URL()
        self._headers = httpx2.Headers()
        self._attempt_timeout_s = attempt_timeout_s
        self._first_byte_timeout_s = first_byte_timeout_s
        self._retries_per_model = retries_per_model
        self._api_key = api_key
        self._cap_parameter = cap_parameter
        self._is_reasoning = is_reasoning

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
        reasoning_effort: str | None = None,
        sampling: Mapping[str, Any] | None = None,
    ) -> tuple[OpenAIStream, list[str]]:
        tried: list[str] = []
        client = await self._current_client()  # no key: refused before anything is sent
        last_error = "no model was tried"
        retry_hint: float | None = None
        for model in models:
            tried.append(model)
            body = self._request_body(
                model,
                messages,
                max_tokens=max_tokens,
                extra=extra,
                reasoning_effort=reasoning_effort,
                sampling=sampling,
            )
            for attempt in range(self._retries_per_model + 1):
                remaining = deadline - time.monotonic()
                if remaining < MIN_ATTEMPT_S:
                    raise UpstreamUnavailable(
                        f"upstream did not answer in time ({last_error})",
                        retry_after=5,
                        models_tried=tried,
                    )
                try:
                    stream = await self._attempt(client, model, body, remaining)
                    return stream, tried
                except openai.APIStatusError as exc:
                    status = exc.status_code
                    if status == 400 or (
                        400 <= status < 500 and status not in (401, 403, 404, 429)
                    ):
                        raise UpstreamRejected(_error_message(exc), models_tried=tried) from exc
                    if status in (401, 403, 404):
                        if status == 401 and self._api_key is not None:
                            self._api_key.expire()  # rotated? read it again next time
                        raise UpstreamMisconfigured(
                            f"upstream refused the gateway's call for {model} ({status})",
                            models_tried=tried,
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
        raise UpstreamUnavailable(
            f"every model in the chain failed (last: {last_error})",
            retry_after=max(1, round(retry_hint or 5)),
            models_tried=tried,
        )

    def _request_body(
        self,
        model: str,
        messages: list[Message],
        *,
        max_tokens: int,
        extra: Mapping[str, Any] | None = None,
        reasoning_effort: str | None = None,
        sampling: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """The JSON body for `model`, except `model` and `stream` (the SDK sets those)."""
        reasoning = self._is_reasoning(model)
        body = {
            key: value
            for key, value in (extra or {}).items()
            if key not in ("model", "stream", *CAP_PARAMETERS)
        }
        if sampling:
            body.update(
                (key, value)
                for key, value in sampling.items()
                if not (reasoning and key in REASONING_REJECTS)
            )
        if reasoning and reasoning_effort is not None:
            body["reasoning_effort"] = reasoning_effort
        cap_parameter = "max_completion_tokens" if reasoning else self._cap_parameter
        body.update(
            messages=messages,
            stream_options={"include_usage": True},
            **{cap_parameter: max_tokens},
        )
        return body

    @staticmethod
    def _backoff(attempt: int) -> float:
        ceiling: float = min(MAX_BACKOFF_S, BASE_BACKOFF_S * 2**attempt)
        return ceiling * (0.5 + random.random() / 2)

    def _endpoint(self, client: AsyncOpenAI) -> tuple[httpx2.URL, httpx2.Headers]:
        """The chat completions URL and the SDK's headers for `client` (its key included)."""
        if self._endpoint_of is not client:
            base = client.base_url
            headers = httpx2.Headers(
                {
                    name: value
                    for name, value in client.default_headers.items()
                    if isinstance(value, str)
                }
            )
            headers.update(client.auth_headers)
            headers["x-stainless-retry-count"] = "0"
            url = base.copy_with(raw_path=base.raw_path + b"chat/completions")
            self._endpoint_of, self._url, self._headers = client, url, headers
        return self._url, self._headers

    async def _attempt(
        self, client: AsyncOpenAI, model: str, body: dict[str, Any], remaining: float
    ) -> OpenAIStream:
        """One request, sent as the SDK would send it, through the SDK's own connection pool:
        the SDK's request building (its options models, TypedDict transform, header merging)
        is ~0.3 ms of CPU before the first byte, for a body that is built here anyway.
        Failures are raised as the SDK raises them (APIStatusError, APITimeoutError,
        APIConnectionError)."""
        timeout = min(self._attempt_timeout_s, remaining)
        first_byte_timeout = min(self._first_byte_timeout_s or timeout, timeout)
        url, headers = self._endpoint(client)
        headers = headers.copy()
        headers["x-stainless-read-timeout"] = str(float(timeout))
        http = client._client
        request = http.build_request(
            "POST",
            url,
            content=_json_bytes(
                {"model": model, "messages": body["messages"], "stream": True, **body}
            ),
            headers=headers,
            timeout=httpx2.Timeout(timeout),
        )
        # Sending returns once the status line and headers are in: before a reasoning
        # model's silence, which the stream's own reads (each bounded by `timeout`) sit out.
        answer_by = asyncio.get_running_loop().time() + first_byte_timeout
        try:
            async with asyncio.timeout_at(answer_by):
                response = await http.send(request, stream=True)
        except httpx2.TimeoutException as exc:
            raise openai.APITimeoutError(request=request) from exc
        except (httpx2.RequestError, ssl.SSLError, anyio.EndOfStream) as exc:
            raise openai.APIConnectionError(request=request) from exc
        if not response.is_success:
            try:
                async with asyncio.timeout_at(answer_by):
                    await response.aread()
            finally:
                await response.aclose()
            raise _status_error(response)
        return OpenAIStream(model, response, answered_at=time.monotonic())


def _json_bytes(body: Mapping[str, Any]) -> bytes:
    """The SDK's JSON encoding of a request body."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _status_error(response: httpx2.Response) -> openai.APIStatusError:
    """What the SDK raises for a status that is not 2xx: its message and the body's `error`."""
    message = f"Error code: {response.status_code}"
    try:
        body: Any = json.loads(response.text)
    except ValueError:
        body = response.text.strip()
    error = body.get("error", body) if isinstance(body, dict) else body
    detail = error.get("message") if isinstance(error, dict) else None
    if isinstance(detail, str) and detail:
        message += f" - {detail}"
    return openai.APIStatusError(message, response=response, body=error)
