"""Server-Sent Events framing: LF only, `data: ` with one space, a blank line after each event."""

from __future__ import annotations

import json
from json.encoder import encode_basestring_ascii
from typing import Any

DONE = b"data: [DONE]\n\n"
# A comment line: SSE clients ignore it; proxies see bytes and keep the stream open.
KEEPALIVE = b": keep-alive\n\n"


def _dumps(data: Any) -> str:
    # ensure_ascii keeps every frame one line whatever the text holds (U+2028 included)
    return json.dumps(data, separators=(", ", ": "))


def event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {_dumps(data)}\n\n".encode()


def json_string(text: str) -> str:
    """`json.dumps(text)` without its dispatch: the per-chunk encoding of the streams."""
    return encode_basestring_ascii(text)


def delta(text: str) -> bytes:
    return f'data: {{"delta": {json_string(text)}}}\n\n'.encode()
