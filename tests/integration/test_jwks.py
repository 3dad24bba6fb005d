"""JWKS identity over real HTTP: a key set served on 127.0.0.1, the gateway configured with
JWKS_URL (no shared secret), issuer and audience; RS256 and ES256 tokens by kid."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.servers import serve

pytestmark = pytest.mark.integration

ISSUER = "https://issuer.example/pool"
AUDIENCE = "tollgate-client"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_jwk(private_key: Any, kid: str) -> dict[str, Any]:
    if isinstance(private_key, rsa.RSAPrivateKey):
        key = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private_key.public_key()))
        return {**key, "kid": kid, "alg": "RS256", "use": "sig"}
    key = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(private_key.public_key()))
    return {**key, "kid": kid, "alg": "ES256", "use": "sig"}


@dataclass
class KeyServer:
    """The identity provider's JWKS endpoint: switchable key set, counted fetches."""

    url: str = ""
    keys: list[dict[str, Any]] = field(default_factory=list)
    hits: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, *keys: dict[str, Any]) -> None:
        with self.lock:
            self.keys = list(keys)


@pytest.fixture
def key_server() -> Iterator[KeyServer]:
    server = KeyServer()

    async def jwks(request: Request) -> JSONResponse:
        with server.lock:
            server.hits += 1
            return JSONResponse({"keys": server.keys})

    app = Starlette(routes=[Route("/.well-known/jwks.json", jwks)])
    with serve(app) as url:
        server.url = url + "/.well-known/jwks.json"
        yield server


RSA_1 = rsa_key()
EC_1 = ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def jwks_gateway(gateway_factory: Any, key_server: KeyServer) -> Iterator[Any]:
    key_server.publish(public_jwk(RSA_1, "rsa-1"), public_jwk(EC_1, "ec-1"))
    with gateway_factory(
        jwt_secret=None, jwks_url=key_server.url, jwt_issuer=ISSUER, jwt_audience=AUDIENCE
    ) as gateway:
        yield gateway


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, **overrides}


def token(key: Any, kid: str, alg: str | None = None, **overrides: Any) -> str:
    alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


def get_usage(gateway: Any, bearer: str) -> Any:
    return gateway.http.get("/usage", headers={"Authorization": f"Bearer {bearer}"})


def assert_401(response: Any) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize(("key", "kid"), [(RSA_1, "rsa-1"), (EC_1, "ec-1")], ids=["RS256", "ES256"])
def test_tokens_signed_by_a_published_key_are_accepted(jwks_gateway, key, kid) -> None:
    # Given a token signed by a key of the provider's JWKS, naming its kid
    # When calling the gateway over HTTP
    response = get_usage(jwks_gateway, token(key, kid))
    # Then the caller is the token's subject
    assert response.status_code == 200, response.text
    assert response.json()["tokens_used"] == 0


@pytest.mark.parametrize(
    "overrides",
    [
        {"exp": int(time.time()) - 120},
        {"nbf": int(time.time()) + 3600},
        {"iss": "https://evil.example/pool"},
        {"aud": "another-client"},
    ],
    ids=["expired", "nbf-in-future", "wrong-iss", "wrong-aud"],
)
def test_claims_outside_the_configuration_are_401(jwks_gateway, overrides) -> None:
    # Given a properly signed RS256 token whose claims do not fit
    bearer = token(RSA_1, "rsa-1", **overrides)
    # Then it is refused
    assert_401(get_usage(jwks_gateway, bearer))


def test_alg_none_is_401(jwks_gateway) -> None:
    # Given an unsigned token naming a published kid
    bearer = jwt.encode(claims(), None, algorithm="none", headers={"kid": "rsa-1"})
    # Then it is refused
    assert_401(get_usage(jwks_gateway, bearer))


def test_hs256_signed_with_the_public_key_is_401(jwks_gateway) -> None:
    # Given the algorithm-confusion attack: HS256 with the provider's public key as the secret
    public_pem = RSA_1.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    header = {"alg": "HS256", "kid": "rsa-1", "typ": "JWT"}
    hmac = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
    signing_input = ".".join(
        jwt.utils.base64url_encode(json.dumps(part).encode()).decode()
        for part in (header, claims())
    )
    signature = jwt.utils.base64url_encode(hmac.sign(signing_input.encode(), public_pem)).decode()
    # Then it is refused (no HS256 secret is configured; the JWK is never an HMAC key)
    assert_401(get_usage(jwks_gateway, f"{signing_input}.{signature}"))


def test_a_key_not_in_the_set_is_401(jwks_gateway) -> None:
    # Given a token signed by a stranger's key under a published kid, and one under an unknown kid
    stranger = rsa_key()
    for bearer in (token(stranger, "rsa-1"), token(stranger, "rsa-unknown")):
        # Then both are refused
        assert_401(get_usage(jwks_gateway, bearer))


def test_the_key_set_is_cached_not_fetched_per_request(jwks_gateway, key_server) -> None:
    # Given several requests with tokens of both published keys
    for _ in range(5):
        for key, kid in ((RSA_1, "rsa-1"), (EC_1, "ec-1")):
            assert get_usage(jwks_gateway, token(key, kid)).status_code == 200
    # Then the provider was asked for its keys once
    assert key_server.hits == 1


def rotate(gateway: Any, key_server: KeyServer) -> rsa.RSAPrivateKey:
    """Use rsa-1, then publish a set where rsa-2 replaces it; return rsa-2's private key."""
    assert get_usage(gateway, token(RSA_1, "rsa-1")).status_code == 200
    rsa_2 = rsa_key()
    key_server.publish(public_jwk(rsa_2, "rsa-2"), public_jwk(EC_1, "ec-1"))
    # The gateway may refuse to refetch more than once a second (a kid-flooding guard).
    time.sleep(1.2)
    return rsa_2


def test_after_rotation_a_token_with_the_new_kid_is_accepted(jwks_gateway, key_server) -> None:
    # Given the provider rotated to a new key (new kid) after the gateway cached the old set
    rsa_2 = rotate(jwks_gateway, key_server)
    # When a token signed by the new key arrives
    response = get_usage(jwks_gateway, token(rsa_2, "rsa-2"))
    # Then the gateway refetches the set on the unknown kid and accepts it
    assert response.status_code == 200, response.text
    assert key_server.hits == 2


def test_after_rotation_a_token_with_a_removed_kid_is_refused(jwks_gateway, key_server) -> None:
    # Given the provider removed rsa-1, and the gateway refetched the set for the new kid
    rsa_2 = rotate(jwks_gateway, key_server)
    assert get_usage(jwks_gateway, token(rsa_2, "rsa-2")).status_code == 200
    # When a token signed by the removed key arrives
    response = get_usage(jwks_gateway, token(RSA_1, "rsa-1"))
    # Then it is refused
    assert_401(response)
