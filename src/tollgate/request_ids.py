"""Request ids that carry their owner: cancel checks ownership without a lookup.

An id is 32 random hex digits and a 16-digit tag: an HMAC of the owner's user id and the
random part, keyed with a secret of the deployment. Only the gateway can mint a tag, so
another user's (or a made-up) id is a 404, like an unknown one, and never reaches the
store; without the key nobody can forge ids that pass.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

OWNER_TAG_LENGTH = 16
NONCE_LENGTH = 32
_HEX = frozenset("0123456789abcdef")


class RequestIds:
    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the request id key must be at least 16 bytes")
        self._key = key

    def _tag(self, user_id: str, nonce: str) -> str:
        message = f"{user_id}\x00{nonce}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()[:OWNER_TAG_LENGTH]

    def issue(self, user_id: str) -> str:
        """An unguessable id that also proves whose it is: a random part and its owner's tag."""
        nonce = secrets.token_hex(NONCE_LENGTH // 2)
        return nonce + self._tag(user_id, nonce)

    def owns(self, request_id: str, user_id: str) -> bool:
        """True for an id this gateway issued to user_id (no lookup: the id carries its owner)."""
        if len(request_id) != NONCE_LENGTH + OWNER_TAG_LENGTH or not _HEX.issuperset(request_id):
            return False
        nonce, tag = request_id[:NONCE_LENGTH], request_id[NONCE_LENGTH:]
        return hmac.compare_digest(tag, self._tag(user_id, nonce))
