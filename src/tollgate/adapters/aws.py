"""boto3 clients built once per process, with timeouts short enough to fail closed in seconds."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tollgate.errors import DependencyUnavailable

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

T = TypeVar("T")

# Enough pooled connections for the thread pool that runs boto3 calls off the event loop.
MAX_POOL_CONNECTIONS = 64
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class ClientProfile:
    """How a client waits and retries (hashable, so clients are cached per profile)."""

    connect_timeout_s: float
    read_timeout_s: float
    max_attempts: int
    retry_mode: Literal["standard", "adaptive"] = "standard"

    def config(self) -> Config:
        return Config(
            connect_timeout=self.connect_timeout_s,
            read_timeout=self.read_timeout_s,
            retries={"mode": self.retry_mode, "total_max_attempts": self.max_attempts},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            tcp_keepalive=True,
            # Our requests are built by code, not users: skip botocore's per-call schema walk.
            parameter_validation=False,
        )


def request_profile(
    timeout_s: float = DEFAULT_TIMEOUT_S, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> ClientProfile:
    """For calls a client request waits on: boto3's defaults (60 s read timeout, legacy
    retries) would turn an outage into minutes of waiting; this fails closed in seconds."""
    return ClientProfile(timeout_s, timeout_s, max_attempts)


# The aggregator's batch work: adaptive retries back off (with jitter and a client-side rate
# limiter) on the throttling that FilterLogEvents and PutMetricData raise under load.
BATCH_PROFILE = ClientProfile(
    connect_timeout_s=5, read_timeout_s=30, max_attempts=10, retry_mode="adaptive"
)


@lru_cache(maxsize=16)
def aws_client(service: str, profile: ClientProfile) -> Any:
    """Every boto3 client of the process, built once per (service, profile).

    The endpoint comes from boto3's own environment (AWS_ENDPOINT_URL_<SERVICE>).
    """
    return boto3.client(service, config=profile.config())  # type: ignore[call-overload]


def dynamodb_client(
    timeout_s: float = DEFAULT_TIMEOUT_S, max_attempts: int = DEFAULT_MAX_ATTEMPTS
) -> DynamoDBClient:
    return cast("DynamoDBClient", aws_client("dynamodb", request_profile(timeout_s, max_attempts)))


_executor: ThreadPoolExecutor | None = None


def blocking_executor() -> ThreadPoolExecutor:
    """Threads that run boto3's blocking calls off the event loop (one pool per process)."""
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=MAX_POOL_CONNECTIONS, thread_name_prefix="aws")
    return _executor


async def run_blocking(function: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        blocking_executor(), functools.partial(function, *args, **kwargs)
    )


_UNAVAILABLE_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "LimitExceededException",
    }
)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def is_condition_failure(exc: ClientError) -> bool:
    return error_code(exc) == "ConditionalCheckFailedException"


def item_on_failure(exc: ClientError) -> dict[str, Any] | None:
    """The item as it was, from ReturnValuesOnConditionCheckFailure=ALL_OLD (None if absent)."""
    item = cast(Mapping[str, Any], exc.response).get("Item")
    return dict(item) if item is not None else None


def as_unavailable(exc: Exception) -> DependencyUnavailable | None:
    """The domain error for an AWS failure that means 'try again shortly', else None."""
    if isinstance(exc, BotoCoreError):
        return DependencyUnavailable("the database is unavailable", retry_after=2)
    if isinstance(exc, ClientError) and error_code(exc) in _UNAVAILABLE_CODES:
        return DependencyUnavailable("the database is busy", retry_after=2)
    return None
