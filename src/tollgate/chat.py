"""The chat session, independent of the web framework.

`ChatService.start` (POST /chat) and `start_completion` (POST /v1/chat/completions) run
every check before a byte is sent, so refusals get real statuses: the prompt is counted,
the budget held (with the conversation's lease and history loaded at the same time),
upstream opened. They return a `ChatStream` (tollgate.stream) that settles itself.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tollgate import history
from tollgate.budget import BudgetPolicy, Payer, hold_for, iso_z
from tollgate.cache import ReplyKeeper, ResponseCache
from tollgate.chat_config import ChatConfig, ChatRequest, utc_now
from tollgate.counting import (
    Counts,
    PromptCounter,
    RecountExactly,
    completion_prompt,
    image_details,
)
from tollgate.errors import (
    BudgetExceeded,
    ConversationLimit,
    DependencyUnavailable,
    GatewayError,
    InvalidRequest,
    NotFound,
    RateLimited,
    TooLarge,
    TurnConflict,
    UnknownModel,
    UpstreamRejected,
)
from tollgate.ledger import Balance, Hold, Ledger
from tollgate.metering import Meter
from tollgate.observability import CostRecord, CostRecorder
from tollgate.ports import (
    BudgetAlerts,
    CachedReply,
    ConversationState,
    ConversationStore,
    ConversationView,
    Message,
    ReplyCache,
    ReplyStream,
    RequestRegistry,
    TokenCounter,
    Upstream,
    UsageStore,
)
from tollgate.pricing import ModelPrice, PriceTable
from tollgate.prompts import PromptLibrary
from tollgate.replay import CachedReplyStream
from tollgate.request_ids import RequestIds
from tollgate.stream import ChatStream, Prompt, Timing
from tollgate.summaries import Summariser
from tollgate.turns import TurnWriter

# Framing tokens of the messages around the history: system, summary, user.
PROMPT_FRAMING_TOKENS = 3 * 3 + 3
# Enough time after the stream's deadline to settle, store and summarise.
LEASE_MARGIN_S = 30.0
CANCEL_SIGNAL_TTL_S = 24 * 3600


@dataclass(slots=True)
class _Pending:
    """A request between its checks and its first byte."""

    payer: Payer
    request_id: str
    models: tuple[str, ...]
    prices: list[ModelPrice]
    cap: int
    timing: Timing
    record: CostRecord


class ChatService:
    def __init__(
        self,
        config: ChatConfig,
        *,
        usage: UsageStore,
        requests: RequestRegistry,
        conversations: ConversationStore,
        upstream: Upstream,
        tokens: TokenCounter,
        prices: PriceTable,
        prompts: PromptLibrary,
        recorder: CostRecorder,
        request_ids: RequestIds | None = None,
        clock: Callable[[], datetime] = utc_now,
        lazy_encoding: bool = False,
        alerts: BudgetAlerts | None = None,
        replies: ReplyCache | None = None,
    ) -> None:
        """`lazy_encoding`: a cold instance's first requests count with byte bounds while
        the encodings load in a thread (see tollgate.counting). `replies`: the response
        cache's store (the cache is on when it is given and `config.cache.ttl_s` > 0)."""
        prices.require([*config.model_chain, config.summary_model])
        self.config = config
        self._request_ids = request_ids or RequestIds(secrets.token_bytes(32))
        self._requests = requests
        self._conversations = conversations
        self._upstream = upstream
        self._prices = prices
        self._prompts = prompts
        self._clock = clock
        self._cache = ResponseCache(
            replies if config.cache.enabled else None,
            config.cache,
            clock=clock,
            warn=lambda message, exc: self.ledger.warning(message, error=repr(exc)),
        )
        chain_prices = [prices.price(model) for model in config.model_chain]
        typical = hold_for(config.history_token_target, config.max_output_tokens, chain_prices)
        self.ledger = Ledger(
            usage,
            BudgetPolicy(config.budgets, typical),
            recorder,
            rate_limit_per_minute=config.rate_limit_per_minute,
            alerts=alerts,
        )
        self.counter = PromptCounter(
            tokens, [*config.model_chain, config.summary_model], lazy_encoding=lazy_encoding
        )
        self._meter = Meter(self.counter, prices)
        self._summariser = Summariser(
            ledger=self.ledger,
            upstream=upstream,
            meter=self._meter,
            instructions=prompts.summary,
            model=config.summary_model,
            history_token_target=config.history_token_target,
            timeout_s=config.summary_timeout_s,
            clock=clock,
        )
        self._active: dict[str, ChatStream] = {}

    # ------------------------------------------------------------ queries

    async def balances(self, payer: Payer) -> list[Balance]:
        """The payer's own budget accounts now (the user's day first).

        Each read counts in the per-minute rate limit, like every other request: reads of
        the budget are not free for DynamoDB either.
        """
        now = self._clock()
        await self.ledger.count_request(payer, f"usage-{secrets.token_hex(8)}", now)
        return await self.ledger.balances(payer, now)

    async def conversation(self, user_id: str, conversation_id: str) -> ConversationView:
        return await self._conversations.get(conversation_id, user_id, self._clock())

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        await self._conversations.delete(conversation_id, user_id)

    async def cancel(self, payer: Payer, request_id: str) -> None:
        """Only ids the gateway issued to this user reach the store, and each cancel counts
        in the per-minute rate limit: a user cannot write signals without bound."""
        if not self._request_ids.owns(request_id, payer.user_id):
            raise NotFound("no such request")
        now = self._clock()
        await self.ledger.count_request(payer, f"cancel-{secrets.token_hex(8)}", now)
        await self._requests.signal_cancel(request_id, int(now.timestamp()) + CANCEL_SIGNAL_TTL_S)
        stream = self._active.get(request_id)
        if stream is not None and stream.user_id == payer.user_id:
            stream.stop("cancelled")

    # ------------------------------------------------------------ chat

    async def start(
        self, payer: Payer, request: ChatRequest, *, use_cache: bool = True
    ) -> ReplyStream:
        """POST /chat: the server owns the system prompt and the history.

        A new conversation's first question may be answered from the response cache
        (unless `use_cache` is False: the request said `X-Tollgate-Cache: off`).
        """
        system_prompt = self._prompts.get(request.prompt)
        if system_prompt is None:
            raise InvalidRequest(f"unknown prompt {request.prompt!r}")
        self.ledger.policy.plan_limits(payer.plan)
        return await self.counter.attempt(
            lambda counts: self._start(payer, request, system_prompt, counts, use_cache)
        )

    async def _start(
        self,
        payer: Payer,
        request: ChatRequest,
        system_prompt: str,
        counts: Counts,
        use_cache: bool,
    ) -> ReplyStream:
        config = self.config
        models = config.model_chain
        message_tokens = counts.text(models, request.message)
        if message_tokens > config.max_input_tokens:
            raise counts.refuse(
                TooLarge(
                    f"message is {message_tokens} tokens; the limit is {config.max_input_tokens}"
                )
            )
        pending = self._pending(payer, request.max_tokens, models, request.prompt)
        pending.record.conversation_id = request.conversation_id
        system_tokens = self.counter.system_prompt(counts, models, request.prompt, system_prompt)
        # An upper bound of the prompt known before the history is loaded lets the
        # hold and the history load run concurrently. A new conversation has none.
        history_bound = config.history_token_target if request.conversation_id else 0
        prompt_bound = system_tokens + history_bound + message_tokens + PROMPT_FRAMING_TOKENS
        lease_until = pending.timing.started_at + timedelta(
            seconds=config.stream_timeout_s + config.openai_timeout_s + LEASE_MARGIN_S
        )
        cache_key = None
        if use_cache and self._cache.enabled and request.conversation_id is None:
            cache_key = config.cache.chat_key(
                user_id=payer.user_id,
                prompt_name=request.prompt,
                prompt_text=system_prompt,
                message=request.message,
                model=models[0],
                cap=pending.cap,
            )
        hold, state, hit = await self._admit(
            pending,
            prompt_bound,
            counts,
            self._conversations.begin_turn(
                request.conversation_id,
                payer.user_id,
                pending.request_id,
                lease_until=lease_until,
                token_limit=config.conversation_token_limit,
                now=pending.timing.started_at,
            ),
            self._cache.lookup(cache_key),
        )
        assert state is not None
        pending.record.conversation_id = state.conversation_id
        turn = TurnWriter(
            conversations=self._conversations,
            state=state,
            request_id=pending.request_id,
            user_message=request.message,
            summariser=self._summariser,
            tokens=self.counter.tokens,
            history_token_target=config.history_token_target,
            fold_economics=lambda answered_by: history.FoldEconomics.for_reply(
                self._prices, answered_by, config.model_chain[0], config.summary_model
            ),
            ledger=self.ledger,
            clock=self._clock,
        )
        if hit is not None:
            return self._replay(pending, hit, hold, turn)
        assert hold is not None
        turns = history.history_window(
            state.summary_tokens, state.turns, config.history_token_target
        )
        messages = history.build_messages(system_prompt, state.summary, turns, request.message)
        return await self._open(
            pending,
            hold,
            messages,
            prompt_bound,
            counts,
            turn=turn,
            reasoning_effort=config.reasoning_effort,
            keeper=self._cache.keeper(cache_key),
        )

    async def start_completion(
        self,
        payer: Payer,
        messages: list[Message],
        *,
        model: str,
        max_tokens: int | None,
        extra: dict[str, Any],
        cache_body: Mapping[str, Any] | None = None,
    ) -> ReplyStream:
        """POST /v1/chat/completions: stateless, the caller owns the whole prompt.

        `cache_body`: the request body, when the caller asked for the response cache.
        """
        chain = self.config.model_chain
        if model not in chain:
            raise UnknownModel(f"model {model!r} is not offered; use one of: {', '.join(chain)}")
        self.ledger.policy.plan_limits(payer.plan)
        models = chain[chain.index(model) :]
        if image_details(messages):
            models = self._prices.taking_images(models)
        cache_key = None
        if cache_body is not None and self._cache.enabled:
            cache_key = self.config.cache.completion_key(user_id=payer.user_id, body=cache_body)
        return await self.counter.attempt(
            lambda counts: self._start_completion(
                payer, messages, models, max_tokens, extra, counts, cache_key
            )
        )

    async def _start_completion(
        self,
        payer: Payer,
        messages: list[Message],
        models: tuple[str, ...],
        max_tokens: int | None,
        extra: dict[str, Any],
        counts: Counts,
        cache_key: str | None,
    ) -> ReplyStream:
        prompt = completion_prompt(
            counts, self._prices, models, messages, extra.get("tools"), extra.get("response_format")
        )
        limit = self.config.max_input_tokens
        if prompt.text > limit + PROMPT_FRAMING_TOKENS:
            raise counts.refuse(TooLarge(f"prompt is {prompt.text} tokens; the limit is {limit}"))
        pending = self._pending(payer, max_tokens, models, None)
        hold, _, hit = await self._admit(
            pending, prompt.bound, counts, None, self._cache.lookup(cache_key)
        )
        if hit is not None:
            return self._replay(pending, hit, hold, None)
        assert hold is not None
        # The client's reasoning effort goes to the reasoning models of the chain only.
        extra = dict(extra)
        effort = extra.pop("reasoning_effort", None)
        return await self._open(
            pending,
            hold,
            messages,
            prompt.bound,
            counts,
            extra=extra,
            reasoning_effort=effort if isinstance(effort, str) else None,
            keeper=self._cache.keeper(cache_key),
            beside_messages=prompt.beside_messages,
        )

    def _pending(
        self, payer: Payer, max_tokens: int | None, models: tuple[str, ...], prompt: str | None
    ) -> _Pending:
        config = self.config
        started_at = self._clock()
        clock_start = time.monotonic()
        request_id = self._request_ids.issue(payer.user_id)
        return _Pending(
            payer=payer,
            request_id=request_id,
            models=models,
            prices=[self._prices.price(model) for model in models],
            cap=min(max_tokens or config.max_output_tokens, config.max_output_tokens),
            timing=Timing(started_at, clock_start, clock_start + config.stream_timeout_s),
            record=CostRecord(
                request_id=request_id,
                user_id=payer.user_id,
                conversation_id=None,
                model=models[0],
                kind="chat",
                prompt=prompt,
                started_at=iso_z(started_at),
                plan=payer.plan,
                team=payer.team,
            ),
        )

    async def _admit(
        self,
        pending: _Pending,
        prompt_bound: int,
        counts: Counts,
        begin_turn: Coroutine[Any, Any, ConversationState] | None,
        lookup: Coroutine[Any, Any, CachedReply | None],
    ) -> tuple[Hold | None, ConversationState | None, CachedReply | None]:
        """Hold the budget (taking the conversation's lease and looking the reply up in the
        cache, concurrently) or refuse. The hold is None only for a cache hit that the
        budget refused: a hit charges nothing, so it is served all the same."""
        amount = hold_for(prompt_bound, pending.cap, pending.prices)
        admitting = self.ledger.admit(
            pending.payer, pending.request_id, amount, pending.timing.started_at
        )
        # The budget with the rate window, the history and the cache: one round trip.
        admitted, loaded, hit = await asyncio.gather(
            admitting, begin_turn or _none(), lookup, return_exceptions=True
        )
        hold = admitted if isinstance(admitted, Hold) else None
        state = loaded if isinstance(loaded, ConversationState) else None
        if isinstance(hit, CachedReply) and not isinstance(loaded, BaseException):
            if hold is None:
                await self.ledger.count_refused_hit(
                    pending.payer, pending.request_id, pending.timing.started_at, admitted
                )
            return hold, state, hit
        if hold is not None and not isinstance(loaded, BaseException):
            return hold, state, None
        if hold is not None:
            await self.ledger.give_back(hold)
        if state is not None:
            await self._release_lease(state, pending.request_id)
        record = pending.record
        if isinstance(admitted, RateLimited):
            raise admitted
        if isinstance(loaded, ConversationLimit | TurnConflict):
            record.outcome = (
                "conversation_cap" if isinstance(loaded, ConversationLimit) else "turn_conflict"
            )
            self.ledger.record(record, pending.timing.clock_start)
            raise loaded
        if isinstance(loaded, BaseException):
            raise loaded
        if isinstance(admitted, BudgetExceeded):
            if not counts.exact:
                raise RecountExactly from admitted
            record.outcome = "budget_refused"
            self.ledger.record(record, pending.timing.clock_start)
        assert isinstance(admitted, BaseException)
        raise admitted

    def _replay(
        self, pending: _Pending, hit: CachedReply, hold: Hold | None, turn: TurnWriter | None
    ) -> CachedReplyStream:
        """Stream a cached reply: the hold (if any) is given back when it ends."""
        return CachedReplyStream(
            reply=hit,
            payer=pending.payer,
            record=pending.record,
            hold=hold,
            day=self.ledger.user_day(pending.payer, pending.timing.started_at),
            ledger=self.ledger,
            counter=self.counter,
            timing=pending.timing,
            turn=turn,
        )

    async def _open(
        self,
        pending: _Pending,
        hold: Hold,
        messages: list[Message],
        prompt_bound: int,
        counts: Counts,
        *,
        turn: TurnWriter | None = None,
        extra: dict[str, Any] | None = None,
        reasoning_effort: str | None = None,
        keeper: ReplyKeeper | None = None,
        beside_messages: int = 0,
    ) -> ChatStream:
        """Call upstream once the request is admitted; a refusal there gives everything back.

        `beside_messages`: prompt tokens upstream bills that are not in the messages' text
        (tool definitions, images), already counted by the caller."""
        record = pending.record
        prompt_tokens = counts.messages(pending.models, messages) + beside_messages
        try:
            if prompt_tokens > prompt_bound:
                # Only when the latest turn alone is longer than the history target.
                extra_prompt = prompt_tokens - prompt_bound
                await self.ledger.top_up(hold, hold_for(extra_prompt, 0, pending.prices))
            upstream_stream, models_tried = await self._upstream.open_stream(
                list(pending.models),
                messages,
                max_tokens=pending.cap,
                deadline=pending.timing.deadline,
                extra=extra,
                reasoning_effort=reasoning_effort,
            )
        except BaseException as error:
            await self.ledger.give_back(hold)
            if turn is not None:
                await self._release_lease(turn.state, pending.request_id)
            if isinstance(error, BudgetExceeded) and not counts.exact:
                raise RecountExactly from error
            if isinstance(error, BudgetExceeded):
                record.outcome = "budget_refused"
                self.ledger.record(record, pending.timing.clock_start)
            elif isinstance(error, GatewayError) and not isinstance(error, DependencyUnavailable):
                record.models_tried = list(getattr(error, "models_tried", []))
                record.outcome = (
                    "upstream_rejected" if isinstance(error, UpstreamRejected) else "upstream_error"
                )
                record.error = error.message
                self.ledger.record(record, pending.timing.clock_start)
            raise

        record.model = upstream_stream.model
        record.models_tried = models_tried
        stream = ChatStream(
            upstream=upstream_stream,
            payer=pending.payer,
            record=record,
            hold=hold,
            ledger=self.ledger,
            meter=self._meter,
            prompt=Prompt(
                messages, prompt_tokens if counts.exact else None, pending.cap, beside_messages
            ),
            timing=pending.timing,
            turn=turn,
            cancel_requested=lambda: self._requests.is_cancelled(pending.request_id),
            cancel_poll_s=self.config.cancel_poll_s,
            on_finished=self._forget,
            keeper=keeper,
        )
        self._active[pending.request_id] = stream
        return stream

    async def _release_lease(self, state: ConversationState, request_id: str) -> None:
        results = await asyncio.shield(
            asyncio.gather(
                self._conversations.release_turn(state, request_id), return_exceptions=True
            )
        )
        if isinstance(results[0], Exception):
            self.ledger.error("release_failed", request_id=request_id, error=repr(results[0]))

    def _forget(self, stream: ChatStream) -> None:
        self._active.pop(stream.request_id, None)


async def _none() -> None:
    return None
