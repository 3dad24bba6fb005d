"""The process's boto3 session: botocore's endpoint table cut to our services, same endpoints."""

from __future__ import annotations

from typing import Any

import boto3
import botocore.session
import pytest
from botocore.config import Config

from tollgate.adapters import aws

REGIONS = ["us-east-1", "eu-west-3", "ap-southeast-2", "cn-north-1", "us-gov-west-1"]


def described(client: Any) -> tuple[str, str, str]:
    signer = client._request_signer
    return client.meta.endpoint_url, client.meta.region_name, signer.signing_name


@pytest.fixture(scope="module")
def whole() -> boto3.session.Session:
    """A session with botocore's whole endpoint table."""
    return boto3.session.Session(botocore_session=botocore.session.get_session())


@pytest.fixture
def credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_DYNAMODB", "AWS_ENDPOINT_URL_SNS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    aws.aws_session.cache_clear()


@pytest.mark.usefixtures("credentials")
@pytest.mark.parametrize("service", sorted(aws.ENDPOINT_PREFIXES))
@pytest.mark.parametrize("region", REGIONS)
@pytest.mark.parametrize("fips", [False, True])
def test_every_service_resolves_as_with_the_whole_table(
    service: str, region: str, fips: bool, whole: boto3.session.Session
) -> None:
    config = Config(region_name=region, use_fips_endpoint=fips)
    try:
        expected = described(whole.client(service, config=config))  # type: ignore[call-overload]
    except Exception as exc:  # a FIPS endpoint that does not exist must fail the same way
        with pytest.raises(type(exc)):
            aws.aws_session().create_client(service, config=config)  # type: ignore[call-overload]
        return
    assert described(aws.aws_session().create_client(service, config=config)) == expected  # type: ignore[call-overload]


@pytest.mark.usefixtures("credentials")
def test_the_endpoint_table_keeps_only_our_services() -> None:
    aws.aws_session().create_client("dynamodb", region_name="us-east-1")
    resolver = aws.aws_session()._get_internal_component("endpoint_resolver")
    partitions = resolver._endpoint_data["partitions"]
    assert len(partitions) >= 8  # every partition is kept whole ...
    for partition in partitions:  # ... but lists only the services we call
        assert set(partition["services"]) <= set(aws.ENDPOINT_PREFIXES.values())
    assert "dynamodb" in partitions[0]["services"]


def test_a_service_without_an_endpoint_prefix_is_refused() -> None:
    with pytest.raises(ValueError, match="ENDPOINT_PREFIXES"):
        aws.aws_client("sqs", aws.request_profile())
