"""Request ids carry their owner's tag: cancel can check ownership without a lookup."""

from __future__ import annotations

import hashlib

import pytest

from tollgate.request_ids import RequestIds

IDS = RequestIds(b"a key of the deployment, 32 bytes")


def test_an_id_belongs_to_the_user_it_was_issued_to_only() -> None:
    # Given an id issued to alice
    request_id = IDS.issue("alice")

    # Then it is hers, and nobody else's
    assert IDS.owns(request_id, "alice")
    assert not IDS.owns(request_id, "bob")
    assert not IDS.owns(request_id, "alice ")


def test_ids_are_unguessable_and_tampering_breaks_ownership() -> None:
    ids = {IDS.issue("alice") for _ in range(1000)}
    assert len(ids) == 1000
    request_id = ids.pop()
    assert len(request_id) == 48
    flipped = request_id[:5] + ("0" if request_id[5] != "0" else "1") + request_id[6:]
    assert not IDS.owns(flipped, "alice")


def test_malformed_ids_belong_to_nobody() -> None:
    for request_id in ("", "nope", "x" * 48, IDS.issue("alice")[:-1], "../" * 20):
        assert not IDS.owns(request_id, "alice")


def test_an_id_minted_without_the_key_is_nobodys() -> None:
    # Given an id made the way an unkeyed tag would be (a plain hash of user and nonce)
    nonce = "0" * 32
    forged = nonce + hashlib.sha256(f"alice\x00{nonce}".encode()).hexdigest()[:16]
    # Then the gateway does not take it for alice's, nor does another deployment's key
    assert not IDS.owns(forged, "alice")
    assert not RequestIds(b"another deployment's key, 32 b").owns(IDS.issue("alice"), "alice")


def test_a_short_key_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        RequestIds(b"short")
