"""Request ids carry their owner's tag: cancel can check ownership without a lookup."""

from __future__ import annotations

from tollgate.request_ids import new_request_id, owns_request


def test_an_id_belongs_to_the_user_it_was_issued_to_only() -> None:
    # Given an id issued to alice
    request_id = new_request_id("alice")

    # Then it is hers, and nobody else's
    assert owns_request(request_id, "alice")
    assert not owns_request(request_id, "bob")
    assert not owns_request(request_id, "alice ")


def test_ids_are_unguessable_and_tampering_breaks_ownership() -> None:
    ids = {new_request_id("alice") for _ in range(1000)}
    assert len(ids) == 1000
    request_id = ids.pop()
    assert len(request_id) == 40
    flipped = request_id[:5] + ("0" if request_id[5] != "0" else "1") + request_id[6:]
    assert not owns_request(flipped, "alice")


def test_malformed_ids_belong_to_nobody() -> None:
    for request_id in ("", "nope", "x" * 40, new_request_id("alice")[:-1], "../" * 20):
        assert not owns_request(request_id, "alice")
