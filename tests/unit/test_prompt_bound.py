"""The /v1 reservation's prompt part covers what the offline model server bills.

The offline server bills tools in OpenAI's TypeScript-like rendering, tool calls by their
name and arguments, and images at the model table's bound for the answering model
(tollgate.local.offline_tools); the gateway bounds tools by their JSON and images by the
largest bound over the chain. Both counting modes (exact, and byte bounds while the
encodings load) must cover every model of the chain.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tollgate.adapters.tokenizer import token_counter
from tollgate.counting import Counts, completion_prompt
from tollgate.local.offline_tools import billed_prompt_tokens
from tollgate.pricing import price_table

CHAINS = [("gpt-4o-mini", "gpt-4o"), ("gpt-4.1", "gpt-4.1-mini"), ("gpt-5-nano",), ("o3", "gpt-4o")]
texts = st.text(max_size=40)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,20}", fullmatch=True)


def schemas(depth: int = 2) -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.one_of(
        st.builds(
            lambda kind: {"type": kind}, st.sampled_from(["string", "integer", "number", "boolean"])
        ),
        st.builds(
            lambda values: {"type": "string", "enum": values},
            st.lists(texts, min_size=1, max_size=4),
        ),
        st.builds(
            lambda kind, text: {"type": kind, "description": text},
            st.sampled_from(["string", "integer"]),
            texts,
        ),
    )
    if depth == 0:
        return leaf
    inner = schemas(depth - 1)
    return st.one_of(
        leaf,
        st.builds(lambda item: {"type": "array", "items": item}, inner),
        st.dictionaries(names, inner, max_size=4).flatmap(
            lambda properties: st.builds(
                lambda required, description: {
                    "type": "object",
                    "properties": properties,
                    "required": required,
                    **({"description": description} if description else {}),
                },
                st.lists(
                    st.sampled_from(sorted(properties)) if properties else st.nothing(), unique=True
                ),
                texts,
            )
        ),
    )


def tools() -> st.SearchStrategy[list[dict[str, Any]]]:
    function = st.builds(
        lambda name, description, parameters: {
            "type": "function",
            "function": {
                "name": name,
                **({"description": description} if description else {}),
                "parameters": {"type": "object", **parameters},
            },
        },
        names,
        texts,
        st.dictionaries(names, schemas(), max_size=5).map(
            lambda properties: {"properties": properties, "required": sorted(properties)[:1]}
        ),
    )
    return st.lists(function, max_size=4)


image_part = st.builds(
    lambda detail: {
        "type": "image_url",
        "image_url": {"url": "https://example.com/a.png", "detail": detail},
    },
    st.sampled_from(["auto", "low", "high"]),
)
text_part = st.builds(lambda text: {"type": "text", "text": text}, texts)
tool_call = st.builds(
    lambda call_id, name, arguments: {
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": json.dumps(arguments)},
    },
    names,
    names,
    st.dictionaries(names, st.one_of(texts, st.integers(), st.booleans()), max_size=4),
)
messages = st.lists(
    st.one_of(
        st.builds(lambda text: {"role": "system", "content": text}, texts),
        st.builds(lambda text: {"role": "user", "content": text}, texts),
        st.builds(
            lambda parts: {"role": "user", "content": parts},
            st.lists(st.one_of(text_part, image_part), min_size=1, max_size=4),
        ),
        st.builds(
            lambda calls, text: {"role": "assistant", "content": text or None, "tool_calls": calls},
            st.lists(tool_call, min_size=1, max_size=3),
            texts,
        ),
        st.builds(
            lambda call_id, text: {"role": "tool", "tool_call_id": call_id, "content": text},
            names,
            texts,
        ),
    ),
    min_size=1,
    max_size=6,
)
response_formats = st.one_of(
    st.none(),
    st.just({"type": "json_object"}),
    schemas(1).map(
        lambda schema: {
            "type": "json_schema",
            "json_schema": {
                "name": "answer",
                "schema": {"type": "object", "properties": {"value": schema}},
            },
        }
    ),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chain=st.sampled_from(CHAINS),
    tools=tools(),
    messages=messages,
    response_format=response_formats,
)
def test_the_reserved_prompt_covers_what_any_model_of_the_chain_bills(
    chain: tuple[str, ...],
    tools: list[dict[str, Any]],
    messages: list[dict[str, Any]],
    response_format: dict[str, Any] | None,
) -> None:
    tokens = token_counter()
    prices = price_table()
    body: dict[str, Any] = {"messages": messages}
    if tools:
        body["tools"] = tools
    if response_format:
        body["response_format"] = response_format
    billed = max(billed_prompt_tokens(model, body) for model in chain)
    for exact in (True, False):
        prompt = completion_prompt(
            Counts(exact, tokens), prices, chain, messages, tools or None, response_format
        )
        assert prompt.bound >= billed, (exact, prompt, billed)


def test_an_image_reserves_the_largest_bound_of_the_chain() -> None:
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {
                    "type": "image_url",
                    "image_url": {"url": "https://example.com/a.png", "detail": "high"},
                },
            ],
        }
    ]
    prompt = completion_prompt(
        Counts(True, token_counter()),
        price_table(),
        ("gpt-4o", "gpt-4o-mini"),
        messages,
        None,
        None,
    )
    assert prompt.images == 48169  # gpt-4o-mini's high-detail bound, above gpt-4o's 1445
    assert prompt.text < 30
