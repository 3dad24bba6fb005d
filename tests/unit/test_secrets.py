"""Secrets that rotate: the OpenAI key is re-read from Secrets Manager within minutes."""

from __future__ import annotations

import asyncio

from openai import AsyncOpenAI

from tollgate.adapters.secrets import RotatingSecret
from tollgate.adapters.upstream import OpenAIUpstream

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
