"""No secret, JWT or message text in any log line or error message.

A mix of requests (a good chat, a bad token, 400/422/413, a budget refusal, a cancel, an
upstream 401 that echoes the gateway's key) runs against a gateway whose OpenAI key and
JWT secret are recognisable; then everything the process logged (the Powertools lines
of SESSION_LOG, every Python logging record at DEBUG) and every response body is searched.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import httpx
import jwt
import pytest

pytestmark = pytest.mark.integration

OPENAI_KEY = "sk-test-SECRET-openai-key-0f1e2d3c4b5a"
JWT_SECRET = "jwt-SECRET-for-the-log-test-9a8b7c6d5e4f3a2b1c0d"
CANARY = "canary-7f3a purple elephants whisper"
LONG_CANARY = "canary-long-5d1c " + "zebra " * 2500
# botocore's DEBUG lines print DynamoDB request bodies, so the stored turn's text: keep
# DEBUG off for it in production. Secrets are checked there too; message text is not.
BODY_LOGGERS = ("botocore",)


def bearer(user_id: str, secret: str = JWT_SECRET, expires_in_s: int = 3600) -> str:
    return jwt.encode(
        {"sub": user_id, "exp": int(time.time()) + expires_in_s}, secret, algorithm="HS256"
    )


def test_no_secret_jwt_or_message_text_is_logged_or_echoed(
    gateway_factory: Any, offline_model: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    tokens: list[str] = []
    bodies: list[str] = []

    def auth(user_id: str = "erin", **kwargs: Any) -> dict[str, str]:
        tokens.append(bearer(user_id, **kwargs))
        return {"Authorization": f"Bearer {tokens[-1]}"}

    def keep(response: httpx.Response) -> httpx.Response:
        bodies.append(response.text)
        return response

    with gateway_factory(
        openai_api_key=OPENAI_KEY,
        jwt_secret=JWT_SECRET,
        daily_token_limit=1500,
        max_input_tokens=1500,
    ) as gateway:
        http = gateway.http
        # Given a good chat
        good = keep(http.post("/chat", json={"message": CANARY}, headers=auth()))
        assert good.status_code == 200
        # A bad token (wrong secret), an expired one, and a garbage one
        for headers in (
            auth(secret="not-the-secret-" + "x" * 32),
            auth(expires_in_s=-300),
            {"Authorization": "Bearer " + CANARY.replace(" ", ".")},
        ):
            assert (
                keep(http.post("/chat", json={"message": CANARY}, headers=headers)).status_code
                == 401
            )
        # 400 (invalid JSON), 422 (wrong-typed field), 413 (body over 64 KB; message too long)
        invalid_json = http.post(
            "/chat", content=b'{"message": "' + CANARY.encode(), headers=auth()
        )
        assert keep(invalid_json).status_code == 400
        wrong_type = {"message": CANARY, "max_tokens": CANARY}
        assert keep(http.post("/chat", json=wrong_type, headers=auth())).status_code == 422
        huge = {"message": CANARY + "x" * 70_000}
        assert keep(http.post("/chat", json=huge, headers=auth())).status_code == 413
        long = {"message": LONG_CANARY}
        assert keep(http.post("/chat", json=long, headers=auth())).status_code == 413
        # A budget refusal: this message's reservation (prompt + output cap) passes the daily limit
        over_budget = {"message": CANARY + " " + "word " * 700}
        refused = keep(http.post("/chat", json=over_budget, headers=auth()))
        assert (refused.status_code, refused.json()["error"]["code"]) == (429, "budget_exceeded")
        # A cancelled stream
        offline_model.set_config(chunk_interval_s=0.05, reply_tokens=200)
        with http.stream(
            "POST", "/chat", json={"message": CANARY}, headers=auth("frank")
        ) as stream:
            lines = stream.iter_lines()
            meta = next(line for line in lines if line.startswith("data: "))
            request_id = json.loads(meta[len("data: ") :])["request_id"]
            assert (
                keep(http.post(f"/chat/{request_id}/cancel", headers=auth("frank"))).status_code
                == 202
            )
            bodies.append("\n".join(lines))
        offline_model.set_config(chunk_interval_s=0.0, reply_tokens=None)
        # An upstream 401 whose message echoes the gateway's key, as some providers do
        offline_model.add_fault(
            kind="status", status=401, message=f"Incorrect API key provided: {OPENAI_KEY}"
        )
        misconfigured = keep(http.post("/chat", json={"message": CANARY}, headers=auth("gina")))
        assert (misconfigured.status_code, misconfigured.json()["error"]["code"]) == (
            502,
            "upstream_misconfigured",
        )
        completions = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": CANARY}]}
        v1 = keep(http.post("/v1/chat/completions", json=completions, headers=auth("gina")))
        assert v1.status_code == 502
        records = gateway.wait_for_records(4)
        session_log = "\n".join(json.dumps(line) for line in gateway.log_lines())

    # When everything logged and answered is gathered
    log_records = [(r.name, r.levelno, r.getMessage() + repr(r.__dict__)) for r in caplog.records]
    everything = "\n".join([session_log, *bodies, *(text for _, _, text in log_records)])
    # (the capture did see the gateway's lines and its dependencies' DEBUG records)
    assert records
    assert "cost_record" in session_log
    # (the model calls' transport; DynamoDB's client logs nothing, and botocore logs only
    # while it builds a client, which the process may have done before this test)
    assert any(
        name.startswith("httpcore") and level == logging.DEBUG for name, level, _ in log_records
    )

    # Then no secret and no token appears anywhere, at any level, in any logger
    for secret in (OPENAI_KEY, JWT_SECRET, *tokens):
        assert secret not in everything
    for token in tokens:  # not even the signature part on its own
        assert token.rsplit(".", 1)[1] not in everything
    # And the user's text is in no gateway log line, no error body, and no record at INFO+
    own_logs = [
        text
        for name, level, text in log_records
        if level >= logging.INFO or not name.startswith(BODY_LOGGERS)
    ]
    for text in (CANARY, LONG_CANARY[:40], "purple elephants"):
        assert text not in session_log
        assert not any(text in line for line in own_logs)
        assert not any(text in body for body in bodies)
    # And the cost records carry counts, not content
    for record in records:
        assert isinstance(record["input_tokens"], int)
        assert not {"message", "text", "content", "prompt_text"} & (set(record) - {"message"})
        assert record["message"] == "cost_record"
