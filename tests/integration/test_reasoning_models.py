"""Today's reasoning models over real HTTP, with the offline model server playing one: the
cap parameter, hidden reasoning tokens as output, keep-alive during the silence, a cancel
while the model thinks, fallback priced by the model that answered, a hung first model."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.gateway_fixture import make_token
from tollgate.pricing import price_table

pytestmark = pytest.mark.integration

CHAIN = "gpt-5-mini,gpt-4.1-mini"
SEED_CLIENT = Path(__file__).resolve().parents[1] / "node" / "seed_client.mjs"
NODE = shutil.which("node")


def events(text: str) -> list[tuple[str | None, str]]:
    parsed = []
    for block in text.split("\n\n"):
        if not block:
            continue
        lines = block.split("\n")
        name = next((line[7:] for line in lines if line.startswith("event: ")), None)
        data = next((line[6:] for line in lines if line.startswith("data: ")), "")
        parsed.append((name, data))
    return parsed


def usage_of(text: str) -> dict[str, Any]:
    return next(json.loads(data) for name, data in events(text) if name == "usage")


def test_a_reasoning_model_gets_max_completion_tokens_and_its_reasoning_is_charged(
    gateway_factory, offline_model
) -> None:
    offline_model.set_config(reasoning_tokens={"low": 40, "minimal": 8, "medium": 64, "high": 96})
    with gateway_factory(model_chain=CHAIN, summary_model="gpt-5-nano") as gateway:
        response = gateway.chat("Hello")
        usage = gateway.usage()
        [record] = gateway.wait_for_records(1)

    assert response.status_code == 200, response.text
    [upstream] = offline_model.ended_requests()
    body = upstream["body"]
    # The cap travels as max_completion_tokens, never max_tokens, with /chat's effort
    assert "max_tokens" not in body
    assert body["max_completion_tokens"] == 800
    assert body["reasoning_effort"] == "low"
    assert "temperature" not in body
    used = usage_of(response.text)
    # Hidden reasoning is output: counted, charged, and shown
    assert used["reasoning_tokens"] == upstream["reasoning_tokens"] == 40
    assert used["output_tokens"] == upstream["completion_tokens"] >= 40
    price = price_table().price("gpt-5-mini")
    assert record["cost_usd"] == pytest.approx(
        price.cost_micros(used["input_tokens"], used["cached_input_tokens"], used["output_tokens"])
        / 1e6
    )
    assert record["reasoning_tokens"] == 40
    assert usage["tokens_used"] == used["input_tokens"] + used["output_tokens"]


def test_fallback_from_a_reasoning_model_is_priced_by_the_model_that_answered(
    gateway_factory, offline_model
) -> None:
    offline_model.add_fault(model="gpt-5-mini", kind="status", status=500)
    with gateway_factory(model_chain=CHAIN, summary_model="gpt-5-nano") as gateway:
        response = gateway.chat("Hello")
        [record] = gateway.wait_for_records(1)

    assert response.status_code == 200, response.text
    meta = next(json.loads(d) for n, d in events(response.text) if n == "meta")
    assert meta["model"] == "gpt-4.1-mini"
    assert record["models_tried"] == ["gpt-5-mini", "gpt-4.1-mini"]
    used = usage_of(response.text)
    assert used["reasoning_tokens"] == 0
    price = price_table().price("gpt-4.1-mini")
    expected = price.cost_micros(used["input_tokens"], 0, used["output_tokens"]) / 1e6
    assert record["cost_usd"] == pytest.approx(expected)
    answered = [r for r in offline_model.ended_requests() if r["model"] == "gpt-4.1-mini"]
    assert answered
    assert "reasoning_effort" not in answered[-1]["body"]


def test_meta_and_keep_alives_arrive_while_the_model_thinks_and_a_cancel_charges_the_cap(
    gateway_factory, offline_model
) -> None:
    # Given a reasoning model that thinks for 3 s before its first visible token
    offline_model.set_config(reasoning_silence_s=3.0)
    with gateway_factory(model_chain=CHAIN, summary_model="gpt-5-nano", sse_keepalive_s=0.3) as gw:
        received: list[str] = []
        with gw.http.stream(
            "POST", "/chat", json={"message": "Think hard", "max_tokens": 200}, headers=gw.headers()
        ) as response:
            lines = response.iter_lines()
            started = time.monotonic()
            # When meta and a keep-alive comment arrived (the model still silent), cancel
            for line in lines:
                received.append(line)
                if line == ": keep-alive":
                    break
            waited = time.monotonic() - started
            meta = json.loads(next(line for line in received if line.startswith("data: "))[6:])
            assert (
                gw.http.post(f"/chat/{meta['request_id']}/cancel", headers=gw.headers()).status_code
                == 202
            )
            received.extend(lines)
        [record] = gw.wait_for_records(1)

    text = "\n".join(received) + "\n"
    assert waited < 3.0  # meta and the comment came during the silence
    assert received[0] == "event: meta"
    assert not any(name is None and data.startswith('{"delta"') for name, data in events(text))
    used = usage_of(text)
    # Then hidden reasoning cannot be counted: the output charged is the whole cap
    assert used["output_tokens"] == 200
    assert record["outcome"] == "cancelled"
    assert record["usage_source"] == "estimated"
    assert record["ttft_ms"] is None


@pytest.mark.skipif(NODE is None, reason="node (Node.js 20+) is not installed")
def test_the_seed_client_reads_a_stream_with_keep_alive_comments(
    gateway_factory, offline_model
) -> None:
    assert NODE is not None
    offline_model.set_config(reasoning_silence_s=1.0)
    with gateway_factory(model_chain=CHAIN, summary_model="gpt-5-nano", sse_keepalive_s=0.2) as gw:
        raw = gw.http.post("/chat", json={"message": "Hi"}, headers=gw.headers("raw")).text
        result = subprocess.run(
            [NODE, str(SEED_CLIENT), gw.url, make_token("seed-user"), "Hello there"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        [_, record] = gw.wait_for_records(2)
        stored = gw.http.get(
            f"/conversations/{record['conversation_id']}", headers=gw.headers("seed-user")
        ).json()

    assert ": keep-alive\n\n" in raw
    assert result.returncode == 0, result.stderr
    assert result.stdout == stored["turns"][0]["assistant"]
    assert result.stdout


def test_a_hung_first_model_falls_back_within_the_first_byte_timeout(
    gateway_factory, offline_model
) -> None:
    offline_model.add_fault(model="gpt-5-mini", kind="hang")
    with gateway_factory(
        model_chain=CHAIN, summary_model="gpt-5-nano", upstream_first_byte_timeout_s=0.5
    ) as gateway:
        started = time.monotonic()
        response = gateway.chat("Hello")
        elapsed = time.monotonic() - started
        [record] = gateway.wait_for_records(1)

    assert response.status_code == 200, response.text
    assert record["models_tried"] == ["gpt-5-mini", "gpt-4.1-mini"]
    assert record["model"] == "gpt-4.1-mini"
    assert elapsed < gateway.settings.stream_timeout_s / 2
