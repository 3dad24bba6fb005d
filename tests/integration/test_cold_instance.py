"""A cold instance does not make the first requests wait for the encoding to load.

While the encoding loads, a request reserves byte-length upper bounds of its prompt
(every token is at least one byte) and settles to what upstream reports; a request
that such a bound would refuse waits for the encoding and is decided on exact counts.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest

from tests.gateway_fixture import parse_sse

pytestmark = pytest.mark.integration


class EncodingGate:
    """Stands in for the start-up load of the encoding: done when the test opens it."""

    def __init__(self) -> None:
        self._opened = threading.Event()

    def done(self) -> bool:
        return self._opened.is_set()

    def open(self) -> None:
        self._opened.set()

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._wait().__await__()

    async def _wait(self) -> int:
        await asyncio.to_thread(self._opened.wait)
        return 0


def usage_of(response) -> dict:
    return next(json.loads(data) for name, data in parse_sse(response.text) if name == "usage")


def test_first_request_reserves_a_byte_bound_and_settles_exactly(gateway, offline_model) -> None:
    # Given an instance whose encoding is still loading
    gate = EncodingGate()
    gateway.service.counter._loading["o200k_base"] = gate
    offline_model.set_config(reply_tokens=30, chunk_interval_s=0.02)

    # When a request arrives, Then it streams without waiting for the encoding
    with gateway.http.stream(
        "POST", "/chat", json={"message": "Hello there, how are you?"}, headers=gateway.headers()
    ) as response:
        lines = response.iter_lines()
        next(line for line in lines if line.startswith('data: {"delta"'))
        in_flight = gateway.usage()["tokens_used"]
        gate.open()
        body = "\n".join(lines) + "\n"

    # And it held a bound at least as large as the real charge, then settled to the latter
    usage = next(json.loads(d) for n, d in parse_sse(body) if n == "usage")
    charged = usage["input_tokens"] + usage["output_tokens"]
    upstream = offline_model.ended_requests()[0]
    assert usage["input_tokens"] == upstream["prompt_tokens"]
    assert in_flight >= charged
    assert gateway.usage()["tokens_used"] == charged
    assert gateway.wait_for_records(1)[0]["outcome"] == "completed"


def test_a_refusal_on_a_byte_bound_waits_for_exact_counts(gateway_factory, offline_model) -> None:
    # Given a budget that the byte bound of a multi-byte message would pass, but not its tokens
    message = "東京の天気" * 60  # 900 bytes, far fewer tokens
    with gateway_factory(daily_token_limit=700, max_output_tokens=20) as gateway:
        gate = EncodingGate()
        gateway.service.counter._loading["o200k_base"] = gate
        threading.Timer(0.3, gate.open).start()

        # When it arrives before the encoding loaded
        started = time.monotonic()
        response = gateway.chat(message)
        elapsed = time.monotonic() - started
        records = gateway.wait_for_records(1)

    # Then it waited for the encoding and was admitted on exact counts, refused nowhere
    assert response.status_code == 200, response.text
    assert elapsed >= 0.25
    assert [r["outcome"] for r in records] == ["completed"]
    assert usage_of(response)["budget"]["tokens_used"] <= 700


def test_a_real_refusal_is_decided_on_exact_counts(gateway_factory, offline_model) -> None:
    # Given a budget too small for the request however it is counted
    with gateway_factory(daily_token_limit=30) as gateway:
        gate = EncodingGate()
        gateway.service.counter._loading["o200k_base"] = gate
        threading.Timer(0.2, gate.open).start()

        response = gateway.chat("Hello")
        records = gateway.wait_for_records(1)

    # Then it is refused once, with one cost record, and upstream never called
    assert response.status_code == 429
    assert [r["outcome"] for r in records] == ["budget_refused"]
    assert offline_model.requests() == []
