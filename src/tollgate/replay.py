"""A cached reply, streamed like any other: no upstream call, nothing charged.

The hold the request took while the cache was looked up (concurrently, so that a miss
costs no extra round trip) is given back; the turn is stored so that the conversation
can be continued; the cost record says `cache_hit` and what the reply saved.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator

from tollgate.budget import BudgetLine, Payer
from tollgate.cache import replay_chunks
from tollgate.counting import PromptCounter
from tollgate.ledger import Hold, Ledger
from tollgate.observability import CostRecord
from tollgate.ports import CachedReply, Delta
from tollgate.stream import Outcome, Timing
from tollgate.turns import TurnWriter

CACHE_HIT = "cache_hit"


class CachedReplyStream:
    cached = True

    def __init__(
        self,
        *,
        reply: CachedReply,
        payer: Payer,
        record: CostRecord,
        hold: Hold | None,
        day: BudgetLine,
        ledger: Ledger,
        counter: PromptCounter,
        timing: Timing,
        turn: TurnWriter | None,
    ) -> None:
        self._reply = reply
        self._payer = payer
        self._record = record
        self._hold = hold
        self._day = day
        self._ledger = ledger
        self._counter = counter
        self._timing = timing
        self._turn = turn
        self._stopped = False
        self._first_delta_at: float | None = None
        self._finish_task: asyncio.Task[Outcome] | None = None
        record.model = reply.model
        record.models_tried = []

    @property
    def request_id(self) -> str:
        return self._record.request_id

    @property
    def user_id(self) -> str:
        return self._record.user_id

    @property
    def conversation_id(self) -> str | None:
        return None if self._turn is None else self._turn.conversation_id

    @property
    def model(self) -> str:
        return self._reply.model

    def stop(self, reason: str) -> None:
        self._stopped = True

    async def events(self) -> AsyncGenerator[Delta, None]:
        """The stored text in chunks (a tool call is never stored)."""
        for chunk in replay_chunks(self._reply.text):
            if self._stopped:
                return
            if self._first_delta_at is None:
                self._first_delta_at = time.monotonic()
            yield chunk

    async def finish_now(self) -> Outcome:
        """Give the hold back, store the turn and write the record, exactly once."""
        if self._finish_task is None:
            self._finish_task = asyncio.get_running_loop().create_task(self._settle())
        return await asyncio.shield(self._finish_task)

    async def aclose(self) -> None:
        self.stop("client_disconnected")
        await self.finish_now()

    async def _settle(self) -> Outcome:
        record = self._record
        record.outcome = CACHE_HIT
        record.saved_micros = self._reply.cost_micros
        if self._first_delta_at is not None:
            record.ttft_ms = round((self._first_delta_at - self._timing.clock_start) * 1000, 1)
        writer = self._turn
        turn = None
        if writer is not None:
            await self._counter.loaded(
                self._reply.model
            )  # counting the turn must not block the loop
            # the whole reply is in the store, so the turn is complete however the replay ended
            turn = writer.turn_for("completed", self._reply.text, self._reply.model, record)
        _, stored = await asyncio.gather(
            self._ledger.give_back(self._hold) if self._hold is not None else _nothing(),
            writer.store(turn) if writer is not None else _nothing(),
            return_exceptions=True,
        )
        if isinstance(stored, BaseException):
            self._ledger.error("turn_store_failed", request_id=self.request_id, error=repr(stored))
            stored = False
        self._ledger.record(record, self._timing.clock_start)
        if writer is not None:
            await writer.fold(self._payer, stored=bool(stored))
        return Outcome(
            outcome=CACHE_HIT,
            text=self._reply.text,
            finish_reason="stop",
            input_tokens=0,
            cached_input_tokens=0,
            output_tokens=0,
            reasoning_tokens=0,
            cost_micros=0,
            balance=await self._ledger.balance_of(self._day),
            saved_micros=self._reply.cost_micros,
        )


async def _nothing() -> bool:
    return False
