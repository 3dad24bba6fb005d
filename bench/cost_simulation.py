"""What managed history saves: naive full-history prompts vs Tollgate's summary + window.

    python bench/cost_simulation.py [--conversations N] [--turns 20] [--seed S]
                                    [--model gpt-4o-mini] [--summary-model gpt-4o-mini]
                                    [--target 4000] [--json out.json]

Simulates conversations with deterministic pseudo-English messages (users 20-150 words,
replies 80-300 words), counts every request's prompt with the real tokenizer and prices it
with the price table, three ways:

  naive    the whole history is re-sent on every turn
  managed  history_window + plan_summary within HISTORY_TOKEN_TARGET, plus the summary
           calls' own tokens at SUMMARY_MODEL prices
  caching  both of the above again with OpenAI prompt caching: the part of a prompt that
           repeats the previous request's prefix is billed at the cached price once it is
           at least 1024 tokens, in 128-token steps. Assumes each turn follows the last
           within the cache's lifetime (minutes), so it is a best case for both.

Replies are the same in both strategies (same output tokens); only input differs.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from tollgate.adapters.tokenizer import token_counter
from tollgate.history import (
    CountMessages,
    build_messages,
    history_window,
    plan_summary,
    summary_history_tokens,
    summary_max_tokens,
    summary_request_messages,
    turn_history_tokens,
)
from tollgate.ports import Message, Turn
from tollgate.pricing import ModelPrice, price_table

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128
# The summarisation prompt asks for under 300 words; new material compresses about 5:1.
SUMMARY_WORD_LIMIT = 300
SUMMARY_COMPRESSION = 0.2

VOCABULARY = (
    "the a to of and in is it that for you with on as be this are can we how what not or "
    "have your from but by at if will do an about more so one there which when they would "
    "use need should could also time data request model token tokens cost budget limit user "
    "users conversation summary table function lambda stream streaming response prompt cache "
    "price dollar daily history turn turns answer question example config deploy region "
    "python code error retry timeout latency throughput dynamodb partition key value item "
    "query index capacity write read consistent eventually transaction condition expression "
    "because however although therefore instead usually typically sometimes probably exactly "
    "important different simple practical reasonable expensive cheaper faster slower larger "
    "smaller approach solution problem decision option trade-off architecture service client "
    "server network request-response payload header status message event schedule alarm "
    "dashboard metric log record aggregate window rollup invoice customer product feature "
    "team manager engineer release version migration schema backup restore security access "
    "policy permission role identity secret rotate encrypt monitor measure estimate compare"
)
WORDS = VOCABULARY.split()


@dataclass
class Tally:
    requests: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    cost_micros: int = 0
    cost_micros_with_cache: int = 0
    largest_prompt: int = 0

    def add(self, price: ModelPrice, prompt: int, cached: int, output: int) -> None:
        self.requests += 1
        self.input_tokens += prompt
        self.cached_input_tokens += cached
        self.output_tokens += output
        self.cost_micros += price.cost_micros(prompt, 0, output)
        self.cost_micros_with_cache += price.cost_micros(prompt, cached, output)
        self.largest_prompt = max(self.largest_prompt, prompt)

    def __iadd__(self, other: Tally) -> Tally:
        for name, value in asdict(other).items():
            if name == "largest_prompt":
                self.largest_prompt = max(self.largest_prompt, value)
            else:
                setattr(self, name, getattr(self, name) + value)
        return self

    def report(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "cost_usd": self.cost_micros / 1_000_000,
            "cost_usd_with_cache": self.cost_micros_with_cache / 1_000_000,
        }


@dataclass
class PrefixCache:
    """The previous request's messages of one call stream, for prefix-cache matching."""

    count: CountMessages
    previous: list[Message] = field(default_factory=list)

    def cached_tokens(self, messages: list[Message]) -> int:
        shared = 0
        for before, now in zip(self.previous, messages, strict=False):
            if before != now:
                break
            shared += 1
        self.previous = messages
        prefix = self.count(messages[:shared]) - self.count([]) if shared else 0
        if prefix < CACHE_MIN_TOKENS:
            return 0
        return prefix // CACHE_STEP_TOKENS * CACHE_STEP_TOKENS


def text(rng: random.Random, words: int) -> str:
    sentences: list[str] = []
    remaining = words
    while remaining > 0:
        length = min(remaining, rng.randint(6, 18))
        sentence = " ".join(rng.choice(WORDS) for _ in range(length))
        sentences.append(sentence[0].upper() + sentence[1:] + ".")
        remaining -= length
    return " ".join(sentences)


def read_prompt(relative: str, fallback: str) -> str:
    path = PROMPTS_DIR / relative
    return path.read_text(encoding="utf-8").strip() if path.is_file() else fallback


def simulate(
    conversations: int = 50,
    turns: int = 20,
    seed: int = 7,
    model: str = "gpt-4o-mini",
    summary_model: str = "gpt-4o-mini",
    history_token_target: int = 4000,
) -> dict[str, Any]:
    """Bill `conversations` × `turns` both ways; returns totals, ratios and parameters."""
    rng = random.Random(seed)
    counter = token_counter()
    count: CountMessages = partial(counter.count_messages, model)
    count_summary: CountMessages = partial(counter.count_messages, summary_model)
    prices = price_table()
    chat_price, summary_price = prices.price(model), prices.price(summary_model)
    system_prompt = read_prompt("default.md", "You are a helpful, concise assistant.")
    summary_prompt = read_prompt("internal/summarize.md", "Summarise the conversation.")
    summary_cap = summary_max_tokens(history_token_target)

    naive, managed_chat, managed_summary = Tally(), Tally(), Tally()
    summaries = 0
    for _ in range(conversations):
        exchanges = [
            (text(rng, rng.randint(20, 150)), text(rng, rng.randint(80, 300))) for _ in range(turns)
        ]
        history: list[Turn] = []
        naive_cache, chat_cache = PrefixCache(count), PrefixCache(count)
        summary_cache = PrefixCache(count_summary)
        summary: str | None = None
        summary_tokens = 0
        pending: list[Turn] = []
        for number, (user, reply) in enumerate(exchanges, start=1):
            output = counter.count_text(model, reply)

            prompt = build_messages(system_prompt, None, history, user)
            naive.add(chat_price, count(prompt), naive_cache.cached_tokens(prompt), output)

            window = history_window(summary_tokens, pending, history_token_target)
            prompt = build_messages(system_prompt, summary, window, user)
            managed_chat.add(chat_price, count(prompt), chat_cache.cached_tokens(prompt), output)

            turn = Turn(
                turn=number,
                user=user,
                assistant=reply,
                model=model,
                input_tokens=0,
                output_tokens=output,
                cost_micros=0,
                created_at="",
                history_tokens=turn_history_tokens(count, user, reply),
            )
            history.append(turn)
            pending.append(turn)
            plan = plan_summary(summary_tokens, pending, history_token_target)
            if plan is None:
                continue
            request = summary_request_messages(summary_prompt, summary, plan.fold)
            folded_words = sum(len(f"{t.user} {t.assistant}".split()) for t in plan.fold)
            previous_words = len(summary.split()) if summary else 0
            new_words = previous_words + round(folded_words * SUMMARY_COMPRESSION)
            summary = counter.truncate(
                summary_model, text(rng, min(SUMMARY_WORD_LIMIT, new_words)), summary_cap
            )
            managed_summary.add(
                summary_price,
                count_summary(request),
                summary_cache.cached_tokens(request),
                counter.count_text(summary_model, summary),
            )
            summary_tokens = summary_history_tokens(count, summary)
            pending = plan.keep
            summaries += 1

    managed = Tally()
    managed += managed_chat
    managed += managed_summary
    return {
        "parameters": {
            "conversations": conversations,
            "turns": turns,
            "seed": seed,
            "model": model,
            "summary_model": summary_model,
            "history_token_target": history_token_target,
            "prices_as_of": prices.as_of,
        },
        "naive": naive.report(),
        "managed_chat": managed_chat.report(),
        "managed_summary": managed_summary.report(),
        "managed": managed.report(),
        "summary_calls": summaries,
        "chat_output_cost_usd": float(naive.output_tokens * chat_price.output) / 1_000_000,
        "ratio_managed_over_naive": managed.cost_micros / naive.cost_micros,
        "ratio_managed_over_naive_with_cache": (
            managed.cost_micros_with_cache / naive.cost_micros_with_cache
        ),
        "ratio_managed_cached_over_naive_uncached": (
            managed.cost_micros_with_cache / naive.cost_micros
        ),
    }


def render(result: dict[str, Any]) -> str:
    parameters = result["parameters"]
    rows = [
        ("naive: full history", result["naive"]),
        ("managed: chat calls", result["managed_chat"]),
        ("managed: summary calls", result["managed_summary"]),
        ("managed: total", result["managed"]),
    ]
    lines = [
        f"{parameters['conversations']} conversations × {parameters['turns']} turns, "
        f"model {parameters['model']}, summaries by {parameters['summary_model']}, "
        f"HISTORY_TOKEN_TARGET {parameters['history_token_target']}, "
        f"prices as of {parameters['prices_as_of']}, seed {parameters['seed']}",
        "",
        f"{'':24}{'requests':>9}{'input tok':>12}{'cached tok':>12}{'output tok':>12}"
        f"{'largest':>9}{'$ no cache':>12}{'$ cached':>11}",
    ]
    for label, tally in rows:
        lines.append(
            f"{label:24}{tally['requests']:>9,}{tally['input_tokens']:>12,}"
            f"{tally['cached_input_tokens']:>12,}{tally['output_tokens']:>12,}"
            f"{tally['largest_prompt']:>9,}{tally['cost_usd']:>12.4f}"
            f"{tally['cost_usd_with_cache']:>11.4f}"
        )
    naive, managed = result["naive"], result["managed"]
    chat, summary = result["managed_chat"], result["managed_summary"]
    saved_input = naive["input_tokens"] - chat["input_tokens"]
    lines += [
        "",
        f"managed / naive: {result['ratio_managed_over_naive']:.3f} without caching, "
        f"{result['ratio_managed_over_naive_with_cache']:.3f} with caching on both, "
        f"{result['ratio_managed_cached_over_naive_uncached']:.3f} managed+cache vs naive",
        "",
        "where the savings come from:",
        f"  bounded history: {saved_input:,} fewer chat input tokens "
        f"({saved_input / naive['input_tokens']:.1%}), "
        f"${naive['cost_usd'] - chat['cost_usd']:.4f}",
        f"  summary calls:   {result['summary_calls']} calls cost ${summary['cost_usd']:.4f} back",
        f"  prompt caching:  saves ${naive['cost_usd'] - naive['cost_usd_with_cache']:.4f} "
        f"naive, ${managed['cost_usd'] - managed['cost_usd_with_cache']:.4f} managed "
        f"({chat['cached_input_tokens'] / max(1, chat['input_tokens']):.1%} of managed chat "
        "input was a cached prefix)",
        f"  replies are the same in both: {naive['output_tokens']:,} output tokens, "
        f"${result['chat_output_cost_usd']:.4f} of each total",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--summary-model", default="gpt-4o-mini")
    parser.add_argument("--target", type=int, default=4000, help="HISTORY_TOKEN_TARGET")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = simulate(
        conversations=args.conversations,
        turns=args.turns,
        seed=args.seed,
        model=args.model,
        summary_model=args.summary_model,
        history_token_target=args.target,
    )
    print(render(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
