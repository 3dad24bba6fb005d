"""Secrets Manager, through Powertools Parameters, cached for minutes (not the 5 s default)."""

from __future__ import annotations

SECRET_MAX_AGE_S = 600


def resolve_secret(arn: str | None) -> str | None:
    if not arn:
        return None
    from aws_lambda_powertools.utilities import parameters

    value = parameters.get_secret(arn, max_age=SECRET_MAX_AGE_S)
    return value if isinstance(value, str) else None
