"""The DynamoDB client's SigV4 signatures are botocore's, header for header."""

from __future__ import annotations

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given
from hypothesis import strategies as st

from tollgate.adapters.dynamodb_http import CONTENT_TYPE, Endpoint, SigV4Signer

AMZ_DATE = "20261202T134651Z"


def botocore_authorization(
    endpoint: Endpoint, headers: dict[str, str], body: bytes, credentials: Credentials
) -> str:
    request = AWSRequest(method="POST", url=endpoint.url, data=body, headers=headers)
    request.context["timestamp"] = AMZ_DATE
    auth = SigV4Auth(credentials, "dynamodb", endpoint.region)
    canonical = auth.canonical_request(request)
    signature = auth.signature(auth.string_to_sign(request, canonical), request)
    return auth._inject_signature_to_request(request, signature).headers["Authorization"]  # type: ignore[attr-defined, no-any-return]


def our_headers(
    endpoint: Endpoint, body: bytes, credentials: Credentials, target: str
) -> dict[str, str]:
    host, _, _, path, _ = endpoint.parts
    signer = SigV4Signer(endpoint.region, host, path)
    return signer.headers(target, body, credentials.get_frozen_credentials(), AMZ_DATE)


@pytest.mark.parametrize(
    ("url", "region", "token"),
    [
        ("https://dynamodb.us-east-1.amazonaws.com", "us-east-1", None),
        (
            "https://dynamodb.eu-central-1.amazonaws.com",
            "eu-central-1",
            "session-token/with+signs=",
        ),
        ("https://dynamodb-fips.us-gov-west-1.amazonaws.com", "us-gov-west-1", "t"),
        ("http://127.0.0.1:8000", "us-east-1", None),
        ("https://dynamodb.cn-north-1.amazonaws.com.cn:443", "cn-north-1", None),
    ],
)
def test_the_signature_is_botocores(url: str, region: str, token: str | None) -> None:
    # Given an endpoint, credentials and a request body
    endpoint = Endpoint(url, region)
    credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    body = b'{"TableName":"usage","Key":{"pk":{"S":"USER#alice"},"sk":{"S":"DAY#2026-12-02"}}}'

    # When this client signs it
    headers = our_headers(endpoint, body, credentials, "DynamoDB_20120810.UpdateItem")

    # Then botocore, given the same headers, computes the same Authorization header
    unsigned = {name: value for name, value in headers.items() if name != "authorization"}
    assert headers["authorization"] == botocore_authorization(endpoint, unsigned, body, credentials)
    assert headers["content-type"] == CONTENT_TYPE
    assert ("x-amz-security-token" in headers) == (token is not None)


@given(body=st.binary(max_size=2048), operation=st.sampled_from(["GetItem", "Query", "PutItem"]))
def test_any_body_signs_as_botocore_signs_it(body: bytes, operation: str) -> None:
    endpoint = Endpoint("https://dynamodb.us-west-2.amazonaws.com", "us-west-2")
    credentials = Credentials("AKID", "secret", "token")
    headers = our_headers(endpoint, body, credentials, f"DynamoDB_20120810.{operation}")
    unsigned = {name: value for name, value in headers.items() if name != "authorization"}
    assert headers["authorization"] == botocore_authorization(endpoint, unsigned, body, credentials)


def test_the_signing_key_follows_the_day_and_the_secret() -> None:
    # Given one signer used across midnight and across a credentials rotation
    signer = SigV4Signer("us-east-1", "dynamodb.us-east-1.amazonaws.com", "/")
    first = Credentials("AKID", "secret-1").get_frozen_credentials()
    rotated = Credentials("AKID", "secret-2").get_frozen_credentials()

    def signature(credentials: object, amz_date: str) -> str:
        headers = signer.headers("DynamoDB_20120810.GetItem", b"{}", credentials, amz_date)  # type: ignore[arg-type]
        return headers["authorization"].rpartition("Signature=")[2]

    # Then each signature is the one a fresh signer computes
    for credentials, amz_date in [
        (first, "20261202T235959Z"),
        (first, "20261203T000001Z"),
        (rotated, "20261203T000002Z"),
    ]:
        fresh = SigV4Signer("us-east-1", "dynamodb.us-east-1.amazonaws.com", "/")
        expected = fresh.headers("DynamoDB_20120810.GetItem", b"{}", credentials, amz_date)
        assert (
            signature(credentials, amz_date)
            == expected["authorization"].rpartition("Signature=")[2]
        )
