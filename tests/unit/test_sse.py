"""SSE framing (docs/CONTRACTS.md "The /chat stream"): LF only, `data: ` with one space,
a delta's data exactly `{"delta": "<text>"}`, named events put `event:` first."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollgate.wire import sse

TRICKY_TEXTS = [
    "",
    "hello",
    'she said "hi"',
    "back\\slash",
    "two\nlines",
    "carriage\rreturn",
    "crlf\r\nline",
    "blank\n\nline",
    "line\u2028separator",
    "para\u2029separator",
    "emoji 🎉 and 👩‍👩‍👧",
    "data: [DONE]",
    "event: error",
    "\x00\x1f control",
    "tab\there",
    "ünïcödé",
    '{"delta": "nested"}',
]


def blocks(frame: bytes) -> list[str]:
    """Split a frame the way a line-splitting client does: on LF blank lines only."""
    text = frame.decode("utf-8")
    assert text.endswith("\n\n")
    return text[:-2].split("\n\n")


def data_payload(block: str) -> str:
    data_lines = [line for line in block.split("\n") if line.startswith("data: ")]
    assert len(data_lines) == 1
    return data_lines[0][len("data: ") :]


@pytest.mark.parametrize("text", TRICKY_TEXTS)
def test_delta_frame_is_one_lf_block_whose_data_parses_back_to_the_text(text: str) -> None:
    # Given any text a model could produce
    # When it is framed as a delta
    frame = sse.delta(text)
    # Then it is exactly one block, one line, LF only, starting with `data: `
    assert b"\r" not in frame
    (block,) = blocks(frame)
    assert "\n" not in block
    assert block.startswith("data: ")
    assert not block.startswith("data:  ")
    # And JSON.parse(...).delta gives the text back, with exactly one key
    assert json.loads(block[len("data: ") :]) == {"delta": text}


@pytest.mark.parametrize("text", ["a", 'q"uote', "é", "🎉", ""])
def test_delta_data_is_exactly_the_documented_shape(text: str) -> None:
    # Given a text
    # When framed
    frame = sse.delta(text)
    # Then the data is literally {"delta": <json string>}
    assert frame == f'data: {{"delta": {json.dumps(text)}}}\n\n'.encode()


def test_delta_escapes_line_and_paragraph_separators() -> None:
    # Given U+2028/U+2029, which some JS line splitters treat as line ends
    # When framed
    frame = sse.delta("a\u2028b\u2029c")
    # Then they never appear raw on the wire
    assert "\u2028".encode() not in frame
    assert "\u2029".encode() not in frame
    assert json.loads(data_payload(blocks(frame)[0])) == {"delta": "a\u2028b\u2029c"}


def test_named_event_puts_event_line_first_then_one_data_line() -> None:
    # Given a named event with a payload holding tricky text
    payload = {"conversation_id": "c1", "request_id": "r\n1", "model": "gpt-4o-mini"}
    # When framed
    frame = sse.event("meta", payload)
    # Then the block is `event: meta` then `data: {...}`, LF only, one blank line at the end
    assert b"\r" not in frame
    (block,) = blocks(frame)
    lines = block.split("\n")
    assert lines[0] == "event: meta"
    assert len(lines) == 2
    assert lines[1].startswith("data: ")
    assert json.loads(lines[1][len("data: ") :]) == payload


def test_named_event_is_skipped_by_a_client_reading_only_data_blocks() -> None:
    # Given a plain client that reads blocks starting with `data: ` only
    frames = (
        sse.event("meta", {"model": "m"})
        + sse.delta("hi")
        + sse.event("usage", {"input_tokens": 1})
        + sse.DONE
    )
    # When it reads the stream
    deltas = []
    for block in blocks(frames):
        if not block.startswith("data: "):
            continue
        body = block[len("data: ") :]
        if body == "[DONE]":
            break
        deltas.append(json.loads(body)["delta"])
    # Then it sees exactly the deltas
    assert deltas == ["hi"]


def test_error_event_payload_round_trips() -> None:
    # Given an error after streaming started
    frame = sse.event("error", {"code": "timeout", "message": 'took "too" long\r\n'})
    # Then it parses back unchanged and stays LF-only
    (block,) = blocks(frame)
    assert block.split("\n")[0] == "event: error"
    assert json.loads(data_payload(block)) == {"code": "timeout", "message": 'took "too" long\r\n'}
    assert b"\r" not in frame


def test_done_frame_is_exact() -> None:
    # Given the end of a stream
    # Then the frame is the literal OpenAI-style terminator
    assert sse.DONE == b"data: [DONE]\n\n"


@given(st.text())
def test_any_text_frames_as_exactly_one_block_decoding_to_itself(text: str) -> None:
    # Given any unicode text
    # When framed as a delta and split on blank lines
    parts = sse.delta(text).decode("utf-8").split("\n\n")
    # Then there is exactly one block (plus the empty tail after the final blank line)
    assert parts[1:] == [""]
    (block,) = parts[:-1]
    assert b"\r" not in block.encode()
    assert json.loads(data_payload(block)) == {"delta": text}


@given(st.text(), st.text(alphabet=st.characters(categories=["L", "N"]), min_size=1))
def test_any_named_event_frames_as_one_block(text: str, name: str) -> None:
    # Given any payload text and a simple event name
    frame = sse.event(name, {"message": text})
    # When split on blank lines
    parts = frame.decode("utf-8").split("\n\n")
    # Then one block: event line first, one data line that decodes back
    assert parts[1:] == [""]
    lines = parts[0].split("\n")
    assert lines[0] == f"event: {name}"
    assert len(lines) == 2
    assert json.loads(lines[1][len("data: ") :]) == {"message": text}
