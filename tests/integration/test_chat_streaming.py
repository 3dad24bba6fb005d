"""POST /chat over real HTTP: SSE contract, caps, fallback, and every way a stream can end."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest

from tests.gateway_fixture import parse_sse

pytestmark = pytest.mark.integration


def events_of(response: httpx.Response) -> list[tuple[str | None, str]]:
    assert response.status_code == 200, response.text
    return parse_sse(response.text)


def named(events: list[tuple[str | None, str]], name: str) -> dict:
    matches = [json.loads(data) for event, data in events if event == name]
    assert len(matches) == 1, events
    return matches[0]


def deltas(events: list[tuple[str | None, str]]) -> str:
    return "".join(
        json.loads(data)["delta"] for event, data in events if event is None and data != "[DONE]"
    )


def assert_no_open_reservation(gateway, user_id: str = "alice") -> None:
    usage = gateway.usage(user_id)
    records = [r for r in gateway.cost_records() if r["user_id"] == user_id]
    charged = sum(r["input_tokens"] + r["output_tokens"] for r in records)
    assert usage["tokens_used"] == charged


def test_stream_follows_the_sse_contract(gateway, offline_model) -> None:
    response = gateway.chat("Tell me something")

    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    request_id = response.headers["x-request-id"]
    events = events_of(response)
    assert events[0][0] == "meta"
    meta = json.loads(events[0][1])
    assert meta == {
        "conversation_id": meta["conversation_id"],
        "request_id": request_id,
        "model": "gpt-4o-mini",
    }
    assert [name for name, _ in events[-2:]] == ["usage", None]
    assert events[-1][1] == "[DONE]"
    for name, data in events[1:-2]:
        assert name is None
        assert list(json.loads(data)) == ["delta"]
    upstream = offline_model.ended_requests()[0]
    usage = named(events, "usage")
    assert usage["input_tokens"] == upstream["prompt_tokens"]
    assert usage["output_tokens"] == upstream["completion_tokens"]
    assert usage["budget"]["tokens_used"] == usage["input_tokens"] + usage["output_tokens"]
    record = gateway.wait_for_records(1)[0]
    assert record["outcome"] == "completed"
    assert record["upstream_model"] == "gpt-4o-mini-2024-07-18"
    assert record["usage_source"] == "upstream"
    assert record["cost_usd"] == usage["cost_usd"] > 0


def test_client_max_tokens_is_clamped_to_the_cap(gateway_factory, offline_model) -> None:
    offline_model.set_config(reply_tokens=500)
    with gateway_factory(max_output_tokens=20) as gateway:
        events = events_of(gateway.chat("Write a lot", max_tokens=5000))

    assert offline_model.ended_requests()[0]["max_tokens"] == 20
    assert named(events, "usage")["output_tokens"] == 20


def test_fallback_moves_down_the_chain_on_429_and_5xx(gateway, offline_model) -> None:
    offline_model.add_fault(model="gpt-4o-mini", kind="status", status=429, retry_after=0)
    offline_model.add_fault(model="gpt-4o", kind="status", status=503)

    events = events_of(gateway.chat("Hello"))

    assert json.loads(events[0][1])["model"] == "gpt-3.5-turbo"
    record = gateway.wait_for_records(1)[0]
    assert record["models_tried"] == ["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"]
    assert record["model"] == "gpt-3.5-turbo"
    assert record["upstream_model"] == "gpt-3.5-turbo-0125"


def test_a_retry_after_longer_than_the_time_left_skips_to_the_next_model(
    gateway_factory, offline_model
) -> None:
    offline_model.add_fault(model="gpt-4o-mini", kind="status", status=429, retry_after=600)
    with gateway_factory(stream_timeout_s=10) as gateway:
        started = time.monotonic()
        events = events_of(gateway.chat("Hello"))
        elapsed = time.monotonic() - started

    assert json.loads(events[0][1])["model"] == "gpt-4o"
    assert elapsed < 5


def test_upstream_400_is_422_and_does_not_fall_back(gateway, offline_model) -> None:
    offline_model.add_fault(kind="status", status=400, message="bad parameter xyz")

    response = gateway.chat("Hello")

    assert response.status_code == 422
    assert response.json()["error"]["code"] == "upstream_rejected"
    assert "bad parameter xyz" in response.json()["error"]["message"]
    assert [r["model"] for r in offline_model.ended_requests()] == ["gpt-4o-mini"]
    assert gateway.usage()["tokens_used"] == 0
    assert gateway.wait_for_records(1)[0]["outcome"] == "upstream_rejected"


@pytest.mark.parametrize("status", [401, 403, 404])
def test_upstream_auth_failure_is_502_never_the_clients_401(gateway, offline_model, status) -> None:
    offline_model.add_fault(kind="status", status=status)

    response = gateway.chat("Hello")

    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_misconfigured"
    assert gateway.usage()["tokens_used"] == 0
    assert gateway.wait_for_records(1)[0]["outcome"] == "upstream_error"


def test_every_model_failing_is_503_with_retry_after(gateway, offline_model) -> None:
    offline_model.add_fault(kind="status", status=500)

    response = gateway.chat("Hello")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "upstream_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert gateway.usage()["tokens_used"] == 0
    tried = {r["model"] for r in offline_model.ended_requests()}
    assert tried == {"gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"}


def test_first_delta_is_flushed_before_upstream_finishes(gateway, offline_model) -> None:
    offline_model.set_config(reply_tokens=6, chunk_interval_s=0.3)

    with gateway.http.stream(
        "POST", "/chat", json={"message": "Hi"}, headers=gateway.headers()
    ) as response:
        started = time.monotonic()
        lines = response.iter_lines()
        first_delta_at = None
        for line in lines:
            if line.startswith('data: {"delta"'):
                first_delta_at = time.monotonic() - started
                break
        for _ in lines:
            pass
        total = time.monotonic() - started

    assert first_delta_at is not None
    assert first_delta_at < total - 0.9  # five more chunks 0.3 s apart were still to come


def _read_until_first_delta_then_drop(gateway) -> str:
    with (
        httpx.Client(base_url=gateway.url, timeout=10) as client,
        client.stream(
            "POST", "/chat", json={"message": "Hi"}, headers=gateway.headers()
        ) as response,
    ):
        request_id = response.headers["x-request-id"]
        for line in response.iter_lines():
            if line.startswith('data: {"delta"'):
                break
    return request_id


def test_client_disconnect_aborts_upstream_and_settles(gateway, offline_model) -> None:
    offline_model.set_config(reply_tokens=200, chunk_interval_s=0.05)

    _read_until_first_delta_then_drop(gateway)

    upstream = offline_model.ended_requests(timeout_s=3)[0]
    assert upstream["outcome"] == "client_disconnected"
    assert upstream["chunks_sent"] < 100
    record = gateway.wait_for_records(1)[0]
    assert record["outcome"] == "client_disconnected"
    assert record["usage_source"] == "estimated"
    assert record["input_tokens"] == upstream["prompt_tokens"]
    assert 1 <= record["output_tokens"] < 100
    assert_no_open_reservation(gateway)


def test_cancel_stops_the_stream_and_charges_what_was_produced(gateway, offline_model) -> None:
    offline_model.set_config(reply_tokens=200, chunk_interval_s=0.05)
    body: list[str] = []

    with gateway.http.stream(
        "POST", "/chat", json={"message": "Hi"}, headers=gateway.headers()
    ) as response:
        request_id = response.headers["x-request-id"]
        lines = response.iter_lines()
        for line in lines:
            body.append(line)
            if line.startswith('data: {"delta"'):
                cancel = gateway.http.post(f"/chat/{request_id}/cancel", headers=gateway.headers())
                assert cancel.status_code == 202
                break
        body.extend(lines)

    events = parse_sse("\n".join(body) + "\n")
    assert [name for name, _ in events[-2:]] == ["usage", None]
    assert events[-1][1] == "[DONE]"
    assert "error" not in [name for name, _ in events]
    record = gateway.wait_for_records(1)[0]
    assert record["outcome"] == "cancelled"
    assert offline_model.ended_requests()[0]["outcome"] == "client_disconnected"
    assert_no_open_reservation(gateway)
    # idempotent once finished; nobody else's and unknown ids are 404
    again = gateway.http.post(f"/chat/{request_id}/cancel", headers=gateway.headers())
    assert again.status_code == 202
    other = gateway.http.post(f"/chat/{request_id}/cancel", headers=gateway.headers("mallory"))
    assert other.status_code == 404
    assert other.json()["error"]["code"] == "not_found"
    unknown = gateway.http.post("/chat/nope/cancel", headers=gateway.headers())
    assert unknown.status_code == 404


def test_cancel_reaches_a_stream_on_another_instance(gateway_factory, offline_model) -> None:
    offline_model.set_config(reply_tokens=300, chunk_interval_s=0.05)
    with gateway_factory() as streaming, gateway_factory() as other:
        started = time.monotonic()
        with streaming.http.stream(
            "POST", "/chat", json={"message": "Hi"}, headers=streaming.headers()
        ) as response:
            request_id = response.headers["x-request-id"]
            lines = response.iter_lines()
            for line in lines:
                if line.startswith('data: {"delta"'):
                    break
            cancel_sent = time.monotonic()
            assert (
                other.http.post(f"/chat/{request_id}/cancel", headers=other.headers()).status_code
                == 202
            )
            rest = list(lines)
            stopped = time.monotonic()

        assert [line for line in rest if line][-1] == "data: [DONE]"
        assert stopped - cancel_sent < 1.5  # CANCEL_POLL_S is 0.2 here
        assert stopped - started < 10  # the whole reply would take 15 s
        assert streaming.wait_for_records(1)[0]["outcome"] == "cancelled"


def test_timeout_ends_with_usage_error_done(gateway_factory, offline_model) -> None:
    offline_model.set_config(reply_tokens=100, chunk_interval_s=0.05)
    with gateway_factory(stream_timeout_s=1.0) as gateway:
        events = events_of(gateway.chat("Hi"))
        record = gateway.wait_for_records(1)[0]

    names = [name for name, _ in events]
    assert names[-3:] == ["usage", "error", None]
    assert named(events, "error")["code"] == "timeout"
    assert record["outcome"] == "timeout"
    assert record["output_tokens"] == len([n for n in names if n is None]) - 1


def test_upstream_cut_is_priced_by_what_was_produced(gateway, offline_model) -> None:
    offline_model.add_fault(kind="cut", cut_after_chunks=5)

    events = events_of(gateway.chat("Hi"))

    assert [name for name, _ in events[-3:]] == ["usage", "error", None]
    assert named(events, "error")["code"] == "upstream_error"
    text = deltas(events)
    record = gateway.wait_for_records(1)[0]
    assert record["outcome"] == "upstream_error"
    assert record["usage_source"] == "estimated"
    assert record["output_tokens"] == 5
    assert record["cost_usd"] > 0
    assert text
    assert_no_open_reservation(gateway)


def test_concurrent_streams_do_not_block_each_other(gateway, offline_model) -> None:
    offline_model.set_config(reply_tokens=10, first_token_delay_s=0.5)
    results: list[int] = []

    def one(user: str) -> None:
        results.append(gateway.chat("Hi", user_id=user).status_code)

    threads = [threading.Thread(target=one, args=(f"user{i}",)) for i in range(8)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert results == [200] * 8
    assert time.monotonic() - started < 3
