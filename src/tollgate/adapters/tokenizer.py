"""Token counting with tiktoken, from the vendored encoding files; nothing is downloaded.

Which encoding a model uses comes from the model table (pricing.py). An encoding is loaded
only when a model that needs it is first used (~0.3 s). Loading is lean: the gzipped
.tiktoken file shipped in the package is checked against tiktoken's published sha256 and
parsed line by line, and the Python dict of ranks that tiktoken's Encoding would keep beside
its Rust CoreBPE (~30 MB for o200k_base, used only for pickling) is dropped once the CoreBPE
is built. bench/tokenizer_memory.py measures it.
"""

from __future__ import annotations

import binascii
import ctypes
import gzip
import hashlib
import io
import threading
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import tiktoken

from tollgate.pricing import PriceTable, price_table

ENCODINGS_DIR = Path(__file__).resolve().parent.parent / "encodings"


@dataclass(frozen=True)
class EncodingFile:
    """One vendored encoding, with the definitions of tiktoken_ext.openai_public
    (a unit test builds tiktoken's own encoding and checks they agree)."""

    sha256: str  # tiktoken's expected sha256 of the unpacked .tiktoken file
    pat_str: str
    special_tokens: Mapping[str, int]

    def path(self, name: str) -> Path:
        return ENCODINGS_DIR / f"{name}.tiktoken.gz"


ENCODING_FILES = {
    "o200k_base": EncodingFile(
        sha256="446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        pat_str="|".join(
            [
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
                r"""\p{N}{1,3}""",
                r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
                r"""\s*[\r\n]+""",
                r"""\s+(?!\S)""",
                r"""\s+""",
            ]
        ),
        special_tokens={"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
    "cl100k_base": EncodingFile(
        sha256="223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        pat_str=(
            r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+"""
            r"""| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
        ),
        special_tokens={
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
}
# For a model name outside the model table (the offline model server accepts any name);
# the gateway itself refuses to start with a model the table does not list.
DEFAULT_ENCODING = "o200k_base"

# OpenAI's chat format: each message is wrapped in <|start|>{role}\n{content}<|end|>\n,
# and every reply is primed with <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

_load_lock = threading.Lock()
_loaded: set[str] = set()


class EncodingFileError(RuntimeError):
    """A vendored encoding file is missing or does not match tiktoken's published hash."""


def _encoding_file(name: str) -> EncodingFile:
    try:
        return ENCODING_FILES[name]
    except KeyError:
        raise EncodingFileError(f"no vendored encoding named {name}") from None


def read_ranks(name: str) -> dict[bytes, int]:
    """The vendored file's token ranks, after checking it is the file tiktoken expects."""
    source = _encoding_file(name)
    packed = source.path(name)
    try:
        data = gzip.decompress(packed.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise EncodingFileError(f"cannot read {packed}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != source.sha256:
        raise EncodingFileError(f"{packed} does not match tiktoken's sha256 for {name}")
    ranks = {}
    # One line at a time: a list of all 200k lines would sit beside the ranks.
    for line in io.BytesIO(data):
        token, rank = line.split()
        ranks[binascii.a2b_base64(token)] = int(rank)
    return ranks


def _return_freed_memory_to_the_os() -> None:
    """glibc keeps freed heap pages mapped; malloc_trim hands them back (Lambda runs glibc)."""
    malloc_trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if malloc_trim is not None:
        malloc_trim(0)


def _build_encoding(name: str) -> tiktoken.Encoding:
    source = _encoding_file(name)
    encoding = tiktoken.Encoding(
        name,
        pat_str=source.pat_str,
        mergeable_ranks=read_ranks(name),
        special_tokens=dict(source.special_tokens),
    )
    # The CoreBPE holds its own copy of the ranks; tiktoken keeps this one only to pickle.
    encoding._mergeable_ranks = {}
    _return_freed_memory_to_the_os()
    return encoding


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    _encoding_file(name)
    with _load_lock:
        encoding = _build_encoding(name)
        _loaded.add(name)
        return encoding


class TiktokenCounter:
    """Counts tokens per model with the encoding the model table names for it, loading each
    encoding on first use."""

    def __init__(self, models: PriceTable | None = None) -> None:
        self._models = models or price_table()

    def encoding_name(self, model: str) -> str:
        if self._models.base_model(model) is None:
            return DEFAULT_ENCODING
        return self._models.encoding_for(model)

    def encodings_for(self, models: Iterable[str]) -> tuple[str, ...]:
        """The distinct encodings these models use, in first-use order; checked to be vendored
        (nothing is loaded), so an unknown name in the table fails where this is called."""
        names = tuple(dict.fromkeys(self.encoding_name(model) for model in models))
        for name in names:
            _encoding_file(name)
        return names

    def encoding(self, model: str) -> tiktoken.Encoding:
        return get_encoding(self.encoding_name(model))

    def is_loaded(self, model: str) -> bool:
        """Whether counting for this model is ready without loading an encoding first."""
        return self.encoding_name(model) in _loaded

    def count_text(self, model: str, text: str) -> int:
        return len(self.encoding(model).encode_ordinary(text))

    def count_messages(self, model: str, messages: Iterable[Mapping[str, object]]) -> int:
        """Prompt tokens OpenAI bills for these messages, reply priming included."""
        return _count_messages(self.encoding(model), messages)

    def truncate(self, model: str, text: str, max_tokens: int) -> str:
        encoding = self.encoding(model)
        tokens = encoding.encode_ordinary(text)
        return text if len(tokens) <= max_tokens else encoding.decode(tokens[:max_tokens])


def _count_messages(encoding: tiktoken.Encoding, messages: Iterable[Mapping[str, object]]) -> int:
    total = REPLY_PRIMING_TOKENS
    for message in messages:
        total += TOKENS_PER_MESSAGE
        for key, value in message.items():
            if isinstance(value, str):
                total += len(encoding.encode_ordinary(value))
                if key == "name":
                    total += TOKENS_PER_NAME
    return total


@cache
def token_counter(table_path: str | None = None) -> TiktokenCounter:
    """The process's counter, reading encodings from the same model table as the prices
    (pass Settings.price_table_path, as for price_table())."""
    return TiktokenCounter(price_table(table_path))
