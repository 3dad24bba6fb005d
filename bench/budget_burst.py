"""Budget burst: 50 concurrent streams from one user against a budget of about 5 requests.

The gateway runs with DynamoDB on the moto server. The limit is five times one request's
reservation (its prompt plus the response cap), so at most five streams can hold a
reservation at once; as streams settle to their (smaller) actual usage, more are admitted.
Reported: streams admitted and refused, tokens settled against the limit (overshoot,
expected zero), refused requests that reached the model server (expected zero), and
whether GET /usage equals the sum of the `usage` events the clients received.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from typing import Any

import httpx
import jwt

STREAMS = 50
BUDGET_REQUESTS = 5
REPLY_TOKENS = 40
OUTPUT_CAP = 60
FIRST_TOKEN_DELAY_S = 0.3
MESSAGE = "Tell me something about rivers, bridges and the cities built around them."


def token(secret: str, user: str) -> str:
    return jwt.encode({"sub": user, "exp": int(time.time()) + 600}, secret, algorithm="HS256")


def offline_requests(offline_url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(offline_url + "/_offline/requests", timeout=5) as response:
        records: list[dict[str, Any]] = json.load(response)
        return records


def usage_event(text: str) -> dict[str, Any] | None:
    for block in text.split("\n\n"):
        if block.startswith("event: usage\n"):
            parsed: dict[str, Any] = json.loads(block.split("data: ", 1)[1])
            return parsed
    return None


async def burst(gateway_url: str, secret: str, user: str) -> list[tuple[int, str]]:
    headers = {"Authorization": f"Bearer {token(secret, user)}"}
    limits = httpx.Limits(max_connections=STREAMS)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=60, limits=limits) as client:

        async def one() -> tuple[int, str]:
            response = await client.post("/chat", json={"message": MESSAGE}, headers=headers)
            return response.status_code, response.text

        return await asyncio.gather(*(one() for _ in range(STREAMS)))


def token_limit(model: str) -> int:
    """About five reservations: each holds the prompt (system + message) plus the cap."""
    from tollgate.adapters.tokenizer import token_counter
    from tollgate.prompts import PromptLibrary

    system = PromptLibrary.load().chat["default"]
    prompt = token_counter().count_messages(
        model, [{"role": "system", "content": system}, {"role": "user", "content": MESSAGE}]
    )
    return BUDGET_REQUESTS * (prompt + OUTPUT_CAP)


def run(gateway_url: str, offline_url: str, secret: str, limit: int) -> dict[str, Any]:
    before = len(offline_requests(offline_url))
    results = asyncio.run(burst(gateway_url, secret, "burst-user"))
    reached_upstream = len(offline_requests(offline_url)) - before
    admitted = [usage_event(text) for status, text in results if status == 200]
    refused = [status for status, _ in results if status != 200]
    settled = sum(e["input_tokens"] + e["output_tokens"] for e in admitted if e)
    with urllib.request.urlopen(
        urllib.request.Request(
            gateway_url + "/usage",
            headers={"Authorization": f"Bearer {token(secret, 'burst-user')}"},
        ),
        timeout=5,
    ) as response:
        usage = json.load(response)
    return {
        "streams": STREAMS,
        "token_limit": limit,
        "admitted": len(admitted),
        "refused": len(refused),
        "refused_statuses": sorted(set(refused)),
        "refused_that_reached_upstream": reached_upstream - len(admitted),
        "tokens_settled": settled,
        "overshoot_tokens": max(0, settled - limit),
        "usage_endpoint_tokens": usage["tokens_used"],
        "usage_matches_events": usage["tokens_used"] == settled,
    }


def render(result: dict[str, Any]) -> str:
    return (
        f"{result['streams']} concurrent streams from one user, token limit "
        f"{result['token_limit']} (≈{BUDGET_REQUESTS} reservations of prompt + "
        f"{OUTPUT_CAP}-token cap; replies of {REPLY_TOKENS} tokens after "
        f"{FIRST_TOKEN_DELAY_S * 1000:.0f} ms): {result['admitted']} admitted, "
        f"{result['refused']} refused ({', '.join(map(str, result['refused_statuses']))}); "
        f"{result['tokens_settled']} tokens settled, overshoot {result['overshoot_tokens']} "
        f"tokens; refused requests that reached the model server: "
        f"{result['refused_that_reached_upstream']}; GET /usage = sum of usage events: "
        f"{'yes' if result['usage_matches_events'] else 'NO'}."
    )
