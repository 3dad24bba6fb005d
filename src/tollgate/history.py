"""Conversation memory as prompts: what history to send, and when to fold it into a summary.

Pure functions over `Turn`s; token counts come in precomputed (`Turn.history_tokens`)
or through a `count_messages` callable, so nothing here needs tiktoken or a network.

`HISTORY_TOKEN_TARGET` bounds summary + verbatim turns (the system prompt is not
counted). Summarising is hysteretic: nothing is folded until summary + verbatim turns
pass the target, and then enough of the oldest turns are folded that what stays
verbatim is at most half the target. Between two summaries each prompt therefore
extends the previous one (system, summary, earlier turns, ...), so OpenAI's prompt
cache, which matches on prefixes, keeps hitting for several turns in a row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tollgate.ports import Message, Turn

CountMessages = Callable[[list[Message]], int]
"""Prompt tokens of these messages in the chat format, reply priming included."""

# Byte-stable on purpose: it sits in the cached prefix of every prompt that has a summary.
SUMMARY_FRAMING = (
    "Summary of the earlier part of this conversation (the most recent turns follow verbatim):"
)
# After a fold, verbatim turns take at most this share of the target ...
LOW_WATER_SHARE = 0.5
# ... and the summary at most this share, which leaves a quarter of the target to grow
# into before the next fold.
SUMMARY_SHARE = 0.25


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
) -> SummaryPlan | None:
    """Which oldest turns to fold into the summary, once summary + turns pass the target.

    `turns` are the ones the summary does not cover yet, oldest first, including the
    turn just completed. None while everything fits, or when only the latest turn is
    left (it always stays verbatim). The summary call should be capped at
    `summary_max_tokens(target)` for the hysteresis to hold.
    """
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
    fold = turns[: len(turns) - len(keep)]
    return SummaryPlan(fold=fold, keep=keep, through_turn=fold[-1].turn)


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
