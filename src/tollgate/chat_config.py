"""What a chat session is configured with (from Settings) and asked for (POST /chat)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from tollgate.budget import Budgets
from tollgate.cache import CACHE_OFF, CachePolicy
from tollgate.settings import Settings


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """POST /chat, validated (tollgate.wire.chat parses it)."""

    message: str
    conversation_id: str | None = None
    prompt: str = "default"
    max_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class ChatConfig:
    model_chain: tuple[str, ...]
    summary_model: str
    max_output_tokens: int
    max_input_tokens: int
    budgets: Budgets
    conversation_token_limit: int
    history_token_target: int
    stream_timeout_s: float
    summary_timeout_s: float
    openai_timeout_s: float
    cancel_poll_s: float
    rate_limit_per_minute: int
    reasoning_effort: str | None = "low"  # sent to reasoning models on /chat
    cache: CachePolicy = CACHE_OFF


def config_from_settings(settings: Settings) -> ChatConfig:
    return ChatConfig(
        model_chain=tuple(settings.model_chain),
        summary_model=settings.summary_model,
        max_output_tokens=settings.max_output_tokens,
        max_input_tokens=settings.max_input_tokens,
        budgets=settings.budget_config,
        conversation_token_limit=settings.conversation_token_limit,
        history_token_target=settings.history_token_target,
        stream_timeout_s=settings.stream_timeout_s,
        summary_timeout_s=settings.summary_timeout_s,
        openai_timeout_s=settings.openai_timeout_s,
        cancel_poll_s=settings.cancel_poll_s,
        rate_limit_per_minute=settings.rate_limit_per_minute,
        reasoning_effort=settings.reasoning_effort,
        cache=CachePolicy(ttl_s=settings.cache_ttl_s, scope=settings.cache_scope),
    )
