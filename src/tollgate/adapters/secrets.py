"""Secrets Manager through Powertools Parameters, and the OpenAI key that may not be there yet.

The stack creates the OpenAI key secret empty and the operator fills it after the first
deploy, so a missing, empty or unreadable key is a state to serve through (chat answers 502
`upstream_misconfigured`), never a start-up crash: the key is picked up on a later read.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, cast

from tollgate.adapters.aws import aws_client, request_profile, run_blocking

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider
    from mypy_boto3_secretsmanager import SecretsManagerClient

SECRET_MAX_AGE_S = 600
# While the key is missing, look again this often (an operator is probably filling it now).
MISSING_KEY_RETRY_S = 30.0
# Names under which the console's "key/value" secret type may hold the key.
OPENAI_KEY_FIELDS = ("OPENAI_API_KEY", "openai_api_key", "api_key", "apiKey", "key")
SECRETS_TIMEOUT_S = 3.0

log = logging.getLogger("tollgate.secrets")


@cache
def _provider() -> SecretsProvider:
    from aws_lambda_powertools.utilities.parameters import SecretsProvider

    client = cast(
        "SecretsManagerClient", aws_client("secretsmanager", request_profile(SECRETS_TIMEOUT_S))
    )
    return SecretsProvider(boto3_client=client)


def resolve_secret(arn: str | None) -> str | None:
    """The secret's string; every read goes to Secrets Manager (callers keep their own copy)."""
    if not arn:
        return None
    value = _provider().get(arn, force_fetch=True)
    return value if isinstance(value, str) else None


def openai_key_from_secret(text: str | None) -> str | None:
    """The key in a secret's string: the plain key, or one field of a key/value (JSON) secret.

    Returns None, with a log line saying why, when the secret holds no usable key.
    """
    text = (text or "").strip()
    if not text:
        log.error("the OpenAI API key secret is empty: put the key in it (chat answers 502)")
        return None
    if not text.startswith("{"):
        return text
    try:
        fields = json.loads(text)
    except ValueError:
        log.error("the OpenAI API key secret starts with '{' but is not JSON: refused")
        return None
    if isinstance(fields, dict):
        named = [fields[name] for name in OPENAI_KEY_FIELDS if name in fields]
        values = named or (list(fields.values()) if len(fields) == 1 else [])
        if len(values) == 1 and isinstance(values[0], str) and values[0].strip():
            return values[0].strip()
    log.error(
        "the OpenAI API key secret is JSON without one key field: refused; store the plain key, "
        "or a key/value pair named one of %s",
        ", ".join(OPENAI_KEY_FIELDS),
    )
    return None


def read_openai_key(arn: str) -> str | None:
    """The OpenAI key from its secret, or None (logged) while it is missing or unreadable."""
    from aws_lambda_powertools.utilities.parameters.exceptions import GetParameterError

    try:
        text = resolve_secret(arn)
    except GetParameterError as error:  # an empty secret has no value yet: GetSecretValue fails
        log.error("the OpenAI API key secret cannot be read (chat answers 502): %s", error)
        return None
    return openai_key_from_secret(text)


class RotatingSecret:
    """A secret re-read at most every `max_age_s` (every `MISSING_KEY_RETRY_S` while it has
    no value), off the event loop: rotations reach running instances within minutes, without
    a fetch per request."""

    def __init__(
        self,
        arn: str,
        *,
        max_age_s: float = SECRET_MAX_AGE_S,
        fetch: Callable[[str], str | None] = read_openai_key,
    ) -> None:
        self._arn = arn
        self._max_age_s = max_age_s
        self._fetch = fetch
        self._value: str | None = None
        self._fetched_at = float("-inf")

    def initial(self) -> str | None:
        """Read once at start-up (blocking), so the first request does not wait for it."""
        self._value = self._fetch(self._arn)
        self._fetched_at = time.monotonic()
        return self._value

    async def current(self) -> str | None:
        max_age = self._max_age_s if self._value else min(self._max_age_s, MISSING_KEY_RETRY_S)
        if time.monotonic() - self._fetched_at > max_age:
            # A failed re-read keeps the value that worked until now.
            self._value = await run_blocking(self._fetch, self._arn) or self._value
            self._fetched_at = time.monotonic()
        return self._value

    def expire(self) -> None:
        """Upstream refused the value: read it again on the next request."""
        self._fetched_at = float("-inf")


class FixedSecret:
    """A value from the environment (OPENAI_API_KEY), possibly empty: never re-read."""

    def __init__(self, value: str | None) -> None:
        self._value = value or None

    def initial(self) -> str | None:
        return self._value

    async def current(self) -> str | None:
        return self._value

    def expire(self) -> None:
        """Nothing to re-read: the environment does not change under a running process."""
