"""Secrets Manager, through Powertools Parameters, cached for minutes (not the 5 s default)."""

from __future__ import annotations

import time
from collections.abc import Callable

from tollgate.adapters.aws import run_blocking

SECRET_MAX_AGE_S = 600


def resolve_secret(arn: str | None) -> str | None:
    if not arn:
        return None
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(arn, max_age=SECRET_MAX_AGE_S)
    return value if isinstance(value, str) else None


class RotatingSecret:
    """A secret re-read at most every `max_age_s`, off the event loop: rotations reach
    running instances within minutes, without a fetch per request."""

    def __init__(
        self,
        arn: str,
        *,
        max_age_s: float = SECRET_MAX_AGE_S,
        fetch: Callable[[str], str | None] = resolve_secret,
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
        if time.monotonic() - self._fetched_at > self._max_age_s:
            self._value = await run_blocking(self._fetch, self._arn)
            self._fetched_at = time.monotonic()
        return self._value

    def expire(self) -> None:
        """Upstream refused the value: read it again on the next request."""
        self._fetched_at = float("-inf")
