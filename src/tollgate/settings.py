"""The process's configuration: read from the environment once, validated, cached."""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import AliasChoices, Field, field_validator, model_validator

from tollgate.auth import DEFAULT_MAX_LIFETIME_S
from tollgate.budget import DEFAULT_PLAN, Budgets, WindowLimits
from tollgate.environment import EnvironmentSettings
from tollgate.ports import Limits

CommaList = tuple[str, ...]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class Settings(EnvironmentSettings):
    """Every variable in docs/CONTRACTS.md's configuration table, by its documented name."""

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_api_key_secret_arn: str | None = None

    usage_table: str = Field(min_length=1)
    conversations_table: str = Field(min_length=1)

    model_chain: CommaList = ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo")
    summary_model: str = "gpt-4o-mini"

    max_output_tokens: int = Field(default=800, ge=1)
    max_input_tokens: int = Field(default=8000, ge=1)
    daily_token_limit: int = Field(default=50_000, ge=0)
    daily_cost_limit_usd: float | None = Field(default=None, ge=0)
    # JSON: plans (per-user limits), team and global limits by day and month (tollgate.budget)
    budgets: str | None = None
    plan_claim: str = Field(default="plan", min_length=1)
    team_claim: str = Field(default="team", min_length=1)
    conversation_token_limit: int = Field(default=200_000, ge=1)
    history_token_target: int = Field(default=4000, ge=1)

    stream_timeout_s: float = Field(default=120.0, gt=0)
    # A summary call's own deadline, from when it starts (not the chat stream's deadline).
    summary_timeout_s: float = Field(default=20.0, gt=0)
    openai_timeout_s: float = Field(default=60.0, gt=0)
    upstream_first_byte_timeout_s: float = Field(default=10.0, gt=0)
    upstream_cap_parameter: Literal["max_completion_tokens", "max_tokens"] = "max_completion_tokens"
    reasoning_effort: Literal["minimal", "low", "medium", "high"] = "low"
    # An SSE comment after this many seconds of silence keeps proxies from dropping a stream.
    sse_keepalive_s: float = Field(default=15.0, gt=0)
    rate_limit_per_minute: int = Field(default=60, ge=1)
    conversation_ttl_days: int = Field(default=30, ge=1)
    cancel_poll_s: float = Field(default=1.0, gt=0)
    # A request body must arrive within this (slow-body protection when run as a plain server)
    body_read_timeout_s: float = Field(default=10.0, gt=0)
    # Response cache for first questions (tollgate.cache); 0 turns it off.
    cache_ttl_s: int = Field(default=0, ge=0)
    cache_scope: Literal["global", "user"] = "global"
    cors_allow_origins: CommaList = ()

    auth_mode: Literal["jwt", "iam"] = "jwt"
    jwt_secret: str | None = None
    # Signs request ids (who may cancel a stream); every instance must share it.
    request_id_key: str | None = None
    request_id_key_secret_arn: str | None = None
    jwt_secret_arn: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    jwks_url: str | None = None
    # Keys the safety_identifier sent upstream on /v1; falls back to the JWT secret.
    safety_id_key: str | None = None
    jwt_max_lifetime_s: int = Field(default=DEFAULT_MAX_LIFETIME_S, ge=60)

    # SNS topic that team and global budget alerts go to (the stack's alarm topic); unset: none.
    alert_topic_arn: str | None = None

    # Not in the public contract: tuning knobs with safe defaults.
    dynamodb_timeout_s: float = Field(default=2.0, gt=0)
    dynamodb_max_attempts: int = Field(default=3, ge=1)
    # How long a key read from OPENAI_API_KEY_SECRET_ARN is used before it is read again.
    secret_max_age_s: float = Field(default=600.0, gt=0)
    # MODEL_TABLE_PATH (PRICE_TABLE_PATH still read): a model table file replacing the shipped one.
    price_table_path: str | None = Field(
        default=None, validation_alias=AliasChoices("model_table_path", "price_table_path")
    )
    # "memory" keeps budgets and conversations in this process only: benchmarks, never deploys.
    store_backend: Literal["dynamodb", "memory"] = "dynamodb"
    prompts_dir: str | None = None

    @field_validator("model_chain", "cors_allow_origins", mode="before")
    @classmethod
    def _comma_list(cls, value: object) -> object:
        return _split_commas(value)

    @model_validator(mode="after")
    def _coherent(self) -> Settings:
        if not self.model_chain:
            raise ValueError("MODEL_CHAIN must name at least one model")
        if self.budgets:
            self.budget_config  # noqa: B018 -- a malformed BUDGETS fails start-up, with its reason
        if self.auth_mode == "jwt" and not (
            self.jwt_secret or self.jwt_secret_arn or self.jwks_url
        ):
            raise ValueError("AUTH_MODE=jwt needs JWT_SECRET, JWT_SECRET_ARN or JWKS_URL")
        return self

    @property
    def budget_config(self) -> Budgets:
        default_day = Limits(self.daily_token_limit, self.daily_cost_limit_micros)
        if not self.budgets:
            return Budgets(plans={DEFAULT_PLAN: WindowLimits(day=default_day)})
        return Budgets.parse(self.budgets, default_day)

    @property
    def daily_cost_limit_micros(self) -> int | None:
        if self.daily_cost_limit_usd is None:
            return None
        return round(self.daily_cost_limit_usd * 1_000_000)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()  # type: ignore[call-arg]  # required fields come from the environment
