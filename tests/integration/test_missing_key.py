"""An OpenAI key that is not there yet is not an outage (the stack creates its secret empty).

The gateway starts through the same build as in Lambda, reads the secret from moto's
Secrets Manager over HTTP, and serves /health; chat is refused with 502
upstream_misconfigured, nothing charged and nothing sent upstream, until the key appears.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import boto3
import httpx
import pytest

from tests.gateway_fixture import Gateway, GatewayFactory
from tests.offline_fixture import OfflineModelClient
from tollgate.adapters import aws, secrets

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient

pytestmark = pytest.mark.integration


@pytest.fixture
def secretsmanager(
    moto_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[SecretsManagerClient]:
    # The gateway's own client finds moto the way boto3 does in Lambda: by its environment.
    monkeypatch.setenv("AWS_ENDPOINT_URL_SECRETS_MANAGER", moto_endpoint)
    aws.aws_client.cache_clear()
    secrets._provider.cache_clear()
    yield boto3.client("secretsmanager", endpoint_url=moto_endpoint)
    aws.aws_client.cache_clear()
    secrets._provider.cache_clear()


def empty_secret(client: SecretsManagerClient) -> str:
    """As the template creates it: no SecretString at all, so it has no value yet."""
    return client.create_secret(Name=f"openai-key-{uuid.uuid4().hex[:8]}")["ARN"]


def assert_refused_without_upstream(gateway: Gateway, offline_model: OfflineModelClient) -> None:
    chat = gateway.chat("Hello")
    assert chat.status_code == 502
    assert chat.json()["error"]["code"] == "upstream_misconfigured"
    completions = gateway.http.post(
        "/v1/chat/completions",
        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]},
        headers=gateway.headers(),
    )
    assert completions.status_code == 502
    assert completions.json()["error"]["code"] == "upstream_misconfigured"
    assert offline_model.requests() == []
    assert gateway.usage()["tokens_used"] == 0
    assert gateway.usage()["cost_used_usd"] == 0


def chat_once_the_key_is_read(gateway: Gateway, timeout_s: float = 10.0) -> httpx.Response:
    deadline = time.monotonic() + timeout_s
    while True:
        response = gateway.chat("Hello")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def test_an_empty_secret_starts_refuses_chat_and_picks_the_key_up_later(
    gateway_factory: GatewayFactory,
    secretsmanager: SecretsManagerClient,
    offline_model: OfflineModelClient,
) -> None:
    # Given the key secret as the stack creates it: empty
    arn = empty_secret(secretsmanager)
    # When the gateway starts
    with gateway_factory(
        openai_api_key=None, openai_api_key_secret_arn=arn, secret_max_age_s=0.2
    ) as gateway:
        # Then it is ready, and chat is refused before anything is charged or sent upstream
        assert gateway.http.get("/health").status_code == 200
        assert_refused_without_upstream(gateway, offline_model)

        # When the operator fills the secret
        secretsmanager.put_secret_value(SecretId=arn, SecretString="offline")

        # Then a later request finds the key on the periodic re-read and streams
        response = chat_once_the_key_is_read(gateway)
        assert response.status_code == 200
        assert "data: [DONE]" in response.text
        assert len(offline_model.requests()) == 1


def test_a_console_key_value_secret_is_read(
    gateway_factory: GatewayFactory,
    secretsmanager: SecretsManagerClient,
    offline_model: OfflineModelClient,
) -> None:
    # Given a secret made with the console's key/value editor
    arn = secretsmanager.create_secret(
        Name=f"openai-key-{uuid.uuid4().hex[:8]}",
        SecretString=json.dumps({"OPENAI_API_KEY": "offline"}),
    )["ARN"]
    # When the gateway starts with it, Then chat streams
    with gateway_factory(openai_api_key=None, openai_api_key_secret_arn=arn) as gateway:
        response = gateway.chat("Hello")
        assert response.status_code == 200
        assert "data: [DONE]" in response.text


def test_a_json_secret_without_a_key_field_is_refused_with_a_clear_log_line(
    gateway_factory: GatewayFactory,
    secretsmanager: SecretsManagerClient,
    offline_model: OfflineModelClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    arn = secretsmanager.create_secret(
        Name=f"openai-key-{uuid.uuid4().hex[:8]}",
        SecretString=json.dumps({"username": "svc-user", "password": "not-a-key-value"}),
    )["ARN"]
    with (
        caplog.at_level(logging.ERROR, logger="tollgate.secrets"),
        gateway_factory(openai_api_key=None, openai_api_key_secret_arn=arn) as gateway,
    ):
        assert gateway.http.get("/health").status_code == 200
        assert_refused_without_upstream(gateway, offline_model)
    messages = [record.getMessage() for record in caplog.records]
    assert any("JSON without one key field" in message for message in messages), messages
    assert not any("not-a-key-value" in message for message in messages)


def test_an_empty_key_variable_refuses_chat_without_calling_upstream(
    gateway_factory: GatewayFactory, offline_model: OfflineModelClient
) -> None:
    # Given OPENAI_API_KEY set but empty, and no secret
    with gateway_factory(openai_api_key="") as gateway:
        # Then the gateway serves, and refuses chat without sending anything upstream
        assert gateway.http.get("/health").status_code == 200
        assert_refused_without_upstream(gateway, offline_model)
        records: list[dict[str, Any]] = gateway.wait_for_records(2)
        assert {record["outcome"] for record in records} == {"upstream_error"}
        assert {record["cost_usd"] for record in records} == {0}
