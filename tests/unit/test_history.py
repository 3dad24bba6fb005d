from __future__ import annotations

from decimal import Decimal
from functools import partial
from itertools import pairwise

from hypothesis import given, settings
from hypothesis import strategies as st

from tollgate.adapters.tokenizer import token_counter
from tollgate.history import (
    SUMMARY_FRAMING,
    FoldEconomics,
    SummaryPlan,
    build_messages,
    early_fold_net_micros,
    history_window,
    plan_summary,
    summary_history_tokens,
    summary_max_tokens,
    summary_request_messages,
    turn_history_tokens,
)
from tollgate.ports import Message, Turn
from tollgate.pricing import ModelPrice


def make_turn(number: int, history_tokens: int, user: str = "", assistant: str = "") -> Turn:
    return Turn(
        turn=number,
        user=user or f"question {number}",
        assistant=assistant or f"answer {number}",
        model="gpt-4o-mini",
        input_tokens=0,
        output_tokens=0,
        cost_micros=0,
        created_at="2026-03-01T00:00:00.000Z",
        history_tokens=history_tokens,
    )


def make_turns(sizes: list[int], first: int = 1) -> list[Turn]:
    return [make_turn(first + index, size) for index, size in enumerate(sizes)]


def count_words(messages: list[Message]) -> int:
    """A stand-in tokenizer: one token per word, 3 per message, 3 to prime the reply."""
    return 3 + sum(3 + len(str(message["content"]).split()) for message in messages)


def tokens(turns: list[Turn]) -> int:
    return sum(turn.history_tokens for turn in turns)


turn_sizes = st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=40)
targets = st.integers(min_value=100, max_value=10_000)


# ---------------------------------------------------------------- token helpers


def test_turn_history_tokens_counts_both_messages_without_reply_priming() -> None:
    # Given a user message of 3 words and a reply of 2
    # When its history tokens are counted
    counted = turn_history_tokens(count_words, "one two three", "four five")

    # Then each message carries its 3-token wrapper and no priming is included
    assert counted == (3 + 3) + (3 + 2)


def test_prompt_tokens_are_the_sum_of_their_parts_with_the_real_tokenizer() -> None:
    # Given turns and a summary measured with the real o200k tokenizer
    count = partial(token_counter().count_messages, "gpt-4o-mini")
    pairs = [("What is DynamoDB?", "A key-value store."), ("And TTL?", "Lazy expiry, é ✓.")]
    turns = [
        make_turn(n, turn_history_tokens(count, user, reply), user, reply)
        for n, (user, reply) in enumerate(pairs, start=1)
    ]
    summary = "The user is learning AWS."

    # When the whole prompt is counted
    prompt = build_messages("Be brief.", summary, turns, "Thanks!")

    # Then it equals system + summary + turns + message, as history budgeting assumes
    parts = (
        count([prompt[0]])
        + summary_history_tokens(count, summary)
        + tokens(turns)
        + count([prompt[-1]])
        - count([])
    )
    assert count(prompt) == parts


# ---------------------------------------------------------------- window


def test_window_keeps_the_newest_turns_that_fit_beside_the_summary() -> None:
    # Given turns of 100, 200, 300 and 400 tokens and a 250-token summary
    turns = make_turns([100, 200, 300, 400])

    # When the window for a target of 1000 is taken
    window = history_window(250, turns, 1000)

    # Then the two newest fit (700 + 250 ≤ 1000) and the third would not
    assert [turn.turn for turn in window] == [3, 4]


def test_window_keeps_the_latest_turn_even_when_it_alone_is_too_big() -> None:
    window = history_window(0, make_turns([10, 5000]), 1000)

    assert [turn.turn for turn in window] == [2]


def test_window_of_no_turns_is_empty() -> None:
    assert history_window(0, [], 1000) == []


@given(turn_sizes, targets, st.integers(min_value=0, max_value=5000))
def test_window_never_exceeds_the_target_unless_only_the_latest_turn_is_kept(
    sizes: list[int], target: int, summary_tokens: int
) -> None:
    turns = make_turns(sizes)

    window = history_window(summary_tokens, turns, target)

    assert window == turns[len(turns) - len(window) :]  # the newest, contiguous
    assert window[-1] == turns[-1]
    assert summary_tokens + tokens(window) <= target or len(window) == 1
    if len(window) < len(turns):  # and as many as fit
        older = turns[len(turns) - len(window) - 1]
        assert summary_tokens + tokens(window) + older.history_tokens > target


# ---------------------------------------------------------------- summary planning


def test_nothing_is_folded_while_summary_and_turns_fit_the_target() -> None:
    assert plan_summary(1000, make_turns([1000, 1000, 1000]), 4000) is None


def test_past_the_target_the_oldest_turns_fold_down_to_half_the_target() -> None:
    # Given a 500-token summary and five 800-token turns (4500 > 4000)
    turns = make_turns([800] * 5, first=11)

    # When planning
    plan = plan_summary(500, turns, 4000)

    # Then the three oldest fold and two (1600 ≤ 2000) stay verbatim
    assert plan is not None
    assert [turn.turn for turn in plan.fold] == [11, 12, 13]
    assert [turn.turn for turn in plan.keep] == [14, 15]
    assert plan.through_turn == 13


def test_a_single_oversized_turn_is_never_folded() -> None:
    assert plan_summary(0, make_turns([9000]), 4000) is None


def test_an_oversized_summary_is_refolded_with_all_but_the_latest_turn() -> None:
    # Given a summary that alone takes most of the target
    turns = make_turns([300, 300, 300])

    # When planning, Then everything but the latest turn goes into a fresh, shorter summary
    plan = plan_summary(3500, turns, 4000)

    assert plan is not None
    assert ([t.turn for t in plan.fold], [t.turn for t in plan.keep]) == ([1, 2], [3])


@given(turn_sizes, targets, st.integers(min_value=0, max_value=5000))
def test_a_plan_always_keeps_the_latest_turn_and_at_most_half_the_target_verbatim(
    sizes: list[int], target: int, summary_tokens: int
) -> None:
    turns = make_turns(sizes)

    plan = plan_summary(summary_tokens, turns, target)

    if plan is None:
        assert summary_tokens + tokens(turns) <= target or len(turns) == 1
        return
    assert plan.fold + plan.keep == turns
    assert plan.fold
    assert plan.keep[-1] == turns[-1]
    assert plan.through_turn == plan.fold[-1].turn
    assert tokens(plan.keep) <= target // 2 or len(plan.keep) == 1
    assert tokens(plan.keep) <= target or plan.keep == [turns[-1]]


@settings(max_examples=200)
@given(
    st.lists(st.integers(min_value=1, max_value=10_000), min_size=10, max_size=60),
    st.integers(min_value=800, max_value=10_000),
    st.floats(min_value=0.0, max_value=1.0),
)
def test_the_summary_stays_unchanged_for_at_least_three_turns_after_each_fold(
    raw_sizes: list[int], target: int, summary_fill: float
) -> None:
    # Given a growing conversation whose turns are each at most an eighth of the target
    # and whose summaries respect summary_max_tokens
    sizes = [1 + size % (target // 8) for size in raw_sizes]
    summary_tokens = 0
    pending: list[Turn] = []
    folds_at: list[int] = []

    # When the planner runs after every turn and each plan is applied
    for number, size in enumerate(sizes, start=1):
        pending.append(make_turn(number, size))
        plan = plan_summary(summary_tokens, pending, target)
        if plan is not None:
            folds_at.append(number)
            summary_tokens = int(summary_max_tokens(target) * summary_fill)
            pending = plan.keep
        # Then the prompt's history always fits the target
        assert summary_tokens + tokens(pending) <= target

    # And between two folds at least three turns reuse the same summary (prompt cache hits)
    assert all(later - earlier >= 3 for earlier, later in pairwise(folds_at))


# ---------------------------------------------------------------- cost-aware folding

# Micro-USD per token (= USD per 1M tokens), with OpenAI's prompt caching.
GPT_4O_MINI = FoldEconomics(input=0.15, cached_input=0.075, summary_input=0.15, summary_output=0.60)
GPT_5_MINI = FoldEconomics(
    input=0.25,
    cached_input=0.025,
    summary_input=0.05,
    summary_output=0.40,
    summary_reasoning_tokens=256,
)
economics = st.builds(
    FoldEconomics,
    input=st.floats(min_value=0.01, max_value=20),
    cached_input=st.floats(min_value=0, max_value=20),
    summary_input=st.floats(min_value=0, max_value=20),
    summary_output=st.floats(min_value=0, max_value=80),
    summary_reasoning_tokens=st.integers(min_value=0, max_value=2000),
)


def test_economics_come_from_the_price_table_per_token() -> None:
    chat = ModelPrice(Decimal("0.25"), Decimal("0.025"), Decimal("2.00"))
    summary = ModelPrice(Decimal("0.05"), Decimal("0.005"), Decimal("0.40"))

    made = FoldEconomics.from_prices(chat, summary, summary_reasoning_tokens=256)

    assert made == GPT_5_MINI


def test_without_economics_the_policy_is_unchanged() -> None:
    turns = make_turns([800] * 5, first=11)

    assert plan_summary(500, turns, 4000, economics=None) == plan_summary(500, turns, 4000)


def test_past_the_target_a_cost_aware_fold_is_forced_and_keeps_only_the_latest_turn() -> None:
    # Given a 500-token summary and five 800-token turns (4500 > 4000)
    turns = make_turns([800] * 5, first=11)

    # When planning with the cheapest model's economics
    plan = plan_summary(500, turns, 4000, economics=GPT_5_MINI)

    # Then the target is a hard ceiling, and only the latest turn stays verbatim
    assert plan is not None
    assert [turn.turn for turn in plan.fold] == [11, 12, 13, 14]
    assert [turn.turn for turn in plan.keep] == [15]


def test_below_the_target_nothing_folds_when_the_fold_would_not_pay() -> None:
    # Given a history just under the target: whatever is folded now would have to be
    # repaid in the one turn left before the ceiling forces a fold anyway
    turns = make_turns([750] * 5, first=1)

    assert plan_summary(0, turns, 4000, economics=GPT_4O_MINI) is None


def test_an_early_fold_happens_only_where_the_cached_price_repays_it() -> None:
    # Given a long conversation far below a large target: 20 verbatim turns of 2000 tokens
    turns = make_turns([2000] * 20, first=41)

    # When the same history is planned with two models' economics
    with_4o_mini = plan_summary(2000, turns, 100_000, economics=GPT_4O_MINI)
    with_5_mini = plan_summary(2000, turns, 100_000, economics=GPT_5_MINI)

    # Then at a 50 % cache discount carrying 38000 tokens costs more than folding them
    # (cost 23,070 µ$ vs 32,625 µ$ saved over 29 turns) ...
    assert with_4o_mini is not None
    assert [turn.turn for turn in with_4o_mini.keep] == [60]
    # ... while at 90 % it does not (18,192 µ$ vs 10,875 µ$): they stay verbatim
    assert with_5_mini is None


def test_an_early_fold_waits_until_the_conversation_has_lasted_long_enough() -> None:
    # Given the same history as above, but as turns 11-30 of a conversation: the fold
    # must be repaid within half as many more turns (15), and 15 × 1,125 µ$ < 23,070 µ$
    turns = make_turns([2000] * 20, first=11)

    assert plan_summary(2000, turns, 100_000, economics=GPT_4O_MINI) is None


# The first 14 turns of the cost simulation's first conversation (o200k tokens each).
SIMULATED_TURNS = [423, 221, 409, 187, 375, 191, 295, 378, 347, 343, 329, 283, 193, 328]


def test_below_the_target_a_cached_gpt_5_mini_history_is_never_folded_early() -> None:
    # Given gpt-5-mini's 90 % cache discount and a summary model billing 256 hidden
    # reasoning tokens: carrying 3,974 cached tokens costs ~99 µ$ a turn, a fold ~700 µ$
    # (the summary call plus the cache misses of the rewritten prefix)
    for turn_count in range(2, 14):
        turns = make_turns(SIMULATED_TURNS[:turn_count])
        plan = plan_summary(0, turns, 4000, economics=GPT_5_MINI)

        # Then no turn up to the 13th folds: by the policy's own estimate it cannot repay
        assert plan is None, turn_count
    thirteen = make_turns(SIMULATED_TURNS[:13])
    fold_now = SummaryPlan(fold=thirteen[:-1], keep=thirteen[-1:], through_turn=12)
    assert early_fold_net_micros(0, fold_now, 4000, GPT_5_MINI) == -974.875


def test_past_the_target_a_cached_gpt_5_mini_history_folds_even_at_a_loss() -> None:
    # Given the 14th turn, which takes the history to 4,302 tokens, past the target
    turns = make_turns(SIMULATED_TURNS)

    # When planning with economics under which no early fold would pay
    plan = plan_summary(0, turns, 4000, economics=GPT_5_MINI)

    # Then the ceiling wins: turns 1-13 fold and only the 14th stays verbatim. (In the
    # simulation its summary call costs 444 µ$ and turns 15-20 save 281 µ$ on their
    # prompts: this forced fold is why 20 cached gpt-5-mini turns cost more than naive.)
    assert plan is not None
    assert [turn.turn for turn in plan.fold] == list(range(1, 14))
    assert [turn.turn for turn in plan.keep] == [14]
    assert early_fold_net_micros(0, plan, 4000, GPT_5_MINI) < 0


@given(turn_sizes, targets, st.integers(min_value=0, max_value=5000), economics)
def test_a_cost_aware_plan_folds_all_but_the_latest_turn_and_always_past_the_target(
    sizes: list[int], target: int, summary_tokens: int, prices: FoldEconomics
) -> None:
    turns = make_turns(sizes)

    plan = plan_summary(summary_tokens, turns, target, economics=prices)

    over = summary_tokens + tokens(turns) > target
    if len(turns) == 1:
        assert plan is None
        return
    assert plan is not None or not over
    if plan is not None:
        assert plan.fold == turns[:-1]
        assert plan.keep == turns[-1:]
        assert plan.through_turn == turns[-2].turn


@settings(max_examples=200)
@given(
    st.lists(st.integers(min_value=1, max_value=10_000), min_size=10, max_size=60),
    st.integers(min_value=800, max_value=10_000),
    st.floats(min_value=0.0, max_value=1.0),
    st.sampled_from([GPT_4O_MINI, GPT_5_MINI]),
)
def test_a_cost_aware_history_stays_within_the_target_and_its_summary_stays_put(
    raw_sizes: list[int], target: int, summary_fill: float, prices: FoldEconomics
) -> None:
    # Given a growing conversation whose turns are each at most an eighth of the target
    # and whose summaries respect summary_max_tokens
    sizes = [1 + size % (target // 8) for size in raw_sizes]
    summary_tokens = 0
    pending: list[Turn] = []
    folds_at: list[int] = []

    # When the cost-aware planner runs after every turn and each plan is applied
    for number, size in enumerate(sizes, start=1):
        pending.append(make_turn(number, size))
        plan = plan_summary(summary_tokens, pending, target, economics=prices)
        if plan is not None:
            folds_at.append(number)
            summary_tokens = int(summary_max_tokens(target) * summary_fill)
            pending = plan.keep
        # Then the prompt's history always fits the target (a hard ceiling)
        assert summary_tokens + tokens(pending) <= target

    # And between two folds at least three turns reuse the same summary (prompt cache hits)
    assert all(later - earlier >= 3 for earlier, later in pairwise(folds_at))


# ---------------------------------------------------------------- messages


def test_prompt_is_system_summary_turns_then_the_new_message() -> None:
    turns = [make_turn(1, 0, "Hi, I'm Ada.", "Hello Ada!")]

    messages = build_messages("You help.", "Ada likes tea.", turns, "What do I like?")

    assert messages == [
        {"role": "system", "content": "You help."},
        {"role": "system", "content": f"{SUMMARY_FRAMING}\n\nAda likes tea."},
        {"role": "user", "content": "Hi, I'm Ada."},
        {"role": "assistant", "content": "Hello Ada!"},
        {"role": "user", "content": "What do I like?"},
    ]


def test_prompt_without_a_summary_has_no_summary_message() -> None:
    messages = build_messages("You help.", None, [], "Hello")

    assert [message["role"] for message in messages] == ["system", "user"]


def test_the_next_prompt_extends_the_previous_one_until_the_summary_changes() -> None:
    # Given two consecutive turns under the same summary
    turns = make_turns([10, 10])
    first = build_messages("S", "sum", turns[:1], turns[1].user)

    # When the next prompt is built
    second = build_messages("S", "sum", turns, "next")

    # Then the earlier prompt is its exact prefix (what OpenAI's prompt cache matches)
    assert second[: len(first)] == first


def test_summary_request_carries_the_old_summary_and_the_aged_turns() -> None:
    turns = [make_turn(3, 0, "I moved to Lyon.", "Noted: Lyon.")]

    messages = summary_request_messages("Summarise.", "Ada likes tea.", turns)

    assert messages[0] == {"role": "system", "content": "Summarise."}
    request = messages[1]["content"]
    assert messages[1]["role"] == "user"
    assert "<previous_summary>\nAda likes tea.\n</previous_summary>" in request
    assert "User: I moved to Lyon.\n\nAssistant: Noted: Lyon." in request


def test_first_summary_request_says_there_is_no_previous_summary() -> None:
    messages = summary_request_messages("Summarise.", None, make_turns([1]))

    assert "(none" in messages[1]["content"]
