"""bench/cost_simulation.py measures the shipped history policy: its own arithmetic is tested."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tollgate.adapters.tokenizer import token_counter
from tollgate.history import build_messages
from tollgate.ports import Message

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cost_simulation.py"


@pytest.fixture(scope="module")
def simulation() -> ModuleType:
    spec = importlib.util.spec_from_file_location("cost_simulation", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


def test_memoised_counting_matches_the_tokenizer(simulation: ModuleType) -> None:
    # Given a whole prompt of simulated turns
    count = simulation.MessageCounter("gpt-4o-mini")
    rng = random.Random(1)
    turns = [
        simulation.make_turn(n, simulation.text(rng, 40), simulation.text(rng, 90), "m", 0)
        for n in range(1, 4)
    ]
    prompt = build_messages("Be brief.", "A summary, é ✓.", turns, "Next?")

    # When counted per message and summed, Then it is what the tokenizer bills
    assert count(prompt) == token_counter().count_messages("gpt-4o-mini", prompt)
    assert count.text(turns[0].assistant) == token_counter().count_text(
        "gpt-4o-mini", turns[0].assistant
    )


def test_prefix_cache_bills_only_a_shared_prefix_of_1024_tokens_in_128_token_steps(
    simulation: ModuleType,
) -> None:
    count = simulation.MessageCounter("gpt-4o-mini")
    cache = simulation.PrefixCache(count)
    long: Message = {"role": "system", "content": "word " * 1500}
    short: Message = {"role": "system", "content": "word " * 500}
    first: list[Message] = [long, {"role": "user", "content": "one"}]

    assert cache.cached_tokens(first) == 0  # nothing cached yet
    shared = count([long]) - count([])
    assert cache.cached_tokens([long, {"role": "user", "content": "two"}]) == shared // 128 * 128
    assert cache.cached_tokens([short, {"role": "user", "content": "three"}]) == 0
    assert cache.cached_tokens([short, {"role": "user", "content": "four"}]) == 0  # < 1024


def test_the_cache_key_ignores_only_whitespace(simulation: ModuleType) -> None:
    rng = random.Random(3)
    question = "How do I rotate a secret?"

    variants = {simulation.normalise(simulation.retyped(rng, question)) for _ in range(50)}

    assert variants == {question}
    assert simulation.normalise("How do I  rotate a Secret?") != question


def test_the_question_mix_repeats_the_share_it_was_calibrated_for(
    simulation: ModuleType,
) -> None:
    asks, texts, _ = simulation.question_mix(
        requests=2000,
        repeat_share=0.4,
        faq_questions=300,
        zipf_exponent=1.0,
        duration_s=3600,
        unstored_share=0.05,
        seed=5,
    )

    keys = [simulation.normalise(ask.message) for ask in asks]
    assert len(keys) - len(set(keys)) == 800
    assert all(
        simulation.normalise(texts[ask.question][0]) == key
        for ask, key in zip(asks, keys, strict=True)
    )


def test_the_grid_bills_every_cell_and_the_response_cache_saves_what_it_hits(
    simulation: ModuleType,
) -> None:
    # Given a small grid
    result = simulation.run_grid(conversations=2, turns=(5, 20), response_cache_requests=400)

    # Then every family × length × caching cell is there
    cells = result["cells"]
    assert len(cells) == 3 * 2 * 2
    # and 5-turn conversations never reach the target: managed is naive exactly
    assert all(cell["ratio"] == 1.0 for cell in cells if cell["turns"] == 5)
    assert all(cell["summary_calls"] > 0 for cell in cells if cell["turns"] == 20)
    assert all(0 <= cell["forced_summary_calls"] <= cell["summary_calls"] for cell in cells)
    # and the response cache never saves more than its hit rate plus sampling noise allows
    cache = result["response_cache"]
    assert 0.3 < cache["hit_rate"] <= cache["repeat_share"] <= 0.41
    for family in cache["families"]:
        assert family["with_cache_usd"] < family["without_cache_usd"]
    assert {target["target"] for target in result["targets"]} >= {
        "managed history, every cell, caching on both"
    }
