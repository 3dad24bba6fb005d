"""Conversation memory as prompts: what history to send, and when to fold it into a summary.

Pure functions over `Turn`s; token counts come in precomputed (`Turn.history_tokens`)
or through a `count_messages` callable, so nothing here needs tiktoken or a network.

`HISTORY_TOKEN_TARGET` bounds summary + verbatim turns (the system prompt is not
counted). Summarising is hysteretic: nothing is folded until summary + verbatim turns
pass the target, and then enough of the oldest turns are folded that what stays
verbatim is at most half the target. Between two summaries each prompt therefore
extends the previous one (system, summary, earlier turns, ...), so OpenAI's prompt
cache, which matches on prefixes, keeps hitting for several turns in a row.

Given `FoldEconomics` (the chat and summary models' prices), the policy is cost-aware
instead; see `plan_summary`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tollgate.ports import Message, Turn
from tollgate.pricing import ModelPrice, PriceTable

CountMessages = Callable[[list[Message]], int]
"""Prompt tokens of these messages in the chat format, reply priming included."""

# Byte-stable on purpose: it sits in the cached prefix of every prompt that has a summary.
SUMMARY_FRAMING = (
    "Summary of the earlier part of this conversation (the most recent turns follow verbatim):"
)
# After a fold, verbatim turns take at most this share of the target ...
LOW_WATER_SHARE = 0.5
# Hidden output a reasoning summary model is assumed to spend per fold.
SUMMARY_REASONING_ALLOWANCE = 256
# ... and the summary at most this share, which leaves a quarter of the target to grow
# into before the next fold.
SUMMARY_SHARE = 0.25


@dataclass(frozen=True, slots=True)
class FoldEconomics:
    """What folding costs and saves: prices in micro-USD per token (= USD per 1M tokens).

    Without prompt caching (or for a model without a cached price) `cached_input`
    equals `input`.
    """

    input: float  # the chat model's uncached input
    cached_input: float  # the chat model's input read from OpenAI's prompt cache
    summary_input: float
    summary_output: float
    # The summary request's own tokens besides the summary and the folded turns:
    # prompts/internal/summarize.md (~220 tokens), its tags and message framing.
    summary_request_tokens: int = 300
    # Hidden reasoning a reasoning summary model bills as output on every call.
    summary_reasoning_tokens: int = 0

    @classmethod
    def for_reply(
        cls, prices: PriceTable, answered_by: str, configured: str, summary_model: str
    ) -> FoldEconomics:
        """For a reply from `answered_by` (priced as `configured` when the table lacks it)."""
        return cls.from_prices(
            prices.price_for(answered_by, configured),
            prices.price(summary_model),
            summary_reasoning_tokens=(
                SUMMARY_REASONING_ALLOWANCE if prices.is_reasoning(summary_model) else 0
            ),
        )

    @classmethod
    def from_prices(
        cls, chat: ModelPrice, summary: ModelPrice, *, summary_reasoning_tokens: int = 0
    ) -> FoldEconomics:
        return cls(
            input=float(chat.input),
            cached_input=float(chat.cached_input),
            summary_input=float(summary.input),
            summary_output=float(summary.output),
            summary_reasoning_tokens=summary_reasoning_tokens,
        )


@dataclass(frozen=True, slots=True)
class SummaryPlan:
    fold: list[Turn]  # the oldest turns, to fold into the summary
    keep: list[Turn]  # the newest turns, which stay verbatim
    through_turn: int  # number of the last folded turn: the new summary covers up to here


def turn_messages(turn: Turn) -> list[Message]:
    return [
        {"role": "user", "content": turn.user},
        {"role": "assistant", "content": turn.assistant},
    ]


def summary_message(summary: str) -> Message:
    return {"role": "system", "content": f"{SUMMARY_FRAMING}\n\n{summary}"}


def _tokens_without_priming(count_messages: CountMessages, messages: list[Message]) -> int:
    return count_messages(messages) - count_messages([])


def turn_history_tokens(count_messages: CountMessages, user: str, assistant: str) -> int:
    """What a turn adds to every later prompt that carries it verbatim."""
    return _tokens_without_priming(
        count_messages,
        [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}],
    )


def summary_history_tokens(count_messages: CountMessages, summary: str) -> int:
    """What the summary (with its framing message) adds to every prompt: store as summary_tokens."""
    return _tokens_without_priming(count_messages, [summary_message(summary)])


def summary_max_tokens(target: int) -> int:
    """The summary call's max_tokens, so that a fresh summary leaves room before the next fold."""
    return max(1, int(target * SUMMARY_SHARE))


def _newest_within(turns: Sequence[Turn], budget: int) -> list[Turn]:
    """The longest run of newest turns within budget, but never fewer than the latest one."""
    used = 0
    start = len(turns)
    while start > 0:
        tokens = turns[start - 1].history_tokens
        if start < len(turns) and used + tokens > budget:
            break
        used += tokens
        start -= 1
    return list(turns[start:])


def history_window(summary_tokens: int, turns: list[Turn], target: int) -> list[Turn]:
    """The most recent turns that fit the target beside the summary (the latest always does)."""
    return _newest_within(turns, target - summary_tokens)


def plan_summary(
    summary_tokens: int,
    turns: list[Turn],
    target: int,
    *,
    low_water_share: float = LOW_WATER_SHARE,
    economics: FoldEconomics | None = None,
) -> SummaryPlan | None:
    """Which oldest turns to fold into the summary, or None to send them verbatim again.

    `turns` are the ones the summary does not cover yet, oldest first, including the
    turn just completed; the latest always stays verbatim, so a single turn is never
    folded. The summary call should be capped at `summary_max_tokens(target)`.

    Without `economics`: once summary + turns pass the target, fold the oldest turns
    until what stays verbatim is at most `low_water_share` of the target.

    With `economics` the policy is cost-aware:
    - A fold keeps only the latest turn verbatim: every token kept is billed
      uncached on the next prompt (the prefix changed) and brings the next fold
      closer, so keeping less is always cheaper. (Keeping enough for the next prompt
      to reach OpenAI's 1024-token cache minimum was measured too: the earlier next
      fold costs more than the cache hit saves, except at gpt-5-mini's 90 % cache
      discount, where it saves under 0.7 % of a conversation's cost.)
    - Past the target the fold is forced: the target is a hard ceiling, even where
      the fold cannot repay itself before the conversation ends (with a 90 % cache
      discount a fold takes some 8 more turns to repay).
    - Below the target a fold happens only when it pays for itself: its cost (the
      summary call's input and output, plus the next prompt's cache miss on the new
      summary and the kept turns) must be repaid by the cached-input price of the
      tokens it frees, over the turns until a fold would be forced anyway, and at
      most half as many more turns as the conversation has had: by the Copernican
      estimate a conversation of n turns reaches 1.5 n two times in three. The new
      summary is assumed as long as its cap. All three assumptions make early folds
      rarer, never more frequent.
    """
    if economics is not None:
        return _plan_cost_aware(summary_tokens, turns, target, economics)
    verbatim = sum(turn.history_tokens for turn in turns)
    if summary_tokens + verbatim <= target:
        return None
    keep = _newest_within(turns, int(target * low_water_share))
    if len(keep) == len(turns):
        if len(turns) == 1:
            return None
        # The summary itself is what overflows: fold all but the latest turn so that a
        # fresh summary, capped at summary_max_tokens, takes its place.
        keep = turns[-1:]
    return _plan(turns, keep)


def _plan(turns: list[Turn], keep: list[Turn]) -> SummaryPlan:
    fold = turns[: len(turns) - len(keep)]
    return SummaryPlan(fold=fold, keep=keep, through_turn=fold[-1].turn)


def _plan_cost_aware(
    summary_tokens: int, turns: list[Turn], target: int, economics: FoldEconomics
) -> SummaryPlan | None:
    if len(turns) < 2:
        return None
    plan = _plan(turns, turns[-1:])
    if summary_tokens + sum(turn.history_tokens for turn in turns) > target:
        return plan
    return plan if early_fold_net_micros(summary_tokens, plan, target, economics) > 0 else None


def early_fold_net_micros(
    summary_tokens: int, plan: SummaryPlan, target: int, economics: FoldEconomics
) -> float:
    """What folding as planned now is expected to save minus what it costs, in micro-USD,
    as `plan_summary` weighs a fold below the target: negative means it does not pay."""
    folded = sum(turn.history_tokens for turn in plan.fold)
    kept = sum(turn.history_tokens for turn in plan.keep)
    new_summary = summary_max_tokens(target)
    freed = summary_tokens + folded - new_summary
    growth_per_turn = max(1.0, (folded + kept) / (len(plan.fold) + len(plan.keep)))
    turns_until_forced = int((target - summary_tokens - folded - kept) // growth_per_turn)
    horizon = min(turns_until_forced, plan.keep[-1].turn // 2)
    saved = economics.cached_input * freed * horizon
    cost = (
        economics.summary_input * (economics.summary_request_tokens + summary_tokens + folded)
        + economics.summary_output * (new_summary + economics.summary_reasoning_tokens)
        + (economics.input - economics.cached_input) * (new_summary + kept)
    )
    return saved - cost


def build_messages(
    system_prompt: str, summary: str | None, turns: list[Turn], message: str
) -> list[Message]:
    """The chat prompt: system, summary (when any), the verbatim turns, the new message."""
    messages: list[Message] = [{"role": "system", "content": system_prompt}]
    if summary:
        messages.append(summary_message(summary))
    for turn in turns:
        messages.extend(turn_messages(turn))
    messages.append({"role": "user", "content": message})
    return messages


def _transcript(turns: list[Turn]) -> str:
    return "\n\n".join(f"User: {turn.user}\n\nAssistant: {turn.assistant}" for turn in turns)


def summary_request_messages(
    summary_prompt: str, previous_summary: str | None, turns_to_fold: list[Turn]
) -> list[Message]:
    """Messages for the summary model: the old summary plus the newly aged turns, incrementally."""
    content = (
        "<previous_summary>\n"
        f"{previous_summary or '(none: this is the start of the conversation)'}\n"
        "</previous_summary>\n\n"
        "<new_turns>\n"
        f"{_transcript(turns_to_fold)}\n"
        "</new_turns>\n\n"
        "Write the updated summary."
    )
    return [
        {"role": "system", "content": summary_prompt},
        {"role": "user", "content": content},
    ]
