"""Faults a hostile or unlucky client causes (issue 17), over real HTTP: each must leave the
budget exact, nothing charged that was not produced, and the error in the endpoint's shape."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Iterator

import jwt
import openai
import pytest

from tests.gateway_fixture import JWT_SECRET

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


class RawConnection:
    """One keep-alive HTTP/1.1 connection, byte for byte: shows whether the server kept it."""

    def __init__(self, url: str) -> None:
        host, _, port = url.removeprefix("http://").partition(":")
        self.host = f"{host}:{port}"
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.reader = self.sock.makefile("rb")

    def send(self, method: str, path: str, body: bytes = b"", **headers: str) -> None:
        """`content_length` may announce more than `body`: the rest never comes."""
        length = headers.pop("content_length", str(len(body)))
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        if method == "POST":
            lines.append(f"Content-Length: {length}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + body)

    def response(self) -> tuple[int, dict[str, str], dict]:
        """The next response (status, headers, JSON body); AssertionError if the server closed."""
        status_line = self.reader.readline()
        assert status_line, "the server closed the connection"
        status = int(status_line.split()[1])
        headers = {}
        while (line := self.reader.readline().decode().strip()) != "":
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self.reader.read(int(headers["content-length"]))
        return status, headers, json.loads(body)

    def close(self) -> None:
        self.reader.close()
        self.sock.close()


@pytest.fixture
def connection(gateway) -> Iterator[RawConnection]:
    raw = RawConnection(gateway.url)
    try:
        yield raw
    finally:
        raw.close()


def assert_openai_error(body: dict, error_type: str, code: str) -> None:
    assert set(body["error"]) >= {"message", "type", "code", "param"}
    assert (body["error"]["type"], body["error"]["code"]) == (error_type, code)


LONE_SURROGATE_MESSAGE = b'{"message": "hi \\ud800"}'
LONE_SURROGATE_COMPLETION = (
    b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "\\ud800"}]}'
)


def test_a_lone_surrogate_in_a_body_is_a_400_and_the_connection_stays(
    gateway, offline_model, connection
) -> None:
    auth = gateway.headers()["Authorization"]

    connection.send("POST", "/chat", LONE_SURROGATE_MESSAGE, Authorization=auth)
    status, _, body = connection.response()
    assert (status, body["error"]["code"]) == (400, "bad_request")
    connection.send("POST", "/v1/chat/completions", LONE_SURROGATE_COMPLETION, Authorization=auth)
    status, _, body = connection.response()
    assert status == 400
    assert_openai_error(body, "invalid_request_error", "bad_request")

    assert offline_model.requests() == []
    assert gateway.usage()["tokens_used"] == 0


def test_a_lone_surrogate_in_the_token_subject_is_a_401_and_the_connection_stays(
    gateway, offline_model, connection
) -> None:
    token = jwt.encode({"sub": "\ud800", "exp": int(time.time()) + 60}, JWT_SECRET, "HS256")
    auth = f"Bearer {token}"

    connection.send("POST", "/chat", b'{"message": "hi"}', Authorization=auth)
    status, _, body = connection.response()
    assert (status, body["error"]["code"]) == (401, "unauthenticated")
    connection.send("GET", "/usage", Authorization=auth)
    assert connection.response()[0] == 401
    connection.send("POST", "/v1/chat/completions", b'{"model": "gpt-4o-mini"}', Authorization=auth)
    status, _, body = connection.response()
    assert status == 401
    assert_openai_error(body, "authentication_error", "unauthenticated")

    assert offline_model.requests() == []
    assert gateway.cost_records() == []


def test_an_unexpected_error_is_a_500_in_the_endpoints_shape(
    gateway, offline_model, connection, monkeypatch
) -> None:
    async def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.service, "balances", broken)
    monkeypatch.setattr(gateway.service, "start_completion", broken)
    auth = gateway.headers()["Authorization"]

    connection.send("GET", "/usage", Authorization=auth)
    status, _, body = connection.response()
    assert (status, body) == (500, {"error": {"code": "internal", "message": "internal error"}})
    completion = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}'
    connection.send("POST", "/v1/chat/completions", completion, Authorization=auth)
    status, _, body = connection.response()
    assert status == 500
    assert_openai_error(body, "api_error", "internal")
    connection.send("GET", "/v1/nope")
    status, _, body = connection.response()
    assert status == 404
    assert_openai_error(body, "not_found_error", "not_found")


def test_a_stalled_body_is_a_408_and_nothing_is_charged(gateway_factory, offline_model) -> None:
    with gateway_factory(body_read_timeout_s=0.3) as gateway:
        auth = gateway.headers()["Authorization"]
        for path, error_shape in (("/chat", "ours"), ("/v1/chat/completions", "openai")):
            raw = RawConnection(gateway.url)
            try:
                raw.send("POST", path, b'{"mess', Authorization=auth, content_length="100")
                status, headers, body = raw.response()
            finally:
                raw.close()
            assert status == 408
            assert headers["connection"] == "close"
            if error_shape == "openai":
                assert_openai_error(body, "invalid_request_error", "request_timeout")
            else:
                assert body["error"]["code"] == "request_timeout"
        assert gateway.usage()["tokens_used"] == 0
    assert offline_model.requests() == []


def test_a_client_leaving_mid_body_is_not_an_error(gateway, offline_model, caplog) -> None:
    caplog.set_level(logging.INFO, logger="tollgate.app")
    uvicorn_errors = []
    handler = logging.Handler()
    handler.emit = uvicorn_errors.append  # type: ignore[method-assign]
    logging.getLogger("uvicorn.error").addHandler(handler)
    try:
        raw = RawConnection(gateway.url)
        auth = gateway.headers()["Authorization"]
        raw.send("POST", "/chat", b'{"mess', Authorization=auth, content_length="100")
        raw.close()
        deadline = time.monotonic() + 5
        while "client disconnected" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        logging.getLogger("uvicorn.error").removeHandler(handler)

    assert "client disconnected before its request body arrived" in caplog.text
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r for r in uvicorn_errors if r.levelno >= logging.ERROR] == []
    assert offline_model.requests() == []
    assert gateway.usage()["tokens_used"] == 0


@pytest.mark.parametrize(
    "expires",
    [str(int(time.time()) + 3600), 10**30, 1e300, int(time.time()) + 25 * 3600],
    ids=["string", "10^30", "1e300", "25-hours"],
)
def test_a_token_with_a_non_numeric_or_far_exp_is_refused(gateway, offline_model, expires) -> None:
    token = jwt.encode({"sub": "alice", "exp": expires}, JWT_SECRET, "HS256")
    headers = {"Authorization": f"Bearer {token}"}

    response = gateway.http.post("/chat", json={"message": "Hi"}, headers=headers)

    assert (response.status_code, response.json()["error"]["code"]) == (401, "unauthenticated")
    assert offline_model.requests() == []


def test_jwt_max_lifetime_s_allows_longer_tokens(gateway_factory, offline_model) -> None:
    with gateway_factory(jwt_max_lifetime_s=7 * 24 * 3600) as gateway:
        expires = int(time.time()) + 6 * 24 * 3600
        token = jwt.encode({"sub": "alice", "exp": expires}, JWT_SECRET, "HS256")
        response = gateway.http.get("/usage", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200


def completion(**fields: object) -> dict:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], **fields}


def test_billing_fields_are_the_gateways_not_the_clients(gateway_factory, offline_model) -> None:
    key = "safety-key-for-this-test"
    with gateway_factory(safety_id_key=key) as gateway:
        for user in ("alice", "bob", "alice"):
            response = gateway.http.post(
                "/v1/chat/completions",
                json=completion(
                    store=True,
                    user="someone-else",
                    safety_identifier="someone-else",
                    service_tier="default",
                    temperature=0.5,
                ),
                headers=gateway.headers(user),
            )
            assert response.status_code == 200, response.text

    sent = [r["body"] for r in offline_model.ended_requests()]
    alice = hmac.new(key.encode(), b"alice", hashlib.sha256).hexdigest()
    bob = hmac.new(key.encode(), b"bob", hashlib.sha256).hexdigest()
    assert [p.get("safety_identifier") for p in sent] == [alice, bob, alice]
    assert len(alice) == 64
    assert all(p["store"] is False for p in sent)
    assert all("user" not in p for p in sent)
    assert all(p["service_tier"] == "default" for p in sent)


def test_the_safety_identifier_key_falls_back_to_the_jwt_secret(gateway, offline_model) -> None:
    response = gateway.http.post(
        "/v1/chat/completions", json=completion(), headers=gateway.headers()
    )

    assert response.status_code == 200, response.text
    sent = offline_model.ended_requests()[0]["body"]
    expected = hmac.new(JWT_SECRET.encode(), b"alice", hashlib.sha256).hexdigest()
    assert (sent["store"], sent["safety_identifier"]) == (False, expected)
    assert "user" not in sent


@pytest.mark.parametrize("tier", ["priority", "flex", "scale", 7, ["default"]])
def test_an_unpriced_service_tier_is_refused(gateway, offline_model, tier) -> None:
    response = gateway.http.post(
        "/v1/chat/completions", json=completion(service_tier=tier), headers=gateway.headers()
    )

    assert response.status_code == 400
    assert_openai_error(response.json(), "invalid_request_error", "invalid_request")
    assert response.json()["error"]["param"] == "service_tier"
    assert offline_model.requests() == []
    assert gateway.usage()["tokens_used"] == 0
