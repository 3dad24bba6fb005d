"""boto3 clients built once per process, with timeouts short enough to fail closed in seconds."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from botocore.loaders import JSONFileLoader, Loader

from tollgate.errors import DependencyUnavailable

if TYPE_CHECKING:
    pass

T = TypeVar("T")

# Enough pooled connections for the thread pool that runs boto3 calls off the event loop.
MAX_POOL_CONNECTIONS = 64
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_MAX_ATTEMPTS = 3
# Every service this package builds a client for, by its endpoint prefix in botocore's
# endpoints.json (CloudWatch's is "monitoring").
ENDPOINT_PREFIXES = {
    "dynamodb": "dynamodb",
    "sns": "sns",
    "secretsmanager": "secretsmanager",
    "logs": "logs",
    "cloudwatch": "monitoring",
}


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


class CalledServicesFileLoader(JSONFileLoader):
    """botocore's data files, with the endpoint table cut to the services we call.

    botocore keeps endpoints.json (every partition's every service) as Python objects for as
    long as a client lives: 6.6 MB, 5% of the function's resident memory. The entries kept
    are the ones botocore would use; the partitions (regions, DNS suffixes, defaults) are
    kept whole.
    """

    def load_file(self, file_path: str) -> Any:
        data = super().load_file(file_path)
        if data is not None and os.path.basename(file_path) == "endpoints":
            kept = set(ENDPOINT_PREFIXES.values())
            data["partitions"] = [
                {**partition, "services": _only(partition["services"], kept)}
                for partition in data["partitions"]
            ]
        return data


def _only(services: Mapping[str, Any], kept: set[str]) -> dict[str, Any]:
    return {name: entry for name, entry in services.items() if name in kept}


@lru_cache(maxsize=1)
def aws_session() -> botocore.session.Session:
    """The process's one botocore session (AWS_DATA_PATH and the AWS_* environment honoured).

    botocore's, not boto3's: boto3 adds resources and S3 transfers (2.3 MB resident, 0.1 s of
    start-up) to the same low-level clients.
    """
    session = botocore.session.get_session()
    data_path = session.get_config_variable("data_path")
    extra_paths = (
        [os.path.expanduser(os.path.expandvars(path)) for path in data_path.split(os.pathsep)]
        if data_path
        else None
    )
    loader = Loader(extra_search_paths=extra_paths, file_loader=CalledServicesFileLoader())
    session.register_component("data_loader", loader)
    return session


@lru_cache(maxsize=16)
def aws_client(service: str, profile: ClientProfile) -> Any:
    """Every boto3 client of the process, built once per (service, profile).

    The endpoint comes from boto3's own environment (AWS_ENDPOINT_URL_<SERVICE>).
    """
    if service not in ENDPOINT_PREFIXES:
        raise ValueError(f"add {service!r}'s endpoint prefix to ENDPOINT_PREFIXES first")
    return aws_session().create_client(service, config=profile.config())


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
