"""tollgate-chat against the real gateway over HTTP, in-process with argv."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from typing import Any

import pytest
from botocore.credentials import Credentials

from tests.gateway_fixture import make_token, parse_sse
from tollgate.cli.chat import EventReader, iam_signer, main, sigv4_headers

pytestmark = pytest.mark.integration

CONVERSATION_LINE = re.compile(r"^conversation: (\S+)", re.MULTILINE)


def run_client(
    gateway: Any, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    code = main(["--url", gateway.url, "--token", make_token("carol"), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def conversation_id_in(stderr: str) -> str:
    match = CONVERSATION_LINE.search(stderr)
    assert match, stderr
    return match.group(1)


def test_streams_the_reply_and_reports_usage_and_conversation(gateway, capsys) -> None:
    code, out, err = run_client(gateway, capsys, "Hello there")

    assert code == 0, err
    conversation_id = conversation_id_in(err)
    stored = gateway.http.get(
        f"/conversations/{conversation_id}", headers=gateway.headers("carol")
    ).json()
    assert out == stored["turns"][0]["assistant"] + "\n"
    assert out.strip()
    assert re.search(r"\d+ in \+ \d+ out tokens · \$\d+\.\d{6}", err), err
    assert "budget left today:" in err
    assert f"--conversation {conversation_id}" in err


def test_continues_a_conversation(gateway, capsys) -> None:
    _, _, first_err = run_client(gateway, capsys, "Tell me about bridges")
    conversation_id = conversation_id_in(first_err)

    code, _, err = run_client(gateway, capsys, "--conversation", conversation_id, "And tunnels?")

    assert code == 0, err
    assert conversation_id_in(err) == conversation_id
    stored = gateway.http.get(
        f"/conversations/{conversation_id}", headers=gateway.headers("carol")
    ).json()
    assert [turn["user"] for turn in stored["turns"]] == ["Tell me about bridges", "And tunnels?"]


def test_usage_prints_the_budget(gateway, capsys) -> None:
    run_client(gateway, capsys, "Hello there")

    code, out, _ = run_client(gateway, capsys, "--usage")

    assert code == 0
    usage = json.loads(out)
    assert usage == gateway.usage("carol")
    assert usage["tokens_used"] > 0
    assert usage["resets_at"].endswith("Z")


def test_a_refusal_is_reported_with_its_code_and_retry_after(gateway_factory, capsys) -> None:
    with gateway_factory(daily_token_limit=10) as gateway:
        code, out, err = run_client(gateway, capsys, "Hello there")

    assert code == 1
    assert out == ""
    assert "429 budget_exceeded" in err
    assert "retry after" in err


def test_a_bad_token_is_reported_as_unauthenticated(gateway, capsys) -> None:
    code = main(["--url", gateway.url, "--token", "not-a-jwt", "--usage"])

    assert code == 1
    assert "401 unauthenticated" in capsys.readouterr().err


def test_an_unreachable_gateway_is_reported(capsys) -> None:
    code = main(["--url", "http://127.0.0.1:9", "--token", "x", "--usage"])

    assert code == 1
    assert "unreachable" in capsys.readouterr().err


def test_runs_as_a_module_with_the_token_from_the_environment(gateway) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tollgate.cli.chat", "--url", gateway.url, "Hi"],
        env={"TOLLGATE_TOKEN": make_token("dave"), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    assert "conversation: " in result.stderr


def test_interactive_loop_keeps_the_conversation(gateway, capsys, monkeypatch) -> None:
    import io

    monkeypatch.setattr(sys, "stdin", io.StringIO("First question\nSecond question\n"))

    code, out, err = run_client(gateway, capsys)

    assert code == 0, err
    conversation_id = conversation_id_in(err)
    stored = gateway.http.get(
        f"/conversations/{conversation_id}", headers=gateway.headers("carol")
    ).json()
    assert [turn["user"] for turn in stored["turns"]] == ["First question", "Second question"]
    assert out == "".join(turn["assistant"] + "\n" for turn in stored["turns"])


def test_event_reader_matches_the_gateway_framing(gateway) -> None:
    import io

    response = gateway.chat("Hello there")

    events = list(EventReader(io.BytesIO(response.content)))

    assert events == parse_sse(response.text)


def test_sigv4_signing_adds_an_aws4_authorization_header() -> None:
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    body = b'{"message": "hi"}'

    headers = sigv4_headers(
        "POST",
        "https://abc123.lambda-url.eu-west-1.on.aws/chat",
        {"Content-Type": "application/json", "X-End-User-Id": "user-7"},
        body,
        credentials=credentials,
        region="eu-west-1",
    )

    authorization = headers["Authorization"]
    assert authorization.startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert "/eu-west-1/lambda/aws4_request" in authorization
    assert "x-end-user-id" in authorization.split("SignedHeaders=")[1]
    assert re.fullmatch(r"\d{8}T\d{6}Z", headers["X-Amz-Date"])
    assert headers["X-End-User-Id"] == "user-7"


def test_ctrl_c_mid_reply_cancels_the_request(gateway, offline_model) -> None:
    offline_model.set_config(chunk_interval_s=0.1, reply_tokens=200)
    process = subprocess.Popen(
        [sys.executable, "-u", "-m", "tollgate.cli.chat", "--url", gateway.url, "Hello there"],
        env={"TOLLGATE_TOKEN": make_token("erin"), "PATH": "/usr/bin:/bin"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    first_bytes = process.stdout.read(8)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=30)

    assert first_bytes
    assert process.returncode == 130, err
    assert b"[cancelled]" in err
    assert b"out tokens" in err
    [record] = gateway.wait_for_records(1)
    assert record["outcome"] == "cancelled"
    assert record["output_tokens"] < 200


def test_iam_signer_uses_the_botocore_chain_and_sends_the_end_user() -> None:
    sign = iam_signer("user-7", "eu-west-1")

    headers = sign("GET", "https://abc123.lambda-url.eu-west-1.on.aws/usage", {}, None)

    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=testing/")
    assert headers["X-Amz-Security-Token"] == "testing"
    assert headers["X-End-User-Id"] == "user-7"
