"""HS256 JSON Web Tokens verified with the standard library alone.

PyJWT imports the `cryptography` package as soon as it is imported: about 10 MB resident and
0.2 s of CPU at start-up (0.7 s at a 512 MB function's CPU share), which only JWKS mode's
RS256/ES256 keys need. A shared-secret token needs one HMAC-SHA256, so that mode verifies here
and PyJWT is imported only when a JWKS URL is configured.

What this accepts is a subset of what PyJWT accepts with the same arguments (the unit tests
check it token by token against PyJWT): the compact serialisation, `alg` HS256, no `crit` or
`b64` header, and PyJWT's claim rules for `exp`, `nbf`, `iat`, `iss`, `aud`, `sub` and `jti`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from typing import Any

_BASE64URL = re.compile(rb"[A-Za-z0-9_-]*")


class InvalidToken(Exception):
    """The token is malformed, wrongly signed, or its claims do not hold."""


def _segment(data: bytes) -> bytes:
    """One base64url segment, in its one canonical spelling (trailing '=' allowed, as PyJWT)."""
    stripped = data.rstrip(b"=")
    padding = len(data) - len(stripped)
    if padding > 2 or (padding and len(data) % 4) or len(stripped) % 4 == 1:
        raise InvalidToken("bad base64url segment")
    if not _BASE64URL.fullmatch(stripped):
        raise InvalidToken("bad base64url segment")
    decoded = base64.urlsafe_b64decode(stripped + b"=" * (-len(stripped) % 4))
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != stripped:
        raise InvalidToken("bad base64url segment")
    return decoded


def _json_object(data: bytes) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise InvalidToken("segment is not JSON") from exc
    if not isinstance(value, dict):
        raise InvalidToken("segment is not a JSON object")
    return value


def _integer(value: Any) -> int:
    """PyJWT reads time claims with int(): "42" and 42.9 pass, "soon" and null do not."""
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidToken("time claim is not an integer") from exc


def _check_audience(claims: dict[str, Any], audience: str) -> None:
    named = claims.get("aud")
    if not named:
        raise InvalidToken("aud missing")
    if isinstance(named, str):
        named = [named]
    if not isinstance(named, list) or any(not isinstance(each, str) for each in named):
        raise InvalidToken("aud malformed")
    if audience not in named:
        raise InvalidToken("aud does not match")


def _parts(token: str) -> list[bytes]:
    try:
        encoded = token.encode("ascii")
    except UnicodeEncodeError as exc:
        raise InvalidToken("not a compact JWS") from exc
    if encoded.count(b".") != 2:
        raise InvalidToken("not a compact JWS")
    return encoded.split(b".")


def _header(part: bytes) -> dict[str, Any]:
    header = _json_object(_segment(part))
    if "kid" in header and not isinstance(header["kid"], str):
        raise InvalidToken("kid is not a string")
    return header


def unverified_header(token: str) -> dict[str, Any]:
    """The token's header, read before any key is chosen (it says which algorithm signed)."""
    return _header(_parts(token)[0])


def decode(
    token: str,
    secret: str,
    *,
    leeway_s: float,
    required: tuple[str, ...] = (),
    audience: str | None = None,
    issuer: str | None = None,
) -> dict[str, Any]:
    """The verified claims of an HS256 token; InvalidToken for anything else.

    `audience` and `issuer`: checked when given, ignored when None (as PyJWT with verify_aud /
    verify_iss off); `required`: claims that must be present and not null.
    """
    header_part, payload_part, signature_part = _parts(token)
    header = _header(header_part)
    if header.get("alg") != "HS256" or "crit" in header or "b64" in header:
        raise InvalidToken("unsupported header")
    payload, signature = _segment(payload_part), _segment(signature_part)
    expected = hmac.new(secret.encode(), header_part + b"." + payload_part, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, signature):
        raise InvalidToken("signature does not match")
    claims = _json_object(payload)
    if any(claims.get(name) is None for name in required):
        raise InvalidToken("required claim missing")
    now = time.time()
    for name in ("iat", "nbf"):
        if name in claims and _integer(claims[name]) > now + leeway_s:
            raise InvalidToken("not yet valid")
    if "exp" in claims and _integer(claims["exp"]) <= now - leeway_s:
        raise InvalidToken("expired")
    if issuer is not None and claims.get("iss") != issuer:
        raise InvalidToken("iss does not match")
    if audience is not None:
        _check_audience(claims, audience)
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise InvalidToken(f"{name} is not a string")
    return claims
