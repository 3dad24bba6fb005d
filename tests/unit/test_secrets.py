"""Secrets that rotate: the OpenAI key is re-read from Secrets Manager within minutes."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

from tollgate.adapters.secrets import (
    MISSING_KEY_RETRY_S,
    FixedSecret,
    RotatingSecret,
    openai_key_from_secret,
)
from tollgate.adapters.upstream import OpenAIUpstream
from tollgate.errors import UpstreamMisconfigured

ARN = "arn:aws:secretsmanager:us-east-1:123456789012:secret:openai-key"


class SecretsManager:
    """Stands in for Secrets Manager: counts reads, serves the current value."""

    def __init__(self, value: str) -> None:
        self.value = value
        self.reads = 0

    def fetch(self, arn: str) -> str:
        assert arn == ARN
        self.reads += 1
        return self.value


def test_a_fresh_value_is_served_from_memory() -> None:
    # Given a secret read at start-up, cached for ten minutes
    manager = SecretsManager("sk-one")
    secret = RotatingSecret(ARN, max_age_s=600, fetch=manager.fetch)
    assert secret.initial() == "sk-one"

    # When requests ask for it, Then nobody goes back to Secrets Manager
    async def five_requests() -> list[str | None]:
        return [await secret.current() for _ in range(5)]

    assert asyncio.run(five_requests()) == ["sk-one"] * 5
    assert manager.reads == 1


def test_a_stale_or_expired_value_is_read_again() -> None:
    # Given a secret whose value was rotated after it was read
    manager = SecretsManager("sk-one")
    stale = RotatingSecret(ARN, max_age_s=0, fetch=manager.fetch)
    stale.initial()
    manager.value = "sk-two"

    # When it is stale, Then the next request reads the new value
    assert asyncio.run(stale.current()) == "sk-two"

    # And expire() (upstream said 401) forces a read even while it is fresh
    fresh = RotatingSecret(ARN, max_age_s=600, fetch=manager.fetch)
    fresh.initial()
    manager.value = "sk-three"
    assert asyncio.run(fresh.current()) == "sk-two"
    fresh.expire()
    assert asyncio.run(fresh.current()) == "sk-three"


def test_the_upstream_client_switches_to_a_rotated_key() -> None:
    # Given the upstream built with the key read at start-up
    manager = SecretsManager("sk-one")
    secret = RotatingSecret(ARN, max_age_s=0, fetch=manager.fetch)
    client = AsyncOpenAI(api_key=secret.initial(), base_url="http://127.0.0.1:9/v1")
    upstream = OpenAIUpstream(client, attempt_timeout_s=1, api_key=secret)

    # When the key is rotated, Then the next call uses the new key
    manager.value = "sk-two"
    assert asyncio.run(upstream._current_client()).api_key == "sk-two"


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("sk-plain", "sk-plain"),
        ("  sk-plain\n", "sk-plain"),
        ('{"OPENAI_API_KEY": "sk-console"}', "sk-console"),
        ('{"api_key": "sk-console"}', "sk-console"),
        ('{"whatever": "sk-only-field"}', "sk-only-field"),
        ('{"api_key": "sk-named", "note": "prod"}', "sk-named"),
        ("", None),
        (None, None),
        ('{"username": "u", "password": "p"}', None),
        ('{"api_key": ""}', None),
        ('{"api_key": 42}', None),
        ("{not json", None),
    ],
)
def test_the_key_is_read_from_plain_or_key_value_secrets(text: str | None, key: str | None) -> None:
    assert openai_key_from_secret(text) == key


def test_a_missing_key_is_looked_for_again_sooner_and_a_failed_read_keeps_the_key() -> None:
    # Given a secret that is still empty at start-up
    manager = SecretsManager("")
    secret = RotatingSecret(
        ARN, max_age_s=600, fetch=lambda arn: openai_key_from_secret(manager.fetch(arn))
    )
    assert secret.initial() is None
    # When the operator fills it and the missing-key retry interval has passed
    manager.value = "sk-filled"
    secret._fetched_at -= MISSING_KEY_RETRY_S + 1
    # Then the key is picked up
    assert asyncio.run(secret.current()) == "sk-filled"
    # And a later failed read (None) keeps the key that works
    manager.value = ""
    secret.expire()
    assert asyncio.run(secret.current()) == "sk-filled"


def test_without_a_key_nothing_is_sent_upstream() -> None:
    client = AsyncOpenAI(api_key="not-configured", base_url="http://127.0.0.1:9/v1")
    upstream = OpenAIUpstream(client, attempt_timeout_s=1, api_key=FixedSecret(""))
    with pytest.raises(UpstreamMisconfigured, match="no OpenAI API key"):
        asyncio.run(upstream.open_stream(["gpt-4o-mini"], [], max_tokens=1, deadline=float("inf")))
