"""Shared fixtures: real servers on 127.0.0.1 (moto for AWS), fresh tables per test."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING

import boto3
import pytest

from tests.observed_dynamodb import ObservedDynamoDB
from tests.servers import free_port

pytest_plugins = ["tests.offline_fixture", "tests.gateway_fixture", "tests.fault_proxy"]

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

# Tests never talk to real AWS: fake credentials and a fixed region for every boto3 client.
os.environ.update(
    AWS_ACCESS_KEY_ID="testing",
    AWS_SECRET_ACCESS_KEY="testing",
    AWS_SESSION_TOKEN="testing",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_REGION="us-east-1",
)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server for the session, speaking the real AWS HTTP protocols on 127.0.0.1."""
    from tollgate.local.moto_server import SerializedMotoServer

    port = free_port()
    server = SerializedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    # The gateway's own boto3 clients find the local server the way `make run` points them.
    os.environ["AWS_ENDPOINT_URL_DYNAMODB"] = endpoint
    try:
        yield endpoint
    finally:
        server.stop()


@pytest.fixture
def dynamodb(moto_endpoint: str) -> DynamoDBClient:
    return boto3.client("dynamodb", endpoint_url=moto_endpoint)


@pytest.fixture
def db(moto_endpoint: str) -> ObservedDynamoDB:
    """The gateway's own DynamoDB client (tollgate.adapters.dynamodb_http) on the moto server."""
    return ObservedDynamoDB.from_environment(endpoint_url=moto_endpoint)


@pytest.fixture
def table_names(dynamodb: DynamoDBClient) -> dict[str, str]:
    """Fresh tables for this test, created from template.yaml's definitions."""
    from tollgate.local.tables import create_tables

    suffix = uuid.uuid4().hex[:8]
    names = {"UsageTable": f"usage-{suffix}", "ConversationsTable": f"conversations-{suffix}"}
    create_tables(dynamodb, names)
    return names
