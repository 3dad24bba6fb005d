"""POST /chat's body: validated before anything is charged or stored."""

from __future__ import annotations

import json
from dataclasses import dataclass

from tollgate.errors import BadRequest, InvalidRequest, TooLarge

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class ChatRequest:
    message: str
    conversation_id: str | None = None
    prompt: str = "default"
    max_tokens: int | None = None


def parse_chat_request(body: bytes) -> ChatRequest:
    """Validate a POST /chat body (unknown fields are ignored)."""
    if len(body) > MAX_BODY_BYTES:
        raise TooLarge(f"request body is over {MAX_BODY_BYTES // 1024} KB")
    if not body.strip():
        raise BadRequest("request body is empty; send a JSON object")
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise BadRequest("request body is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    message = payload.get("message")
    if not isinstance(message, str) or not message.strip():
        raise InvalidRequest("`message` must be a non-empty string")
    conversation_id = payload.get("conversation_id")
    if conversation_id is not None and (
        not isinstance(conversation_id, str) or not conversation_id
    ):
        raise InvalidRequest("`conversation_id` must be a non-empty string or null")
    prompt = payload.get("prompt", "default")
    if prompt is None:
        prompt = "default"
    if not isinstance(prompt, str) or not prompt:
        raise InvalidRequest("`prompt` must be the name of a prompt")
    max_tokens = payload.get("max_tokens")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise InvalidRequest("`max_tokens` must be an integer or null")
        if max_tokens < 1:
            raise InvalidRequest("`max_tokens` must be at least 1")
    return ChatRequest(message, conversation_id, prompt, max_tokens)
