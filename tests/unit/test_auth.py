"""Identity (docs/CONTRACTS.md "Identity"): JWT (HS256 secret or RS256 via JWKS) or trusted IAM."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tollgate.auth import ACCEPTED_ALGORITHMS, Authenticator, JwtConfig
from tollgate.errors import Unauthenticated

SECRET = "unit-test-secret-" + "s" * 48
IAM_CONTEXT = json.dumps(
    {"authorizer": {"iam": {"userArn": "arn:aws:iam::123456789012:role/backend"}}}
)


def hs256(claims: dict[str, Any], secret: str = SECRET, **kwargs: Any) -> str:
    return jwt.encode(claims, secret, algorithm="HS256", **kwargs)


def claims(sub: str = "user-1", exp_in: float = 300, **extra: Any) -> dict[str, Any]:
    return {"sub": sub, "exp": int(time.time() + exp_in), **extra}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture
def hs_auth() -> Authenticator:
    return Authenticator("jwt", JwtConfig(secret=SECRET))


def assert_refused(auth: Authenticator, headers: dict[str, str]) -> None:
    with pytest.raises(Unauthenticated) as excinfo:
        auth.user_id(headers)
    assert (excinfo.value.status, excinfo.value.code) == (401, "unauthenticated")


# --- HS256 -------------------------------------------------------------------------------


def test_valid_hs256_token_gives_sub(hs_auth: Authenticator) -> None:
    # Given a token signed with the shared secret
    # When authenticating
    # Then the user id is the sub claim
    assert hs_auth.user_id(bearer(hs256(claims("alice")))) == "alice"


def test_bearer_scheme_is_case_insensitive(hs_auth: Authenticator) -> None:
    assert hs_auth.user_id({"authorization": f"bearer {hs256(claims())}"}) == "user-1"


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"authorization": ""},
        {"authorization": "Bearer"},
        {"authorization": "Bearer   "},
        {"authorization": "Basic dXNlcjpwYXNz"},
        {"authorization": "Token abc"},
        {"authorization": "Bearer not.a.jwt"},
        {"authorization": "Bearer garbage"},
    ],
)
def test_missing_or_malformed_authorization_is_refused(
    hs_auth: Authenticator, headers: dict[str, str]
) -> None:
    assert_refused(hs_auth, headers)


def test_wrong_scheme_with_valid_token_is_refused(hs_auth: Authenticator) -> None:
    assert_refused(hs_auth, {"authorization": f"Token {hs256(claims())}"})


def test_wrong_secret_is_refused(hs_auth: Authenticator) -> None:
    assert_refused(hs_auth, bearer(hs256(claims(), secret="another-secret-" + "z" * 48)))


def test_tampered_payload_is_refused(hs_auth: Authenticator) -> None:
    # Given a valid token whose payload is swapped for another user's
    header, _, signature = hs256(claims("alice")).split(".")
    forged_payload = b64url(json.dumps(claims("mallory")).encode())
    assert_refused(hs_auth, bearer(f"{header}.{forged_payload}.{signature}"))


def test_expired_beyond_leeway_is_refused(hs_auth: Authenticator) -> None:
    # Given a token that expired 60 s ago (leeway is 30 s)
    assert_refused(hs_auth, bearer(hs256(claims(exp_in=-60))))


def test_expired_within_leeway_is_accepted(hs_auth: Authenticator) -> None:
    # Given a token that expired 10 s ago
    assert hs_auth.user_id(bearer(hs256(claims(exp_in=-10)))) == "user-1"


def test_token_without_exp_is_refused(hs_auth: Authenticator) -> None:
    assert_refused(hs_auth, bearer(hs256({"sub": "user-1"})))


def test_token_without_sub_is_refused(hs_auth: Authenticator) -> None:
    assert_refused(hs_auth, bearer(hs256({"exp": int(time.time()) + 300})))


@pytest.mark.parametrize("sub", ["", "   ", "a\nb", "a\x00b", "tab\tbed", "x" * 129])
def test_invalid_sub_is_refused(hs_auth: Authenticator, sub: str) -> None:
    assert_refused(hs_auth, bearer(hs256(claims(sub))))


def test_sub_of_max_length_is_accepted(hs_auth: Authenticator) -> None:
    assert hs_auth.user_id(bearer(hs256(claims("u" * 128)))) == "u" * 128


def test_alg_none_token_is_refused(hs_auth: Authenticator) -> None:
    # Given an unsigned token claiming alg none
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    for token in (f"{header}.{payload}.", f"{header}.{payload}"):
        assert_refused(hs_auth, bearer(token))


@pytest.mark.parametrize("algorithm", ["HS512", "HS384"])
def test_other_hmac_algorithm_with_same_secret_is_refused(
    hs_auth: Authenticator, algorithm: str
) -> None:
    # Given a token signed with the right secret but an algorithm not configured
    token = jwt.encode(claims(), SECRET, algorithm=algorithm)
    assert_refused(hs_auth, bearer(token))


def test_issuer_and_audience_enforced_when_configured() -> None:
    # Given a configured issuer and audience
    auth = Authenticator("jwt", JwtConfig(secret=SECRET, issuer="https://idp", audience="tollgate"))
    good = claims(iss="https://idp", aud="tollgate")
    # Then a token with both passes
    assert auth.user_id(bearer(hs256(good))) == "user-1"
    # And a wrong or missing issuer / audience is refused
    for bad in (
        {**good, "iss": "https://evil"},
        {**good, "aud": "other-app"},
        {k: v for k, v in good.items() if k != "iss"},
        {k: v for k, v in good.items() if k != "aud"},
    ):
        assert_refused(auth, bearer(hs256(bad)))


def test_issuer_and_audience_not_checked_when_unset(hs_auth: Authenticator) -> None:
    token = hs256(claims(iss="anyone", aud="anything"))
    assert hs_auth.user_id(bearer(token)) == "user-1"


def test_jwt_mode_without_secret_or_jwks_is_a_configuration_error() -> None:
    with pytest.raises(ValueError, match="secret or a JWKS"):
        Authenticator("jwt", JwtConfig())


# --- JWKS / RS256 --------------------------------------------------------------------------


@dataclass
class _SigningKey:
    key: Any


class FakeJwksClient:
    """Stands in for PyJWKClient: hands out the one public key for any token."""

    def __init__(self, public_key: Any) -> None:
        self.public_key = public_key
        self.calls = 0

    def get_signing_key_from_jwt(self, token: str) -> _SigningKey:
        self.calls += 1
        return _SigningKey(self.public_key)


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_auth(rsa_key: rsa.RSAPrivateKey) -> Authenticator:
    client = FakeJwksClient(rsa_key.public_key())
    return Authenticator("jwt", JwtConfig(jwks_url="https://idp/jwks"), jwks_client=client)  # type: ignore[arg-type]


def public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def test_rs256_token_from_jwks_is_accepted(
    jwks_auth: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    # Given a token signed by the identity provider's private key
    token = jwt.encode(claims("carol"), rsa_key, algorithm="RS256", headers={"kid": "k1"})
    # Then its sub is the user
    assert jwks_auth.user_id(bearer(token)) == "carol"


def test_rs256_token_signed_by_another_key_is_refused(jwks_auth: Authenticator) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert_refused(jwks_auth, bearer(jwt.encode(claims(), other, algorithm="RS256")))


def test_expired_rs256_token_is_refused(
    jwks_auth: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    assert_refused(jwks_auth, bearer(jwt.encode(claims(exp_in=-60), rsa_key, algorithm="RS256")))


def test_hs256_forged_with_public_key_pem_is_refused(
    jwks_auth: Authenticator, rsa_key: rsa.RSAPrivateKey
) -> None:
    # Given an attacker who signs HS256 with the public key PEM as the HMAC secret
    pem = public_pem(rsa_key)
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims("mallory")).encode())
    signing_input = f"{header}.{payload}".encode()
    signature = b64url(hmac.new(pem, signing_input, hashlib.sha256).digest())
    forged = f"{header}.{payload}.{signature}"
    # Then algorithm confusion does not work
    assert_refused(jwks_auth, bearer(forged))


def test_hs256_forged_with_public_key_is_refused_even_with_a_secret_configured(
    rsa_key: rsa.RSAPrivateKey,
) -> None:
    # Given both a shared secret and a JWKS configured
    auth = Authenticator(
        "jwt",
        JwtConfig(secret=SECRET, jwks_url="https://idp/jwks"),
        jwks_client=FakeJwksClient(rsa_key.public_key()),  # type: ignore[arg-type]
    )
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims("mallory")).encode())
    signature = hmac.new(public_pem(rsa_key), f"{header}.{payload}".encode(), hashlib.sha256)
    # Then a public-key-signed HS256 token is refused, while both real kinds pass
    assert_refused(auth, bearer(f"{header}.{payload}.{b64url(signature.digest())}"))
    assert auth.user_id(bearer(hs256(claims("dave")))) == "dave"
    assert auth.user_id(bearer(jwt.encode(claims("erin"), rsa_key, algorithm="RS256"))) == "erin"


def test_jwks_mode_refuses_alg_none(jwks_auth: Authenticator) -> None:
    header = b64url(json.dumps({"alg": "none"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    assert_refused(jwks_auth, bearer(f"{header}.{payload}."))


def test_the_accepted_algorithms_are_exactly_the_configured_three() -> None:
    # PyJWT refuses `none` on its own; this pins the gateway's own list.
    assert frozenset({"HS256", "RS256", "ES256"}) == ACCEPTED_ALGORITHMS


@pytest.mark.parametrize("algorithm", ["none", "RS512", "PS256", "EdDSA", ["RS256"], None])
def test_an_algorithm_outside_the_list_is_refused_before_any_key_is_fetched(
    rsa_key: rsa.RSAPrivateKey, algorithm: object
) -> None:
    # Given a JWKS-mode gateway and a token whose header names an algorithm outside the list
    client = FakeJwksClient(rsa_key.public_key())
    auth = Authenticator("jwt", JwtConfig(jwks_url="https://idp/jwks"), jwks_client=client)  # type: ignore[arg-type]
    header = b64url(json.dumps({"alg": algorithm, "kid": "k1"}).encode())
    payload = b64url(json.dumps(claims()).encode())
    # Then it is refused without looking up a key to verify it with
    assert_refused(auth, bearer(f"{header}.{payload}.c2ln"))
    assert client.calls == 0


def test_jwks_mode_refuses_rs512(jwks_auth: Authenticator, rsa_key: rsa.RSAPrivateKey) -> None:
    # Given a token signed by the right key with an algorithm not configured
    assert_refused(jwks_auth, bearer(jwt.encode(claims(), rsa_key, algorithm="RS512")))


# --- IAM ---------------------------------------------------------------------------------


@pytest.fixture
def iam_auth() -> Authenticator:
    return Authenticator("iam")


def test_iam_mode_with_iam_context_and_user_header(iam_auth: Authenticator) -> None:
    # Given an IAM-authorised request context and an end-user header
    headers = {"x-amzn-request-context": IAM_CONTEXT, "x-end-user-id": "end-user-42"}
    # Then the user is the header's value
    assert iam_auth.user_id(headers) == "end-user-42"


def test_iam_mode_accepts_caller_id_only_context(iam_auth: Authenticator) -> None:
    context = json.dumps({"authorizer": {"iam": {"callerId": "AROA:backend"}}})
    headers = {"x-amzn-request-context": context, "x-end-user-id": "u"}
    assert iam_auth.user_id(headers) == "u"


def test_iam_mode_ignores_bearer_tokens(iam_auth: Authenticator) -> None:
    # Given a JWT but no IAM context: the trusted-backend mode does not fall back to JWT
    assert_refused(iam_auth, {**bearer(hs256(claims())), "x-end-user-id": "u"})


@pytest.mark.parametrize(
    "context",
    [
        None,
        "",
        "not json",
        "[]",
        "null",
        json.dumps({}),
        json.dumps({"authorizer": None}),
        json.dumps({"authorizer": {}}),
        json.dumps({"authorizer": {"iam": None}}),
        json.dumps({"authorizer": {"iam": {}}}),
        json.dumps({"authorizer": {"iam": "yes"}}),
        json.dumps({"authorizer": {"jwt": {"claims": {"sub": "x"}}}}),
    ],
)
def test_iam_mode_without_iam_authorised_context_is_refused(
    iam_auth: Authenticator, context: str | None
) -> None:
    headers = {"x-end-user-id": "u"}
    if context is not None:
        headers["x-amzn-request-context"] = context
    assert_refused(iam_auth, headers)


@pytest.mark.parametrize("authorizer", ["iam", ["iam"], 1])
def test_iam_mode_with_non_object_authorizer_is_refused(
    iam_auth: Authenticator, authorizer: object
) -> None:
    context = json.dumps({"authorizer": authorizer})
    assert_refused(iam_auth, {"x-amzn-request-context": context, "x-end-user-id": "u"})


@pytest.mark.parametrize(
    "user",
    [None, "", "   ", "a\nb", "a\rb", "nul\x00", "esc\x1b[31m", "x" * 129],
)
def test_iam_mode_invalid_end_user_id_is_refused(iam_auth: Authenticator, user: str | None) -> None:
    headers = {"x-amzn-request-context": IAM_CONTEXT}
    if user is not None:
        headers["x-end-user-id"] = user
    assert_refused(iam_auth, headers)


@pytest.mark.parametrize("user", ["del\x7f", "nel\x85", "csi\x9b31m"])
def test_user_id_with_del_or_c1_control_is_refused(iam_auth: Authenticator, user: str) -> None:
    assert_refused(iam_auth, {"x-amzn-request-context": IAM_CONTEXT, "x-end-user-id": user})


def test_iam_mode_user_id_of_max_length_is_accepted(iam_auth: Authenticator) -> None:
    headers = {"x-amzn-request-context": IAM_CONTEXT, "x-end-user-id": "u" * 128}
    assert iam_auth.user_id(headers) == "u" * 128
