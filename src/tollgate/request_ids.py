"""Request ids that carry their owner: cancel checks ownership without a lookup.

An id is 32 random hex digits and an 8-digit tag derived from the owner's user id. Only
the owner's id reproduces the tag, so another user's cancel is a 404, like an unknown id.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid

OWNER_TAG_LENGTH = 8


def _owner_tag(user_id: str, nonce: str) -> str:
    return hashlib.sha256(f"{user_id}\x00{nonce}".encode()).hexdigest()[:OWNER_TAG_LENGTH]


def new_request_id(user_id: str) -> str:
    """An unguessable id that also proves whose it is: a random part and its owner's tag."""
    nonce = uuid.uuid4().hex
    return nonce + _owner_tag(user_id, nonce)


def owns_request(request_id: str, user_id: str) -> bool:
    """True for an id this gateway issued to user_id (no lookup: the id carries its owner)."""
    nonce, tag = request_id[:-OWNER_TAG_LENGTH], request_id[-OWNER_TAG_LENGTH:]
    if len(nonce) != 32 or not all(c in "0123456789abcdef" for c in request_id):
        return False
    return hmac.compare_digest(tag, _owner_tag(user_id, nonce))
