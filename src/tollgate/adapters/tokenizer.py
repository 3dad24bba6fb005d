"""Token counting with tiktoken, from the vendored encoding files; nothing is downloaded.

tiktoken looks for its encoding files in TIKTOKEN_CACHE_DIR under the sha1 of their
download URL and checks their sha256. We unpack the gzipped copies shipped inside the
package into that cache (after checking the same hash ourselves) and let tiktoken's own
constructor build the encoding, so the regex and special tokens stay tiktoken's.
An encoding is loaded only when a model that needs it is first used (~0.3 s, ~50 MB).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path

import tiktoken

ENCODINGS_DIR = Path(__file__).resolve().parent.parent / "encodings"

# name -> (tiktoken's download URL, tiktoken's expected sha256 of the unpacked file)
ENCODING_SOURCES = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}
DEFAULT_ENCODING = "o200k_base"

# OpenAI's chat format: each message is wrapped in <|start|>{role}\n{content}<|end|>\n,
# and every reply is primed with <|start|>assistant<|message|>.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3

_load_lock = threading.Lock()


class EncodingFileError(RuntimeError):
    """A vendored encoding file is missing or does not match tiktoken's published hash."""


def encoding_name_for_model(model: str) -> str:
    try:
        return tiktoken.encoding_name_for_model(model)
    except KeyError:
        return DEFAULT_ENCODING


def _cache_dir() -> Path:
    configured = os.environ.get("TIKTOKEN_CACHE_DIR")
    if configured:
        return Path(configured)
    directory = Path(tempfile.gettempdir()) / "tollgate-tiktoken"
    os.environ["TIKTOKEN_CACHE_DIR"] = str(directory)
    return directory


def _unpack_vendored(name: str) -> None:
    url, expected_sha256 = ENCODING_SOURCES[name]
    target = _cache_dir() / hashlib.sha1(url.encode()).hexdigest()
    # A bad cached copy would make tiktoken try to download the file: replace it instead.
    if target.is_file() and hashlib.sha256(target.read_bytes()).hexdigest() == expected_sha256:
        return
    packed = ENCODINGS_DIR / f"{name}.tiktoken.gz"
    try:
        data = gzip.decompress(packed.read_bytes())
    except OSError as exc:
        raise EncodingFileError(f"cannot read {packed}: {exc}") from exc
    if hashlib.sha256(data).hexdigest() != expected_sha256:
        raise EncodingFileError(f"{packed} does not match tiktoken's sha256 for {name}")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.partial")
    partial.write_bytes(data)
    partial.replace(target)


_loaded: set[str] = set()


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    if name not in ENCODING_SOURCES:
        raise EncodingFileError(f"no vendored encoding named {name}")
    with _load_lock:
        _unpack_vendored(name)
        encoding = tiktoken.get_encoding(name)
        _loaded.add(name)
        return encoding


class TiktokenCounter:
    """Counts tokens per model, loading each model's encoding on first use."""

    def encoding(self, model: str) -> tiktoken.Encoding:
        return get_encoding(encoding_name_for_model(model))

    def encoding_name(self, model: str) -> str:
        return encoding_name_for_model(model)

    def is_loaded(self, model: str) -> bool:
        """Whether counting for this model is ready without loading an encoding first."""
        return encoding_name_for_model(model) in _loaded

    def count_text(self, model: str, text: str) -> int:
        return len(self.encoding(model).encode_ordinary(text))

    def count_messages(self, model: str, messages: Iterable[Mapping[str, object]]) -> int:
        """Prompt tokens OpenAI bills for these messages, reply priming included."""
        encoding = self.encoding(model)
        total = REPLY_PRIMING_TOKENS
        for message in messages:
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if isinstance(value, str):
                    total += len(encoding.encode_ordinary(value))
                    if key == "name":
                        total += TOKENS_PER_NAME
        return total

    def truncate(self, model: str, text: str, max_tokens: int) -> str:
        encoding = self.encoding(model)
        tokens = encoding.encode_ordinary(text)
        return text if len(tokens) <= max_tokens else encoding.decode(tokens[:max_tokens])


@cache
def token_counter() -> TiktokenCounter:
    return TiktokenCounter()
