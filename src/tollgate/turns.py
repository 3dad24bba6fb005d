"""A /chat turn's conversation side: store the turn, fold aged turns, give the lease back."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime

from tollgate import history
from tollgate.budget import Payer, iso_z
from tollgate.ledger import Ledger
from tollgate.observability import CostRecord
from tollgate.ports import ConversationState, ConversationStore, TokenCounter, Turn
from tollgate.summaries import Summariser, Summary

# A turn is stored when its reply is complete or deliberately cut, never half.
STORED_OUTCOMES = frozenset({"completed", "cancelled", "timeout"})


class TurnWriter:
    def __init__(
        self,
        *,
        conversations: ConversationStore,
        state: ConversationState,
        request_id: str,
        user_message: str,
        summariser: Summariser,
        tokens: TokenCounter,
        history_token_target: int,
        fold_economics: Callable[[str], history.FoldEconomics],
        ledger: Ledger,
        clock: Callable[[], datetime],
    ) -> None:
        self._conversations = conversations
        self.state = state
        self._request_id = request_id
        self._user_message = user_message
        self._summariser = summariser
        self._tokens = tokens
        self._target = history_token_target
        self._economics = fold_economics
        self._ledger = ledger
        self._clock = clock
        self._plan: history.SummaryPlan | None = None

    @property
    def conversation_id(self) -> str:
        return self.state.conversation_id

    def turn_for(self, outcome: str, reply: str, model: str, record: CostRecord) -> Turn | None:
        """The turn to store for this ending (None: store nothing), and plan its fold."""
        if not reply or outcome not in STORED_OUTCOMES:
            return None
        turn = Turn(
            turn=self.state.turn_count + 1,
            user=self._user_message,
            assistant=reply,
            model=model,
            input_tokens=record.input_tokens,
            output_tokens=record.output_tokens,
            cost_micros=record.cost_micros,
            created_at=iso_z(self._clock()),
            history_tokens=history.turn_history_tokens(
                lambda messages: self._tokens.count_messages(model, messages),
                self._user_message,
                reply,
            ),
        )
        self._plan = history.plan_summary(
            self.state.summary_tokens,
            [*self.state.turns, turn],
            self._target,
            economics=self._economics(record.upstream_model or model),
        )
        return turn

    async def store(self, turn: Turn | None) -> bool:
        """Commit the turn (keeping the lease when a fold follows) or release the lease."""
        if turn is None:
            await self._conversations.release_turn(self.state, self._request_id)
            return False
        return await self._conversations.commit_turn(
            self.state,
            self._request_id,
            turn,
            now=self._clock(),
            release_lease=self._plan is None,
        )

    async def fold(self, payer: Payer, *, stored: bool) -> Summary | None:
        """Summarise aged turns when planned; on any failure the history degrades to a window."""
        plan = self._plan
        if plan is None:
            return None
        if not stored:
            await self._release()
            return None
        summary = await self._summariser.summarise(
            payer,
            self.state,
            plan,
            parent_request_id=self._request_id,
        )
        if summary is None:
            await self._release()
            return None
        try:
            saved = await self._conversations.save_summary(
                self.state,
                self._request_id,
                summary=summary.text,
                through_turn=plan.through_turn,
                summary_tokens=summary.summary_tokens,
                charged_tokens=summary.charge.tokens,
                now=self._clock(),
            )
        except Exception as exc:
            self._ledger.error("summary_store_failed", request_id=self._request_id, error=repr(exc))
            saved = False
        if not saved:
            await self._release()
        return summary

    async def _release(self) -> None:
        with contextlib.suppress(Exception):
            await self._conversations.release_turn(self.state, self._request_id)
