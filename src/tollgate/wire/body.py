"""Request bodies: the size limit and JSON-object parsing shared by every endpoint."""

from __future__ import annotations

import json
from typing import Any

from tollgate.errors import BadRequest, GatewayError, TooLarge

MAX_BODY_BYTES = 64 * 1024


class BodyTimeout(GatewayError):
    """The request body did not arrive within BODY_READ_TIMEOUT_S: a slow or stalled client."""

    status, code = 408, "request_timeout"

    def headers(self) -> dict[str, str]:
        # The rest of the body may still come: the connection cannot carry another request.
        return {"Connection": "close"}


def body_too_large() -> TooLarge:
    return TooLarge(f"request body is over {MAX_BODY_BYTES // 1024} KB")


def json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, or BadRequest / TooLarge saying what is wrong with it."""
    if len(body) > MAX_BODY_BYTES:
        raise body_too_large()
    if not body.strip():
        raise BadRequest("request body is empty; send a JSON object")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("request body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    try:
        json.dumps(payload, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as exc:  # "\ud800": valid JSON, but no text can hold it
        raise BadRequest("request body holds a lone UTF-16 surrogate escape") from exc
    return payload
