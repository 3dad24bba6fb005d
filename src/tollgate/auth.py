"""Identity: who is calling. JWT (HS256 secret or a JWKS URL) or a trusted IAM backend.

PyJWT (and the `cryptography` package it brings) is imported only in JWKS mode: a shared
secret's HS256 tokens are verified by tollgate.hs256.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tollgate import hs256
from tollgate.errors import Unauthenticated

if TYPE_CHECKING:
    import jwt

LEEWAY_S = 30
REQUIRED_CLAIMS = ("exp", "sub")
# The algorithms a token's header may name; the key then fixes which one verifies it.
ACCEPTED_ALGORITHMS = frozenset({"HS256", "RS256", "ES256"})
# A token may not expire later than this from now (JWT_MAX_LIFETIME_S): a leaked token with
# an `exp` years ahead would otherwise spend its user's budget for as long.
DEFAULT_MAX_LIFETIME_S = 24 * 3600
JWKS_CACHE_S = 600
JWKS_TIMEOUT_S = 5
END_USER_HEADER = "x-end-user-id"
END_USER_PLAN_HEADER = "x-end-user-plan"
END_USER_TEAM_HEADER = "x-end-user-team"
# The Lambda Web Adapter passes the function URL's request context in this header.
REQUEST_CONTEXT_HEADER = "x-amzn-request-context"
MAX_USER_ID_LENGTH = 128


@dataclass(frozen=True, slots=True)
class JwtConfig:
    secret: str | None = None
    jwks_url: str | None = None
    issuer: str | None = None
    audience: str | None = None
    plan_claim: str = "plan"
    team_claim: str = "team"
    max_lifetime_s: int = DEFAULT_MAX_LIFETIME_S


@dataclass(frozen=True, slots=True)
class Identity:
    """The caller: the end user, and the plan and team their budgets come from (if named)."""

    user_id: str
    plan: str | None = None
    team: str | None = None


class Authenticator:
    def __init__(
        self,
        mode: str,
        jwt_config: JwtConfig | None = None,
        jwks_client: jwt.PyJWKClient | None = None,
    ) -> None:
        self._mode = mode
        self._jwt = jwt_config or JwtConfig()
        self._jwks = jwks_client
        if mode == "jwt" and self._jwks is None and self._jwt.jwks_url:
            # The key set is cached for 10 minutes; an unknown kid (a rotation) refetches it at
            # most once a second, and a removed kid stops working with the next fetch.
            import jwt

            self._jwks = jwt.PyJWKClient(
                self._jwt.jwks_url,
                cache_keys=False,
                lifespan=JWKS_CACHE_S,
                cooldown_duration=1.0,
                timeout=JWKS_TIMEOUT_S,
            )
        if mode == "jwt" and not (self._jwt.secret or self._jwks):
            raise ValueError("JWT authentication needs a secret or a JWKS URL")

    @property
    def may_block(self) -> bool:
        """True when verifying can fetch keys over the network (run it off the event loop)."""
        return self._jwks is not None

    def user_id(self, headers: Mapping[str, str]) -> str:
        return self.identify(headers).user_id

    def identify(self, headers: Mapping[str, str]) -> Identity:
        if self._mode == "iam":
            return self._iam_user(headers)
        return self._jwt_user(headers)

    def _jwt_user(self, headers: Mapping[str, str]) -> Identity:
        authorization = headers.get("authorization", "")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("missing bearer token")
        token = token.strip()
        try:
            algorithm = hs256.unverified_header(token).get("alg")
            if not isinstance(algorithm, str) or algorithm not in ACCEPTED_ALGORITHMS:
                raise Unauthenticated("token algorithm not accepted")
            if self._jwks is not None and algorithm != "HS256":
                claims = self._jwks_claims(self._jwks, token)
            elif self._jwt.secret:
                claims = hs256.decode(
                    token,
                    self._jwt.secret,
                    leeway_s=LEEWAY_S,
                    required=REQUIRED_CLAIMS,
                    audience=self._jwt.audience,
                    issuer=self._jwt.issuer,
                )
            else:
                raise Unauthenticated("token algorithm not accepted")
        except hs256.InvalidToken as exc:
            raise Unauthenticated("invalid or expired token") from exc
        self._check_lifetime(claims["exp"])
        return Identity(
            _valid_user_id(claims.get("sub")),
            _optional_name(claims.get(self._jwt.plan_claim)),
            _optional_name(claims.get(self._jwt.team_claim)),
        )

    def _jwks_claims(self, jwks: jwt.PyJWKClient, token: str) -> dict[str, Any]:
        import jwt
        from cryptography.hazmat.primitives.asymmetric import ec

        try:
            key = jwks.get_signing_key_from_jwt(token).key
            # The key's type fixes the algorithm: a token cannot choose another one.
            algorithm = "ES256" if isinstance(key, ec.EllipticCurvePublicKey) else "RS256"
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._jwt.audience,
                issuer=self._jwt.issuer,
                leeway=LEEWAY_S,
                options={
                    "require": list(REQUIRED_CLAIMS),
                    "verify_aud": self._jwt.audience is not None,
                    "verify_iss": self._jwt.issuer is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid or expired token") from exc
        return claims

    def _check_lifetime(self, expires: object) -> None:
        """PyJWT reads `exp` with int(), so "9999999999" passes it: a number, not too far ahead."""
        if isinstance(expires, bool) or not isinstance(expires, int | float):
            raise Unauthenticated("the token's exp must be a number")
        if expires > time.time() + self._jwt.max_lifetime_s + LEEWAY_S:
            raise Unauthenticated("the token expires too far in the future")

    def _iam_user(self, headers: Mapping[str, str]) -> Identity:
        try:
            context = json.loads(headers.get(REQUEST_CONTEXT_HEADER, ""))
        except ValueError as exc:
            raise Unauthenticated("no IAM-authorised request context") from exc
        authorizer = context.get("authorizer") if isinstance(context, dict) else None
        iam = authorizer.get("iam") if isinstance(authorizer, dict) else None
        if not isinstance(iam, dict) or not (iam.get("userArn") or iam.get("callerId")):
            raise Unauthenticated("no IAM-authorised request context")
        return Identity(
            _valid_user_id(headers.get(END_USER_HEADER)),
            _optional_name(headers.get(END_USER_PLAN_HEADER)),
            _optional_name(headers.get(END_USER_TEAM_HEADER)),
        )


def safety_identifier(key: bytes, user_id: str) -> str:
    """A stable id for the user that OpenAI can group abuse by, and no one can reverse."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()


def _valid_user_id(value: object, what: str = "user id") -> str:
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_USER_ID_LENGTH:
        raise Unauthenticated(f"no valid {what}")
    # Control characters, and lone surrogates ("\ud800" in a token's JSON), which no text
    # encoding can hold: the id becomes keys, hashes and log fields.
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in value):
        raise Unauthenticated(f"no valid {what}")
    return value


def _optional_name(value: object) -> str | None:
    """A plan or team name: absent is None; anything but a valid name is refused."""
    if value is None:
        return None
    return _valid_user_id(value, "plan or team name")
