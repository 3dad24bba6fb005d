"""CORS (CORS_ALLOW_ORIGINS): only the configured origins, no credentials, X-Request-Id exposed."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration

ALLOWED = "https://app.example"
OTHER = "https://evil.example"


def preflight(gateway: Any, origin: str, path: str = "/chat") -> Any:
    return gateway.http.options(
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def cors_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower().startswith("access-control-")}


@pytest.fixture
def cors_gateway(gateway_factory: Any) -> Any:
    with gateway_factory(cors_allow_origins=(ALLOWED,)) as gateway:
        yield gateway


def test_preflight_from_the_allowed_origin_gets_the_allow_headers(cors_gateway) -> None:
    # Given a gateway that allows https://app.example
    # When that origin sends a preflight for POST /chat with Authorization
    response = preflight(cors_gateway, ALLOWED)
    # Then it is allowed, for that origin only, without credentials
    assert response.status_code == 200
    headers = response.headers
    assert headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in headers["access-control-allow-methods"]
    allowed_headers = headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed_headers
    assert "content-type" in allowed_headers
    assert "access-control-allow-credentials" not in headers


def test_actual_request_from_the_allowed_origin_exposes_the_request_id(cors_gateway) -> None:
    # When the allowed origin sends the real request
    response = cors_gateway.http.post(
        "/chat",
        json={"message": "Hi"},
        headers={**cors_gateway.headers(), "Origin": ALLOWED},
    )
    # Then the browser may read X-Request-Id (for the cancel endpoint) and Retry-After
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed
    assert "retry-after" in exposed
    assert response.headers["x-request-id"]
    assert "access-control-allow-credentials" not in response.headers
    # And a refusal carries the same headers, so the page can show it
    refused = cors_gateway.http.get("/usage", headers={"Origin": ALLOWED})
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ALLOWED


def test_another_origin_gets_no_cors_headers(cors_gateway) -> None:
    # When another origin sends a preflight and a real request
    refused = preflight(cors_gateway, OTHER)
    actual = cors_gateway.http.get("/usage", headers={**cors_gateway.headers(), "Origin": OTHER})
    # Then the preflight is refused and neither response grants anything
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers
    assert actual.status_code == 200
    assert "access-control-allow-origin" not in actual.headers
    assert "access-control-allow-credentials" not in actual.headers


def test_without_the_setting_there_are_no_cors_headers(gateway) -> None:
    # Given the default configuration (no CORS_ALLOW_ORIGINS)
    # When an origin sends a preflight and a real request
    options = preflight(gateway, ALLOWED)
    actual = gateway.http.get("/usage", headers={**gateway.headers(), "Origin": ALLOWED})
    # Then no CORS header at all: browsers keep other origins out
    assert options.status_code == 405
    assert cors_headers(options) == {}
    assert actual.status_code == 200
    assert cors_headers(actual) == {}
