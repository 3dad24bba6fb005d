"""The offline model's reply text: deterministic, readable, and exactly as long as planned."""

from __future__ import annotations

import pytest

from tollgate.adapters.tokenizer import get_encoding
from tollgate.local.offline_model import (
    ADJECTIVES,
    MAX_NATURAL_REPLY_TOKENS,
    MIN_NATURAL_REPLY_TOKENS,
    NOUNS,
    OPENERS,
    PREPOSITIONS,
    VERBS,
    messages_seed,
    natural_reply_length,
    reply_pieces,
    reply_text,
)

ENCODING_NAMES = ("o200k_base", "cl100k_base")


@pytest.mark.parametrize("encoding_name", ENCODING_NAMES)
def test_every_vocabulary_piece_is_one_token(encoding_name: str) -> None:
    encoding = get_encoding(encoding_name)
    pieces = [*OPENERS, *(" " + word for word in (*OPENERS, *ADJECTIVES, *NOUNS, *VERBS)), "."]
    pieces += [" " + word for word in (*PREPOSITIONS, "the")]
    too_long = [piece for piece in pieces if len(encoding.encode_ordinary(piece)) != 1]
    assert too_long == []


@pytest.mark.parametrize("encoding_name", ENCODING_NAMES)
def test_reply_encodes_to_exactly_the_planned_tokens(encoding_name: str) -> None:
    encoding = get_encoding(encoding_name)
    for seed in range(30):
        for length in range(1, 90):
            pieces = reply_pieces(seed, length)
            tokens = encoding.encode_ordinary("".join(pieces))
            assert [encoding.decode([token]) for token in tokens] == pieces


def test_reply_is_a_deterministic_function_of_the_seed() -> None:
    assert reply_text(7, 40) == reply_text(7, 40)
    assert reply_text(7, 40) != reply_text(8, 40)


def test_reply_reads_as_sentences() -> None:
    text = reply_text(3, 45)
    assert text[0].isupper()
    assert text.endswith(".")
    assert ".." not in text
    assert "  " not in text
    for sentence in text.split(". "):
        assert sentence[0].isupper()


def test_seed_depends_on_content_not_key_order() -> None:
    messages = [{"role": "user", "content": "hello"}]
    assert messages_seed(messages) == messages_seed([{"content": "hello", "role": "user"}])
    assert messages_seed(messages) != messages_seed([{"role": "user", "content": "hello!"}])


def test_natural_length_stays_in_range() -> None:
    lengths = {natural_reply_length(seed) for seed in range(500)}
    assert min(lengths) == MIN_NATURAL_REPLY_TOKENS
    assert max(lengths) == MAX_NATURAL_REPLY_TOKENS
