"""The composition root: the real adapters (DynamoDB or memory, OpenAI, tiktoken, the model
table, prompts/, Secrets Manager, SNS) wired into the chat service and the authenticator."""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from tollgate.auth import Authenticator, JwtConfig, safety_identifier
from tollgate.chat import ChatService
from tollgate.chat_config import config_from_settings
from tollgate.observability import CostRecorder
from tollgate.ports import BudgetAlerts, ConversationStore, ReplyCache, RequestRegistry, UsageStore
from tollgate.request_ids import RequestIds
from tollgate.settings import Settings

log = logging.getLogger("tollgate.dependencies")


@dataclass(slots=True)
class Dependencies:
    service: ChatService
    authenticator: Authenticator
    sse_keepalive_s: float = 15.0
    body_read_timeout_s: float = 10.0
    # Keys the safety_identifier sent upstream; None sends none (no key configured)
    safety_key: bytes | None = None

    def safety_identifier(self, user_id: str) -> str | None:
        return None if self.safety_key is None else safety_identifier(self.safety_key, user_id)


@dataclass(slots=True)
class Stores:
    usage: UsageStore
    requests: RequestRegistry
    conversations: ConversationStore
    replies: ReplyCache


def dynamodb_stores(settings: Settings) -> Stores:
    from tollgate.adapters.cache_store import DynamoReplyCache
    from tollgate.adapters.conversation_store import DynamoConversationStore
    from tollgate.adapters.dynamodb_http import shared_dynamodb
    from tollgate.adapters.usage_store import (
        DynamoRequestRegistry,
        DynamoUsageStore,
    )

    db = shared_dynamodb(settings.dynamodb_timeout_s, settings.dynamodb_max_attempts)
    return Stores(
        usage=DynamoUsageStore(settings.usage_table, db),
        requests=DynamoRequestRegistry(settings.usage_table, db),
        conversations=DynamoConversationStore(
            settings.conversations_table, db, ttl_days=settings.conversation_ttl_days
        ),
        replies=DynamoReplyCache(settings.conversations_table, db),
    )


def memory_stores(settings: Settings) -> Stores:
    from tollgate.adapters.memory_store import (
        MemoryConversationStore,
        MemoryReplyCache,
        MemoryRequestRegistry,
        MemoryUsageStore,
    )

    return Stores(
        MemoryUsageStore(),
        MemoryRequestRegistry(),
        MemoryConversationStore(ttl_days=settings.conversation_ttl_days),
        MemoryReplyCache(),
    )


def request_ids_keyed(key: str | None) -> RequestIds:
    """Request ids signed with the deployment's key; without one (a local run with neither a
    key nor a JWT secret) a key of this process only, so cancels reach this instance only."""
    if not key:
        log.warning("no REQUEST_ID_KEY: request ids are signed with a key of this process only")
        return RequestIds(secrets.token_bytes(32))
    return RequestIds(hashlib.sha256(key.encode()).digest())


def budget_alerts(settings: Settings, recorder: CostRecorder) -> BudgetAlerts | None:
    """Team and global alerts to ALERT_TOPIC_ARN; their once-only marks live in the usage table."""
    if not settings.alert_topic_arn or settings.store_backend != "dynamodb":
        return None
    from tollgate.adapters.budget_alerts import AlertLatch, BudgetAlertNotifier, SnsNotifier
    from tollgate.adapters.dynamodb_http import shared_dynamodb

    db = shared_dynamodb(settings.dynamodb_timeout_s, settings.dynamodb_max_attempts)
    return BudgetAlertNotifier(
        AlertLatch(settings.usage_table, db), SnsNotifier(settings.alert_topic_arn), recorder
    )


def build_dependencies(
    settings: Settings,
    *,
    recorder: CostRecorder | None = None,
    clock: Callable[[], datetime] | None = None,
) -> Dependencies:
    """The real adapters: DynamoDB, OpenAI, tiktoken, the price table, prompts/."""
    from openai import AsyncOpenAI

    from tollgate.adapters.secrets import FixedSecret, RotatingSecret, resolve_secret
    from tollgate.adapters.tokenizer import token_counter
    from tollgate.adapters.upstream import OpenAIUpstream
    from tollgate.pricing import price_table
    from tollgate.prompts import PromptLibrary

    # No key yet (an empty secret, an empty variable) is not a start-up failure: /health
    # answers and chat gets 502 upstream_misconfigured until the key appears.
    api_key: RotatingSecret | FixedSecret = FixedSecret(settings.openai_api_key)
    if not settings.openai_api_key and settings.openai_api_key_secret_arn:
        api_key = RotatingSecret(
            settings.openai_api_key_secret_arn, max_age_s=settings.secret_max_age_s
        )
    client = AsyncOpenAI(
        # The SDK refuses an empty key; this placeholder is never sent (see OpenAIUpstream).
        api_key=api_key.initial() or "not-configured",
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout_s,
        max_retries=0,
    )
    jwt_secret = settings.jwt_secret or resolve_secret(settings.jwt_secret_arn)
    request_id_key = (
        settings.request_id_key or resolve_secret(settings.request_id_key_secret_arn) or jwt_secret
    )
    stores = (
        memory_stores(settings) if settings.store_backend == "memory" else dynamodb_stores(settings)
    )
    recorder = recorder or CostRecorder()
    prices = price_table(settings.price_table_path)
    service = ChatService(
        config_from_settings(settings),
        usage=stores.usage,
        requests=stores.requests,
        conversations=stores.conversations,
        replies=stores.replies,
        upstream=OpenAIUpstream(
            client,
            attempt_timeout_s=settings.openai_timeout_s,
            first_byte_timeout_s=settings.upstream_first_byte_timeout_s,
            cap_parameter=settings.upstream_cap_parameter,
            is_reasoning=prices.is_reasoning,
            api_key=api_key,
        ),
        tokens=token_counter(settings.price_table_path),
        prices=prices,
        prompts=PromptLibrary.load(Path(settings.prompts_dir) if settings.prompts_dir else None),
        recorder=recorder,
        request_ids=request_ids_keyed(request_id_key),
        **({"clock": clock} if clock else {}),
        # The encodings (~0.3 s of CPU) load on first need, in a thread, after the first
        # reply streamed: a cold instance's first requests reserve byte bounds instead.
        lazy_encoding=True,
        alerts=budget_alerts(settings, recorder),
    )
    authenticator = Authenticator(
        settings.auth_mode,
        JwtConfig(
            secret=jwt_secret,
            jwks_url=settings.jwks_url,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            plan_claim=settings.plan_claim,
            team_claim=settings.team_claim,
            max_lifetime_s=settings.jwt_max_lifetime_s,
        ),
    )
    safety_key = settings.safety_id_key or jwt_secret
    return Dependencies(
        service=service,
        authenticator=authenticator,
        sse_keepalive_s=settings.sse_keepalive_s,
        body_read_timeout_s=settings.body_read_timeout_s,
        safety_key=safety_key.encode() if safety_key else None,
    )
