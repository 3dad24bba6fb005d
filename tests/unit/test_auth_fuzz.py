"""Hypothesis fuzz of the JWT path: hostile tokens only ever fail with Unauthenticated.

Properties, for an HS256 configuration (secret, issuer and audience set) and a JWKS
configuration (RS256 + ES256 keys, served in-process):
- whatever the Authorization header holds, `user_id` returns or raises Unauthenticated
  (never another exception: that would be a 500);
- a token not signed with the configured key and algorithm never authenticates;
- a token that does authenticate has a valid `sub`, a future `exp`, and the right
  `iss` and `aud`.
"""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tollgate.auth import LEEWAY_S, Authenticator, JwtConfig
from tollgate.errors import Unauthenticated

SECRET = "fuzz-secret-" + "k" * 52
OTHER_SECRET = "fuzz-other-" + "x" * 53
ISSUER = "https://issuer.example"
AUDIENCE = "tollgate"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
STRANGER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def jwk(public_key: Any, kid: str) -> dict[str, Any]:
    algorithm = jwt.algorithms.RSAAlgorithm if kid.startswith("rsa") else jwt.algorithms.ECAlgorithm
    key: dict[str, Any] = json.loads(algorithm.to_jwk(public_key))
    return {**key, "kid": kid, "use": "sig"}


JWKS = {"keys": [jwk(RSA_KEY.public_key(), "rsa-1"), jwk(EC_KEY.public_key(), "ec-1")]}


class LocalJWKClient(jwt.PyJWKClient):
    """PyJWKClient with its key set in memory (the HTTP path is tested in test_jwks.py)."""

    def fetch_data(self) -> Any:
        return JWKS


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def hs256_raw(header: dict[str, Any], claims: dict[str, Any], secret: str = SECRET) -> str:
    """HMAC-SHA256 over any header and claims (jwt.encode refuses some of the hostile ones)."""
    header_b64 = b64url(json.dumps(header).encode())
    payload_b64 = b64url(json.dumps(claims).encode())
    signing_input = f"{header_b64}.{payload_b64}".encode()
    hmac = jwt.algorithms.HMACAlgorithm(jwt.algorithms.HMACAlgorithm.SHA256)
    return f"{header_b64}.{payload_b64}.{b64url(hmac.sign(signing_input, secret.encode()))}"


def good_claims(**extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"sub": "user-1", "exp": now + 600, "iss": ISSUER, "aud": AUDIENCE, **extra}


HS_AUTH = Authenticator("jwt", JwtConfig(secret=SECRET, issuer=ISSUER, audience=AUDIENCE))
JWKS_AUTH = Authenticator(
    "jwt",
    JwtConfig(jwks_url="http://jwks.invalid/keys", issuer=ISSUER, audience=AUDIENCE),
    jwks_client=LocalJWKClient("http://jwks.invalid/keys"),
)
VALID = jwt.encode(good_claims(), SECRET, algorithm="HS256")


def outcome(auth: Authenticator, authorization: str) -> str | None:
    """The user id, or None when refused; any other exception fails the test."""
    try:
        return auth.user_id({"authorization": authorization})
    except Unauthenticated as refusal:
        refused = refusal
    assert (refused.status, refused.code) == (401, "unauthenticated")
    return None


def assert_claims_valid(token: str) -> None:
    """A token that authenticated: its claims must be what the configuration demands."""
    claims = json.loads(segment(token.split(".")[1]))
    assert isinstance(claims["sub"], str)
    assert claims["sub"].strip()
    assert isinstance(claims["exp"], int | float)
    assert claims["exp"] > time.time() - LEEWAY_S
    assert claims["iss"] == ISSUER
    audience = claims["aud"]
    assert audience == AUDIENCE or (isinstance(audience, list) and AUDIENCE in audience)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=6,
)
claim_values = (
    st.sampled_from(
        [ISSUER, AUDIENCE, [AUDIENCE], "user-1", "", " ", "\x00", int(time.time()) + 600, -1]
    )
    | json_values
)


# --- any header value ---------------------------------------------------------------------


@FUZZ
@given(authorization=st.text(max_size=200))
def test_any_authorization_header_is_refused(authorization: str) -> None:
    # Given any Authorization value at all  When authenticating  Then it is refused cleanly
    for auth in (HS_AUTH, JWKS_AUTH):
        assert outcome(auth, authorization) is None
        assert outcome(auth, "Bearer " + authorization) is None


@FUZZ
@given(parts=st.lists(st.binary(max_size=80), min_size=1, max_size=5))
def test_random_dotted_base64_is_refused(parts: list[bytes]) -> None:
    # Given segments of random bytes shaped like a JWT
    token = ".".join(b64url(part) for part in parts)
    # Then no configuration accepts it
    for auth in (HS_AUTH, JWKS_AUTH):
        assert outcome(auth, f"Bearer {token}") is None


# --- mutated valid tokens -----------------------------------------------------------------


@FUZZ
@given(data=st.data())
def test_flipped_bytes_never_forge_a_token(data: st.DataObject) -> None:
    # Given a valid token with one to three characters replaced
    token = list(VALID)
    for _ in range(data.draw(st.integers(1, 3))):
        index = data.draw(st.integers(0, len(token) - 1))
        token[index] = data.draw(st.characters(codec="ascii", exclude_characters="\r\n"))
    mutated = "".join(token)
    # When authenticating
    user = outcome(HS_AUTH, f"Bearer {mutated}")
    event("authenticated" if user is not None else "refused")
    # Then it is refused, unless the change was invisible (the same bytes once decoded:
    # base64url's last character carries spare bits)
    if user is not None:
        original = [segment(part) for part in VALID.split(".")]
        assert [segment(part) for part in mutated.split(".")] == original
        assert user == "user-1"


# --- wrong algorithms and keys -----------------------------------------------------------


def sign(header: dict[str, Any], claims: dict[str, Any], key_choice: str) -> str:
    alg = header.get("alg")
    if key_choice == "none" or alg == "none":
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        )
        return signing_input + "."
    keys: dict[str, Any] = {
        "secret": SECRET,
        "other-secret": OTHER_SECRET,
        "rsa": RSA_KEY,
        "stranger-rsa": STRANGER_RSA,
        "ec": EC_KEY,
    }
    extra = {key: value for key, value in header.items() if key not in ("alg", "typ")}
    return jwt.encode(claims, keys[key_choice], algorithm=alg, headers=extra)


COMPATIBLE = {
    "HS256": ("secret", "other-secret"),
    "HS384": ("secret", "other-secret"),
    "HS512": ("secret", "other-secret"),
    "RS256": ("rsa", "stranger-rsa"),
    "RS512": ("rsa", "stranger-rsa"),
    "PS256": ("rsa", "stranger-rsa"),
    "ES256": ("ec",),
    "none": ("none",),
}


@FUZZ
@given(
    alg=st.sampled_from(sorted(COMPATIBLE)),
    key_index=st.integers(0, 1),
    kid=st.sampled_from([None, "rsa-1", "ec-1", "unknown", ""]),
)
def test_hs256_config_accepts_only_hs256_with_its_secret(
    alg: str, key_index: int, kid: str | None
) -> None:
    # Given a token signed with some algorithm and key (kid possibly naming a JWKS key)
    choices = COMPATIBLE[alg]
    key_choice = choices[key_index % len(choices)]
    header: dict[str, Any] = {"alg": alg, **({"kid": kid} if kid is not None else {})}
    token = sign(header, good_claims(), key_choice)
    # When the HS256 configuration checks it
    user = outcome(HS_AUTH, f"Bearer {token}")
    # Then only HS256 with the configured secret passes
    assert (user is not None) == (alg == "HS256" and key_choice == "secret")


@FUZZ
@given(
    alg=st.sampled_from(sorted(COMPATIBLE)),
    key_index=st.integers(0, 1),
    kid=st.sampled_from([None, "rsa-1", "ec-1", "unknown", ""]),
)
def test_jwks_config_accepts_only_its_keys_with_their_algorithm(
    alg: str, key_index: int, kid: str | None
) -> None:
    choices = COMPATIBLE[alg]
    key_choice = choices[key_index % len(choices)]
    header: dict[str, Any] = {"alg": alg, **({"kid": kid} if kid is not None else {})}
    token = sign(header, good_claims(), key_choice)
    # When the JWKS configuration (no shared secret) checks it
    user = outcome(JWKS_AUTH, f"Bearer {token}")
    # Then only RS256 with the RSA key, or ES256 with the EC key, under the right kid passes
    genuine = (alg, key_choice, kid) in {("RS256", "rsa", "rsa-1"), ("ES256", "ec", "ec-1")}
    assert (user is not None) == genuine


# --- claims of the wrong type ------------------------------------------------------------


@FUZZ
@given(
    replaced=st.dictionaries(
        st.sampled_from(["exp", "nbf", "iat", "sub", "aud", "iss"]),
        claim_values,
        min_size=1,
        max_size=2,
    ),
    dropped=st.sets(st.sampled_from(["exp", "sub", "aud", "iss"]), max_size=1),
)
def test_claims_of_any_type_are_refused_or_valid(
    replaced: dict[str, Any], dropped: set[str]
) -> None:
    # Given a token signed with the right secret whose claims have random values and types
    claims = {**good_claims(), **replaced}
    for name in dropped:
        claims.pop(name, None)
    token = hs256_raw({"alg": "HS256", "typ": "JWT"}, claims)
    # When authenticating
    user = outcome(HS_AUTH, f"Bearer {token}")
    event("authenticated" if user is not None else "refused")
    # Then it is refused, or every claim it carries is valid
    if user is not None:
        assert_claims_valid(token)
        assert user == claims["sub"]
        if "nbf" in claims:
            assert isinstance(claims["nbf"], int | float)
            assert claims["nbf"] <= time.time() + LEEWAY_S


@FUZZ
@given(
    header=st.dictionaries(
        st.sampled_from(["alg", "kid", "typ", "crit", "jku", "x5u"]), json_values
    )
)
def test_random_headers_signed_with_the_secret_are_refused_unless_hs256(
    header: dict[str, Any],
) -> None:
    # Given a token signed (HMAC-SHA256, with the secret) under a random header
    token = hs256_raw(header, good_claims())
    # When each configuration checks it
    for auth in (HS_AUTH, JWKS_AUTH):
        user = outcome(auth, f"Bearer {token}")
        # Then only the HS256 configuration, with alg HS256, accepts it
        if user is not None:
            assert auth is HS_AUTH
            assert header.get("alg") == "HS256"
            assert not header.get("crit")  # PyJWT refuses unknown critical extensions


# --- findings of earlier runs, kept as regression tests ---


@pytest.mark.parametrize(
    ("alg", "key", "kid"), [("ES256", EC_KEY, "rsa-1"), ("RS256", RSA_KEY, "ec-1")]
)
def test_jwks_alg_that_does_not_match_the_kid_key_is_401(alg: str, key: Any, kid: str) -> None:
    # Given a token whose kid names an RSA key but whose alg is ES256 (or the reverse)
    token = jwt.encode(good_claims(), key, algorithm=alg, headers={"kid": kid})
    # When the JWKS configuration checks it  Then it is refused as unauthenticated
    with pytest.raises(Unauthenticated):
        JWKS_AUTH.user_id({"authorization": f"Bearer {token}"})
