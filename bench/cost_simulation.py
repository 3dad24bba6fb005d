"""What managed history and the response cache save, in simulated dollars.

    python bench/cost_simulation.py [--conversations 50] [--seed 7] [--target 4000]
                                    [--requests 5000] [--json out.json]

History grid: conversations of 5, 20, 50 and 100 turns × three model families × with
and without OpenAI's prompt caching, billed three ways:

  naive     the whole history is re-sent on every turn
  managed   Tollgate's shipped policy: history.history_window + history.plan_summary
            with FoldEconomics from the family's prices (cost-aware folding), plus the
            summary calls' own tokens at the summary model's prices
  previous  the same without FoldEconomics: fold past the target down to half of it

"folds" counts managed's summary calls with prompt caching, "forced" those that
HISTORY_TOKEN_TARGET forced (the rest are early folds the economics chose).

Messages are deterministic pseudo-English (users 20-150 words, replies 80-300 words);
every prompt is counted with the real o200k tokenizer (all three families use it). A
turn's reply is the same in every strategy, so only input and summary calls differ; the
ratios include the replies' output cost on both sides. A fold that follows the last turn
of a conversation is billed, because production cannot know that turn was the last.

Prompt caching is modelled as OpenAI documents it: the part of a request that repeats
the previous request's prefix is billed at the cached price once it is at least 1024
tokens, in 128-token steps. It assumes every turn follows the last within the cache's
lifetime (minutes), a best case for both strategies alike. "Without caching" bills
every input token at the input price, and the managed policy is told so (its
FoldEconomics has cached price = input price).

Summaries: the summary model is the family's cheapest sensible model (gpt-4o-mini for
itself, gpt-4.1-nano, gpt-5-nano). A summary grows by a fifth of the words it folds,
stays under 300 words and is truncated at summary_max_tokens, like the real prompt asks.
gpt-5-nano is a reasoning model: each of its summary calls is billed
GPT5_SUMMARY_REASONING_TOKENS of hidden output on top (an assumption; the chat replies
carry none, since that would add the same to both sides and flatter the ratios).

Response cache: a replayed mix of first questions (see simulate_response_cache).
"""

from __future__ import annotations

import argparse
import bisect
import json
import math
import random
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tollgate.adapters.tokenizer import token_counter
from tollgate.history import (
    FoldEconomics,
    build_messages,
    history_window,
    plan_summary,
    summary_history_tokens,
    summary_max_tokens,
    summary_request_messages,
    turn_history_tokens,
)
from tollgate.ports import Message, Turn
from tollgate.pricing import ModelPrice

PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
CACHE_MIN_TOKENS = 1024
CACHE_STEP_TOKENS = 128
# The summarisation prompt asks for under 300 words; new material compresses about 5:1.
SUMMARY_WORD_LIMIT = 300
SUMMARY_COMPRESSION = 0.2
GPT5_SUMMARY_REASONING_TOKENS = 256
GRID_TURNS = (5, 20, 50, 100)
# DynamoDB on-demand, us-east-1 (USD per 1M request units), for the response cache's
# own lookups and writes: a strongly consistent read of up to 4 KB is 1 RRU, a write
# one WRU per started KB.
DYNAMODB_READ_USD_PER_M = 0.125
DYNAMODB_WRITE_USD_PER_M = 0.625
CACHE_ITEM_OVERHEAD_BYTES = 300  # key, prompt name, model, cap, cost, TTL attribute

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


def per_million(input_usd: str, cached_usd: str, output_usd: str) -> ModelPrice:
    return ModelPrice(Decimal(input_usd), Decimal(cached_usd), Decimal(output_usd))


@dataclass(frozen=True)
class Family:
    """A chat model and the summary model that goes with it (prices: USD per 1M tokens)."""

    model: str
    price: ModelPrice
    summary_model: str
    summary_price: ModelPrice
    summary_reasoning_tokens: int = 0

    def economics(self, *, caching: bool) -> FoldEconomics:
        chat = self.price if caching else ModelPrice(self.price.input, self.price.input, Decimal(0))
        return FoldEconomics.from_prices(
            chat, self.summary_price, summary_reasoning_tokens=self.summary_reasoning_tokens
        )


# OpenAI's published prices (DESIGN.md, "Today's OpenAI models").
FAMILIES = (
    Family(
        "gpt-4o-mini",
        per_million("0.15", "0.075", "0.60"),
        "gpt-4o-mini",
        per_million("0.15", "0.075", "0.60"),
    ),
    Family(
        "gpt-4.1-mini",
        per_million("0.40", "0.10", "1.60"),
        "gpt-4.1-nano",
        per_million("0.10", "0.025", "0.40"),
    ),
    Family(
        "gpt-5-mini",
        per_million("0.25", "0.025", "2.00"),
        "gpt-5-nano",
        per_million("0.05", "0.005", "0.40"),
        summary_reasoning_tokens=GPT5_SUMMARY_REASONING_TOKENS,
    ),
)


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

    def cost(self, *, caching: bool) -> int:
        return self.cost_micros_with_cache if caching else self.cost_micros

    def report(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "cost_usd": self.cost_micros / 1_000_000,
            "cost_usd_with_cache": self.cost_micros_with_cache / 1_000_000,
        }


class MessageCounter:
    """tokenizer.count_messages, summed per message and memoised: a prompt's tokens are
    the sum of its messages' (tests/unit/test_history.py checks that this holds)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.empty = token_counter().count_messages(model, [])
        self._messages: dict[tuple[str, str], int] = {}
        self._texts: dict[str, int] = {}

    def __call__(self, messages: Sequence[Message]) -> int:
        return self.empty + sum(self.message(message) for message in messages)

    def message(self, message: Message) -> int:
        key = (str(message["role"]), str(message["content"]))
        tokens = self._messages.get(key)
        if tokens is None:
            tokens = token_counter().count_messages(self.model, [message]) - self.empty
            self._messages[key] = tokens
        return tokens

    def text(self, content: str) -> int:
        tokens = self._texts.get(content)
        if tokens is None:
            tokens = token_counter().count_text(self.model, content)
            self._texts[content] = tokens
        return tokens


@dataclass
class PrefixCache:
    """The previous request's messages of one call stream, for prefix-cache matching."""

    count: MessageCounter
    previous: list[Message] = field(default_factory=list)

    def cached_tokens(self, messages: list[Message]) -> int:
        shared = 0
        for before, now in zip(self.previous, messages, strict=False):
            if before != now:
                break
            shared += 1
        self.previous = messages
        prefix = self.count(messages[:shared]) - self.count.empty if shared else 0
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


Exchanges = list[tuple[str, str]]


def make_conversations(conversations: int, turns: int, seed: int) -> list[Exchanges]:
    rng = random.Random(seed)
    return [
        [(text(rng, rng.randint(20, 150)), text(rng, rng.randint(80, 300))) for _ in range(turns)]
        for _ in range(conversations)
    ]


@dataclass
class Bill:
    """One strategy's tallies for conversations cut at each checkpoint (turn count)."""

    chat: dict[int, Tally]
    summary: dict[int, Tally]
    summary_calls: dict[int, int]
    forced_calls: dict[int, int]  # folds the target forced, whatever the economics said

    @classmethod
    def at(cls, checkpoints: Sequence[int]) -> Bill:
        return cls(
            {n: Tally() for n in checkpoints},
            {n: Tally() for n in checkpoints},
            dict.fromkeys(checkpoints, 0),
            dict.fromkeys(checkpoints, 0),
        )

    def total(self, checkpoint: int) -> Tally:
        total = Tally()
        total += self.chat[checkpoint]
        total += self.summary[checkpoint]
        return total


@dataclass(frozen=True)
class Setting:
    family: Family
    system_prompt: str
    summary_prompt: str
    target: int
    seed: int


def bill_naive(
    setting: Setting, conversations: list[Exchanges], checkpoints: Sequence[int]
) -> Bill:
    family = setting.family
    count = MessageCounter(family.model)
    bill = Bill.at(checkpoints)
    for exchanges in conversations:
        cache = PrefixCache(count)
        history: list[Turn] = []
        for number, (user, reply) in enumerate(exchanges, start=1):
            prompt = build_messages(setting.system_prompt, None, history, user)
            prompt_tokens, cached = count(prompt), cache.cached_tokens(prompt)
            output = count.text(reply)
            for checkpoint in checkpoints:
                if number <= checkpoint:
                    bill.chat[checkpoint].add(family.price, prompt_tokens, cached, output)
            history.append(make_turn(number, user, reply, family.model, 0))
    return bill


def make_turn(number: int, user: str, reply: str, model: str, history_tokens: int) -> Turn:
    return Turn(
        turn=number,
        user=user,
        assistant=reply,
        model=model,
        input_tokens=0,
        output_tokens=0,
        cost_micros=0,
        created_at="",
        history_tokens=history_tokens,
    )


def bill_managed(
    setting: Setting,
    conversations: list[Exchanges],
    checkpoints: Sequence[int],
    economics: FoldEconomics | None,
) -> Bill:
    """Tollgate's history: window + summary, folding as plan_summary decides."""
    family, target = setting.family, setting.target
    counter = token_counter()
    count = MessageCounter(family.model)
    count_summary = MessageCounter(family.summary_model)
    summary_cap = summary_max_tokens(target)
    bill = Bill.at(checkpoints)
    for index, exchanges in enumerate(conversations):
        rng = random.Random(f"{setting.seed}:{index}")
        chat_cache, summary_cache = PrefixCache(count), PrefixCache(count_summary)
        summary: str | None = None
        summary_tokens = 0
        pending: list[Turn] = []
        for number, (user, reply) in enumerate(exchanges, start=1):
            later = [checkpoint for checkpoint in checkpoints if number <= checkpoint]
            window = history_window(summary_tokens, pending, target)
            prompt = build_messages(setting.system_prompt, summary, window, user)
            prompt_tokens, cached = count(prompt), chat_cache.cached_tokens(prompt)
            output = count.text(reply)
            for checkpoint in later:
                bill.chat[checkpoint].add(family.price, prompt_tokens, cached, output)

            tokens = turn_history_tokens(count, user, reply)
            pending.append(make_turn(number, user, reply, family.model, tokens))
            plan = plan_summary(summary_tokens, pending, target, economics=economics)
            if plan is None:
                continue
            forced = summary_tokens + sum(turn.history_tokens for turn in pending) > target
            request = summary_request_messages(setting.summary_prompt, summary, plan.fold)
            folded_words = sum(len(f"{t.user} {t.assistant}".split()) for t in plan.fold)
            previous_words = len(summary.split()) if summary else 0
            new_words = previous_words + round(folded_words * SUMMARY_COMPRESSION)
            summary = counter.truncate(
                family.summary_model, text(rng, min(SUMMARY_WORD_LIMIT, new_words)), summary_cap
            )
            request_tokens = count_summary(request)
            request_cached = summary_cache.cached_tokens(request)
            summary_output = (
                counter.count_text(family.summary_model, summary) + family.summary_reasoning_tokens
            )
            for checkpoint in later:
                bill.summary[checkpoint].add(
                    family.summary_price, request_tokens, request_cached, summary_output
                )
                bill.summary_calls[checkpoint] += 1
                bill.forced_calls[checkpoint] += forced
            summary_tokens = summary_history_tokens(count, summary)
            pending = plan.keep
    return bill


def setting_for(family: Family, target: int, seed: int) -> Setting:
    return Setting(
        family=family,
        system_prompt=read_prompt("default.md", "You are a helpful, concise assistant."),
        summary_prompt=read_prompt("internal/summarize.md", "Summarise the conversation."),
        target=target,
        seed=seed,
    )


def run_grid(
    conversations: int = 50,
    turns: Sequence[int] = GRID_TURNS,
    seed: int = 7,
    history_token_target: int = 4000,
    families: Sequence[Family] = FAMILIES,
    response_cache_requests: int = 5000,
) -> dict[str, Any]:
    """The history grid and the response-cache replay, with the targets checked."""
    checkpoints = sorted(turns)
    dialogues = make_conversations(conversations, checkpoints[-1], seed)
    cells: list[dict[str, Any]] = []
    for family in families:
        setting = setting_for(family, history_token_target, seed)
        naive = bill_naive(setting, dialogues, checkpoints)
        previous = bill_managed(setting, dialogues, checkpoints, None)
        for caching in (False, True):
            managed = bill_managed(
                setting, dialogues, checkpoints, family.economics(caching=caching)
            )
            for checkpoint in checkpoints:
                naive_micros = naive.total(checkpoint).cost(caching=caching)
                managed_total = managed.total(checkpoint)
                chat = managed.chat[checkpoint]
                cells.append(
                    {
                        "family": family.model,
                        "summary_model": family.summary_model,
                        "turns": checkpoint,
                        "caching": caching,
                        "naive_usd": naive_micros / 1_000_000,
                        "managed_usd": managed_total.cost(caching=caching) / 1_000_000,
                        "previous_policy_usd": (
                            previous.total(checkpoint).cost(caching=caching) / 1_000_000
                        ),
                        "ratio": managed_total.cost(caching=caching) / naive_micros,
                        "previous_policy_ratio": (
                            previous.total(checkpoint).cost(caching=caching) / naive_micros
                        ),
                        "summary_calls": managed.summary_calls[checkpoint],
                        "forced_summary_calls": managed.forced_calls[checkpoint],
                        "summary_usd": managed.summary[checkpoint].cost(caching=caching)
                        / 1_000_000,
                        "largest_prompt": chat.largest_prompt,
                        "naive_largest_prompt": naive.chat[checkpoint].largest_prompt,
                        "cached_share": (
                            chat.cached_input_tokens / chat.input_tokens if caching else 0.0
                        ),
                    }
                )
    response_cache = simulate_response_cache(
        requests=response_cache_requests, seed=seed, families=families
    )
    return {
        "parameters": {
            "conversations": conversations,
            "turns": checkpoints,
            "seed": seed,
            "history_token_target": history_token_target,
            "families": [
                {
                    "model": family.model,
                    "price": price_dict(family.price),
                    "summary_model": family.summary_model,
                    "summary_price": price_dict(family.summary_price),
                    "summary_reasoning_tokens": family.summary_reasoning_tokens,
                }
                for family in families
            ],
        },
        "cells": cells,
        "response_cache": response_cache,
        "targets": grid_targets(cells, response_cache),
    }


def price_dict(price: ModelPrice) -> dict[str, float]:
    return {
        "input": float(price.input),
        "cached_input": float(price.cached_input),
        "output": float(price.output),
    }


def grid_targets(
    cells: list[dict[str, Any]], response_cache: dict[str, Any]
) -> list[dict[str, Any]]:
    """Issue 13's targets, each over the cells of the grid it speaks of (when there are any)."""
    history_targets = [
        ("managed history, every cell, caching on both", "≤ 1.0× naive", 0, True, 1.0),
        ("managed history, 50+ turns, no caching", "≤ 0.6× naive", 50, False, 0.6),
        ("managed history, 50+ turns, caching on both", "< 1.0× naive", 50, True, None),
    ]
    targets = []
    # (name, goal, from how many turns, caching, at most this ratio; None: below 1.0)
    for name, goal, min_turns, caching, limit in history_targets:
        ratios = [c["ratio"] for c in cells if c["turns"] >= min_turns and c["caching"] == caching]
        if ratios:
            targets.append(
                {
                    "target": name,
                    "goal": goal,
                    "value": f"{max(ratios):.3f}× (worst cell)",
                    "met": max(ratios) < 1.0 if limit is None else max(ratios) <= limit,
                }
            )
    least_saved = min(family["saved_share"] for family in response_cache["families"])
    targets.append(
        {
            "target": "response cache, 40 % repeated first questions",
            "goal": "≥ 35 % fewer dollars",
            "value": f"{least_saved:.1%} fewer (least over families)",
            "met": least_saved >= 0.35,
        }
    )
    return targets


# ---------------------------------------------------------------- response cache


def normalise(message: str) -> str:
    """The cache key's message: trimmed, runs of whitespace collapsed to one space."""
    return " ".join(message.split())


def retyped(rng: random.Random, question: str) -> str:
    """How a user may send the same question: often verbatim, sometimes spaced differently."""
    roll = rng.random()
    if roll < 0.15:
        return f"  {question}\n"
    if roll < 0.3:
        return question.replace(" ", "  ", 2)
    return question


@dataclass(frozen=True)
class Ask:
    at_s: float
    question: int  # index into the question list; one-off questions have their own
    message: str
    completes: bool  # finish_reason stop: only such replies are stored


def question_mix(
    requests: int,
    repeat_share: float,
    faq_questions: int,
    zipf_exponent: float,
    duration_s: float,
    unstored_share: float,
    seed: int,
) -> tuple[list[Ask], list[tuple[str, str]], float]:
    """A replayed stream of first questions: a share from a Zipf-popular FAQ, the rest
    one-off questions; the FAQ share is calibrated so that `repeat_share` of requests ask
    (after whitespace normalisation) a question asked before. Returns the asks, the
    (question, reply) texts and the FAQ share used."""
    rng = random.Random(f"{seed}:questions")
    weights = [1 / rank**zipf_exponent for rank in range(1, faq_questions + 1)]
    cumulative = [sum(weights[: rank + 1]) for rank in range(faq_questions)]
    draws = [(rng.random(), rng.random() * cumulative[-1]) for _ in range(requests)]

    def picks(faq_share: float) -> list[int | None]:
        return [
            bisect.bisect_left(cumulative, popularity) if kind < faq_share else None
            for kind, popularity in draws
        ]

    def repeats(faq_share: float) -> int:
        chosen = [pick for pick in picks(faq_share) if pick is not None]
        return len(chosen) - len(set(chosen))

    # More FAQ traffic never means fewer repeats, so bisect on the share.
    low, high = 0.0, 1.0
    for _ in range(40):
        middle = (low + high) / 2
        low, high = (middle, high) if repeats(middle) < repeat_share * requests else (low, middle)
    faq_share = high
    texts = [
        (text(rng, rng.randint(8, 40)), text(rng, rng.randint(80, 300)))
        for _ in range(faq_questions)
    ]
    times = sorted(rng.uniform(0, duration_s) for _ in range(requests))
    asks: list[Ask] = []
    for at_s, pick in zip(times, picks(faq_share), strict=True):
        if pick is None:
            texts.append((text(rng, rng.randint(8, 40)), text(rng, rng.randint(80, 300))))
            pick = len(texts) - 1
        asks.append(Ask(at_s, pick, retyped(rng, texts[pick][0]), rng.random() >= unstored_share))
    return asks, texts, faq_share


def simulate_response_cache(
    requests: int = 5000,
    repeat_share: float = 0.40,
    faq_questions: int = 300,
    zipf_exponent: float = 1.0,
    ttl_s: float = 86_400,
    duration_s: float = 86_400,
    unstored_share: float = 0.05,
    seed: int = 7,
    families: Sequence[Family] = FAMILIES,
) -> dict[str, Any]:
    """Dollars for a replayed mix of first questions with and without the response cache.

    Assumptions: one prompt and cap for all (they are part of the key, so this is the
    best case for a single-prompt deployment); CACHE_SCOPE global; questions arrive
    uniformly over `duration_s`; a stored reply lives `ttl_s`; `unstored_share` of
    replies do not complete normally (cap, cancel, timeout) and are not stored, so the
    next ask misses again; a repeat means the same text after whitespace normalisation
    (a retyped or reworded question is a different question and misses); first turns
    are under 1024 tokens, so prompt caching never applies to them. A hit costs no
    tokens; every request pays the cache's DynamoDB lookup and every stored reply its
    write. Creating the conversation costs the same with or without the cache and is
    left out of both.
    """
    asks, texts, faq_share = question_mix(
        requests, repeat_share, faq_questions, zipf_exponent, duration_s, unstored_share, seed
    )
    system_prompt = read_prompt("default.md", "You are a helpful, concise assistant.")
    seen: set[str] = set()
    stored_until: dict[str, float] = {}
    hits = repeats = whitespace_only = stores = 0
    write_units = 0
    hit_asks: list[bool] = []
    for ask in asks:
        key = normalise(ask.message)
        if key in seen:
            repeats += 1
        seen.add(key)
        hit = stored_until.get(key, -math.inf) > ask.at_s
        hit_asks.append(hit)
        if hit:
            hits += 1
            whitespace_only += ask.message != texts[ask.question][0]
        elif ask.completes:
            stored_until[key] = ask.at_s + ttl_s
            stores += 1
            item_bytes = len(texts[ask.question][1].encode()) + len(key.encode())
            write_units += math.ceil((item_bytes + CACHE_ITEM_OVERHEAD_BYTES) / 1024)
    dynamodb_micros = requests * DYNAMODB_READ_USD_PER_M + write_units * DYNAMODB_WRITE_USD_PER_M
    results = []
    for family in families:
        count = MessageCounter(family.model)
        without = with_cache = 0
        for ask, hit in zip(asks, hit_asks, strict=True):
            prompt = [
                {"role": "system", "content": system_prompt},
                {"role": "user", "content": ask.message},
            ]
            reply = texts[ask.question][1]
            output = count.text(reply)
            cost = family.price.cost_micros(count(prompt), 0, output)
            without += cost
            with_cache += 0 if hit else cost
        with_cache_usd = (with_cache + dynamodb_micros) / 1_000_000
        results.append(
            {
                "model": family.model,
                "without_cache_usd": without / 1_000_000,
                "with_cache_usd": with_cache_usd,
                "dynamodb_usd": dynamodb_micros / 1_000_000,
                "saved_share": 1 - with_cache_usd / (without / 1_000_000),
            }
        )
    return {
        "parameters": {
            "requests": requests,
            "repeat_share_target": repeat_share,
            "faq_questions": faq_questions,
            "zipf_exponent": zipf_exponent,
            "faq_traffic_share": round(faq_share, 4),
            "ttl_s": ttl_s,
            "duration_s": duration_s,
            "unstored_share": unstored_share,
            "seed": seed,
        },
        "repeat_share": repeats / requests,
        "hit_rate": hits / requests,
        "hits_differing_only_in_whitespace": whitespace_only,
        "stored_replies": stores,
        "families": results,
    }


# ---------------------------------------------------------------- rendering


def render_grid(result: dict[str, Any]) -> str:
    parameters = result["parameters"]
    lines = [
        f"History: {parameters['conversations']} conversations per cell, "
        f"HISTORY_TOKEN_TARGET {parameters['history_token_target']}, seed {parameters['seed']}. "
        "Cost ratio managed / naive (previous policy in brackets); $ = managed total.",
        "",
        f"{'family (summary model)':30}{'turns':>6}  {'no caching':>26}  {'prompt caching':>26}"
        f"{'folds':>7}{'forced':>7}{'largest prompt':>16}",
    ]
    by_key = {(c["family"], c["turns"], c["caching"]): c for c in result["cells"]}
    for family in parameters["families"]:
        label = f"{family['model']} ({family['summary_model']})"
        for turns in parameters["turns"]:
            off = by_key[(family["model"], turns, False)]
            on = by_key[(family["model"], turns, True)]
            lines.append(
                f"{label:30}{turns:>6}  {cell_text(off):>26}  {cell_text(on):>26}"
                f"{on['summary_calls']:>7}{on['forced_summary_calls']:>7}"
                f"{on['largest_prompt']:>7,} / {on['naive_largest_prompt']:<7,}"
            )
            label = ""
    cache = result["response_cache"]
    cache_parameters = cache["parameters"]
    lines += [
        "",
        f"Response cache: {cache_parameters['requests']:,} first questions, "
        f"{cache['repeat_share']:.1%} repeats ({cache_parameters['faq_traffic_share']:.0%} "
        f"from a Zipf(s={cache_parameters['zipf_exponent']}) FAQ of "
        f"{cache_parameters['faq_questions']}, the rest one-off), hit rate "
        f"{cache['hit_rate']:.1%} ({cache['hits_differing_only_in_whitespace']} hits differed "
        f"only in whitespace), {cache_parameters['unstored_share']:.0%} of replies unstored, "
        f"TTL {cache_parameters['ttl_s']:.0f} s over {cache_parameters['duration_s']:.0f} s.",
    ]
    for family in cache["families"]:
        lines.append(
            f"  {family['model']:14} ${family['without_cache_usd']:.4f} without, "
            f"${family['with_cache_usd']:.4f} with (DynamoDB ${family['dynamodb_usd']:.4f}): "
            f"{family['saved_share']:.1%} fewer dollars"
        )
    lines += ["", "Targets:"]
    for target in result["targets"]:
        mark = "met" if target["met"] else "NOT MET"
        lines.append(f"  {target['target']}: {target['goal']}: {target['value']}: {mark}")
    return "\n".join(lines)


def cell_text(cell: dict[str, Any]) -> str:
    return f"{cell['ratio']:.3f} ({cell['previous_policy_ratio']:.3f}) ${cell['managed_usd']:.3f}"


def simulate() -> dict[str, Any]:
    """What bench/run.py calls (with `render`) for `make bench`: the whole grid."""
    return run_grid()


def render(result: dict[str, Any]) -> str:
    return render_grid(result)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--conversations", type=int, default=50)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--target", type=int, default=4000, help="HISTORY_TOKEN_TARGET")
    parser.add_argument("--requests", type=int, default=5000, help="response-cache replay")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args(argv)
    result = run_grid(
        conversations=args.conversations,
        seed=args.seed,
        history_token_target=args.target,
        response_cache_requests=args.requests,
    )
    print(render_grid(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
