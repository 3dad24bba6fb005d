"""Faults a hostile or unlucky client causes (issue 17), over real HTTP: each must leave the
budget exact, nothing charged that was not produced, and the error in the endpoint's shape."""

from __future__ import annotations

import asyncio

import openai
import pytest

pytestmark = pytest.mark.integration


def sdk(gateway, user_id: str = "alice", **options) -> openai.AsyncOpenAI:
    token = gateway.headers(user_id)["Authorization"].removeprefix("Bearer ")
    return openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=token, **options)


def charged_tokens(gateway, user_id: str = "alice") -> int:
    records = [r for r in gateway.cost_records() if r["user_id"] == user_id]
    return sum(r["input_tokens"] + r["output_tokens"] for r in records)


def test_a_non_stream_client_that_leaves_stops_its_generation(gateway, offline_model) -> None:
    offline_model.set_config(reply_tokens=200, chunk_interval_s=0.05)  # a 10 s generation

    async def run() -> None:
        client = sdk(gateway, timeout=0.5, max_retries=1)
        await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Hi"}]
        )

    with pytest.raises(openai.APITimeoutError):
        asyncio.run(run())

    upstream = offline_model.ended_requests(timeout_s=3)
    assert [r["outcome"] for r in upstream] == ["client_disconnected"] * 2
    records = gateway.wait_for_records(2)
    assert [r["outcome"] for r in records] == ["client_disconnected"] * 2
    assert len({r["request_id"] for r in records}) == 2  # one generation per attempt
    assert all(r["output_tokens"] < 200 for r in records)
    assert gateway.usage()["tokens_used"] == charged_tokens(gateway)
