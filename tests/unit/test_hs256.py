"""tollgate.hs256 against PyJWT, token by token.

Properties:
- a well-formed token signed with the secret, whatever its claims hold, is accepted by
  tollgate.hs256 exactly when PyJWT (same secret, leeway, required claims, audience, issuer)
  accepts it, with the same claims;
- any token, however mangled, that tollgate.hs256 accepts, PyJWT accepts too (a subset).
"""

from __future__ import annotations

import base64
import json
import time
import warnings
from typing import Any

import jwt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate import hs256

SECRET = "hs256-secret-" + "s" * 51
LEEWAY_S = 30
REQUIRED = ("exp", "sub")
CHECKS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def sign(header: dict[str, Any], claims: dict[str, Any], secret: str = SECRET) -> str:
    import hashlib
    import hmac

    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    digest = hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(digest)}"


def ours(token: str, audience: str | None, issuer: str | None) -> dict[str, Any] | None:
    try:
        return hs256.decode(
            token, SECRET, leeway_s=LEEWAY_S, required=REQUIRED, audience=audience, issuer=issuer
        )
    except hs256.InvalidToken:
        return None


def pyjwt(token: str, audience: str | None, issuer: str | None) -> dict[str, Any] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            claims: dict[str, Any] = jwt.decode(
                token,
                SECRET,
                algorithms=["HS256"],
                audience=audience,
                issuer=issuer,
                leeway=LEEWAY_S,
                options={
                    "require": list(REQUIRED),
                    "verify_aud": audience is not None,
                    "verify_iss": issuer is not None,
                },
            )
        return claims
    except jwt.PyJWTError:
        return None


NOW = int(time.time())
times: st.SearchStrategy[Any] = st.one_of(
    st.integers(NOW - 7200, NOW + 7200),
    st.sampled_from([NOW - LEEWAY_S - 5, NOW + LEEWAY_S + 5, NOW - LEEWAY_S + 5]),
    st.floats(NOW - 7200, NOW + 7200),
    st.integers(NOW - 100, NOW + 100).map(str),
    st.sampled_from([None, True, False, "soon", [], {}, 1e400, "1e3", ""]),
)
names = st.sampled_from(["tollgate", "other", "", None, 7, ["tollgate"], ["x", "tollgate"], [1]])
optional_claims = {
    "nbf": times,
    "iat": times,
    "jti": st.sampled_from(["id-1", 5, None]),
    "iss": names,
    "aud": names,
    "extra": st.text(max_size=5),
}
# Mostly tokens that are valid but for one or two claims, so that each rule is exercised.
claim_sets = st.one_of(
    st.fixed_dictionaries({"exp": times, "sub": st.just("user-1")}, optional=optional_claims),
    st.fixed_dictionaries(
        {},
        optional={
            "exp": times,
            "sub": st.sampled_from(["user-1", "", None, 5, ["a"]]),
            **optional_claims,
        },
    ),
)
headers = st.one_of(
    st.just({"alg": "HS256", "typ": "JWT"}),
    st.fixed_dictionaries(
        {"alg": st.sampled_from(["HS256", "HS256", "none", "HS384", "RS256", ""])},
        optional={
            "typ": st.sampled_from(["JWT", "at+jwt", 5]),
            "kid": st.sampled_from(["k1", 5, None]),
            "crit": st.sampled_from([["b64"], [], ["exp"], "b64"]),
            "b64": st.booleans(),
        },
    ),
)
expectations = st.tuples(
    st.sampled_from([None, "tollgate"]), st.sampled_from([None, "https://issuer.example"])
)


@CHECKS
@given(headers, claim_sets, expectations)
def test_a_signed_token_is_accepted_exactly_when_pyjwt_accepts_it(
    header: dict[str, Any], claims: dict[str, Any], expected: tuple[str | None, str | None]
) -> None:
    if "iss" in claims and expected[1] is not None and claims["iss"] == "tollgate":
        claims["iss"] = expected[1]
    token = sign(header, claims)
    audience, issuer = expected
    theirs = pyjwt(token, audience, issuer)
    mine = ours(token, audience, issuer)
    if header.get("alg") == "HS256" and not {"crit", "b64"} & header.keys():
        assert mine == theirs
    else:
        assert mine is None


def mangle(token: str, data: st.DataObject) -> str:
    operation = data.draw(st.sampled_from(["byte", "pad", "dots", "cut", "case", "space"]))
    position = data.draw(st.integers(0, len(token) - 1))
    if operation == "byte":
        char = data.draw(st.sampled_from(list("AZaz09-_=.+/!é\x00 ")))
        return token[:position] + char + token[position + 1 :]
    if operation == "pad":
        segments = token.split(".")
        index = data.draw(st.integers(0, len(segments) - 1))
        segments[index] += "=" * data.draw(st.integers(1, 3))
        return ".".join(segments)
    if operation == "dots":
        return token[:position] + "." + token[position:]
    if operation == "cut":
        return token[:position]
    if operation == "case":
        return token[:position] + token[position].swapcase() + token[position + 1 :]
    return token[:position] + " " + token[position:]


@CHECKS
@given(claim_sets, expectations, st.data())
def test_whatever_is_accepted_pyjwt_accepts_too(
    claims: dict[str, Any], expected: tuple[str | None, str | None], data: st.DataObject
) -> None:
    token = sign({"alg": "HS256", "typ": "JWT"}, claims)
    for _ in range(data.draw(st.integers(1, 3))):
        token = mangle(token, data)
        if not token:
            return
    mine = ours(token, *expected)
    if mine is not None:
        assert pyjwt(token, *expected) == mine


# Far from now: tokens built at import stay valid (or not yet valid) however long the suite runs.
DAYS = 10 * 24 * 3600


def valid_claims(**overrides: Any) -> dict[str, Any]:
    return {"sub": "user-1", "exp": NOW + DAYS, **overrides}


def test_a_plain_valid_token_gives_its_claims() -> None:
    claims = valid_claims(iss="https://issuer.example", aud=["x", "tollgate"], plan="pro")
    token = jwt.encode(claims, SECRET, algorithm="HS256")
    assert ours(token, "tollgate", "https://issuer.example") == claims


@pytest.mark.parametrize(
    "token",
    [
        sign({"alg": "HS256"}, valid_claims(), secret="another-secret-" + "x" * 50),
        sign({"alg": "none"}, valid_claims()),
        sign({"alg": "HS256"}, valid_claims(exp=NOW - LEEWAY_S - 1)),
        sign({"alg": "HS256"}, valid_claims(nbf=NOW + DAYS)),
        sign({"alg": "HS256", "kid": 5}, valid_claims()),
        sign({"alg": "HS256"}, {"sub": "user-1"}),
        sign({"alg": "HS256"}, valid_claims(sub=None)),
        sign({"alg": "HS256"}, valid_claims(jti=7)),
        jwt.encode(valid_claims(), SECRET, algorithm="HS384"),
        "a.b",
        "",
    ],
    ids=[
        "other-secret",
        "alg-none",
        "expired",
        "not-before",
        "kid-not-string",
        "no-exp",
        "null-sub",
        "jti-not-string",
        "hs384",
        "two-segments",
        "empty",
    ],
)
def test_refused(token: str) -> None:
    assert ours(token, None, None) is None
