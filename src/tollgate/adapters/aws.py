"""boto3 clients built once per process, with timeouts short enough to fail closed in seconds."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config

from tollgate.settings import get_settings

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Enough pooled connections for the thread pool that runs boto3 calls off the event loop.
MAX_POOL_CONNECTIONS = 64


def dynamodb_config(timeout_s: float, max_attempts: int) -> Config:
    # boto3's defaults (60 s read timeout, legacy retries) turn an outage into minutes of waiting.
    return Config(
        connect_timeout=timeout_s,
        read_timeout=timeout_s,
        retries={"mode": "standard", "total_max_attempts": max_attempts},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        tcp_keepalive=True,
    )


@lru_cache(maxsize=1)
def dynamodb_client() -> DynamoDBClient:
    settings = get_settings()
    return boto3.client(
        "dynamodb",
        config=dynamodb_config(settings.dynamodb_timeout_s, settings.dynamodb_max_attempts),
    )
