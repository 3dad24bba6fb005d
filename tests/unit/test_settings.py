"""Configuration from the environment (docs/CONTRACTS.md "Configuration")."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tollgate.settings import Settings

REQUIRED = {"USAGE_TABLE": "usage", "CONVERSATIONS_TABLE": "conversations"}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start every test from an environment holding only the table names and a JWT secret."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
        monkeypatch.delenv(name, raising=False)
    for name, value in REQUIRED.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("JWT_SECRET", "s" * 48)


def test_defaults_match_the_configuration_table() -> None:
    # Given only the required variables
    # When settings are read
    settings = Settings()
    # Then every documented default holds
    assert settings.model_chain == ("gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo")
    assert settings.summary_model == "gpt-4o-mini"
    assert settings.max_output_tokens == 800
    assert settings.max_input_tokens == 8000
    assert settings.daily_token_limit == 50_000
    assert settings.daily_cost_limit_usd is None
    assert settings.daily_cost_limit_micros is None
    assert settings.conversation_token_limit == 200_000
    assert settings.history_token_target == 4000
    assert settings.stream_timeout_s == 120
    assert settings.openai_timeout_s == 60
    assert settings.upstream_first_byte_timeout_s == 10
    assert settings.upstream_cap_parameter == "max_completion_tokens"
    assert settings.reasoning_effort == "low"
    assert settings.rate_limit_per_minute == 60
    assert settings.conversation_ttl_days == 30
    assert settings.cancel_poll_s == 1.0
    assert settings.cors_allow_origins == ()
    assert settings.auth_mode == "jwt"
    assert settings.openai_api_key is None
    assert settings.openai_base_url is None
    assert settings.openai_api_key_secret_arn is None
    assert settings.jwt_issuer is None
    assert settings.jwt_audience is None
    assert settings.jwks_url is None
    assert settings.usage_table == "usage"
    assert settings.conversations_table == "conversations"


@pytest.mark.parametrize(
    ("raw", "chain"),
    [
        ("gpt-4o", ("gpt-4o",)),
        ("gpt-4o,gpt-4o-mini", ("gpt-4o", "gpt-4o-mini")),
        (" gpt-4o-mini , gpt-3.5-turbo ", ("gpt-4o-mini", "gpt-3.5-turbo")),
        ("gpt-4o-mini,,gpt-4o,", ("gpt-4o-mini", "gpt-4o")),
    ],
)
def test_model_chain_is_a_comma_list(
    monkeypatch: pytest.MonkeyPatch, raw: str, chain: tuple[str, ...]
) -> None:
    # Given MODEL_CHAIN as a comma list (not JSON)
    monkeypatch.setenv("MODEL_CHAIN", raw)
    # Then the chain is its trimmed, non-empty parts in order
    assert Settings().model_chain == chain


@pytest.mark.parametrize("raw", ["", ",", " , "])
def test_empty_model_chain_is_an_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("MODEL_CHAIN", raw)
    with pytest.raises(ValidationError):
        Settings()


def test_cors_origins_are_a_comma_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORS_ALLOW_ORIGINS", "https://a.example, https://b.example")
    assert Settings().cors_allow_origins == ("https://a.example", "https://b.example")


def test_variable_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("max_output_tokens", "123")
    assert Settings().max_output_tokens == 123


def test_numbers_are_parsed_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given numeric variables as strings
    for name, value in {
        "MAX_OUTPUT_TOKENS": "256",
        "DAILY_TOKEN_LIMIT": "1000",
        "STREAM_TIMEOUT_S": "30.5",
        "CANCEL_POLL_S": "0.25",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    # Then they are typed
    assert settings.max_output_tokens == 256
    assert settings.daily_token_limit == 1000
    assert settings.stream_timeout_s == 30.5
    assert settings.cancel_poll_s == 0.25


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAX_OUTPUT_TOKENS", "0"),
        ("MAX_OUTPUT_TOKENS", "lots"),
        ("STREAM_TIMEOUT_S", "0"),
        ("DAILY_COST_LIMIT_USD", "-1"),
        ("AUTH_MODE", "basic"),
        ("UPSTREAM_FIRST_BYTE_TIMEOUT_S", "0"),
        ("UPSTREAM_CAP_PARAMETER", "max_output_tokens"),
        ("REASONING_EFFORT", "none"),
    ],
)
def test_invalid_values_are_start_up_errors(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        Settings()


def test_jwt_mode_without_any_secret_or_jwks_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given AUTH_MODE=jwt and no JWT_SECRET, JWT_SECRET_ARN or JWKS_URL
    monkeypatch.delenv("JWT_SECRET")
    monkeypatch.setenv("AUTH_MODE", "jwt")
    # Then settings refuse to load
    with pytest.raises(ValidationError, match="JWT"):
        Settings()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("JWT_SECRET", "s" * 48),
        ("JWT_SECRET_ARN", "arn:aws:secretsmanager:us-east-1:123456789012:secret:jwt"),
        ("JWKS_URL", "https://cognito-idp.us-east-1.amazonaws.com/pool/.well-known/jwks.json"),
    ],
)
def test_jwt_mode_accepts_any_one_key_source(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.delenv("JWT_SECRET")
    monkeypatch.setenv(name, value)
    assert Settings().auth_mode == "jwt"


def test_iam_mode_needs_no_jwt_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JWT_SECRET")
    monkeypatch.setenv("AUTH_MODE", "iam")
    assert Settings().auth_mode == "iam"


@pytest.mark.parametrize("missing", sorted(REQUIRED))
def test_table_names_are_required(monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    monkeypatch.delenv(missing)
    with pytest.raises(ValidationError):
        Settings()


@pytest.mark.parametrize(
    ("raw", "micros"),
    [("0", 0), ("0.1", 100_000), ("2.5", 2_500_000), ("1", 1_000_000), ("0.000001", 1)],
)
def test_daily_cost_limit_usd_becomes_micros(
    monkeypatch: pytest.MonkeyPatch, raw: str, micros: int
) -> None:
    # Given a daily dollar limit
    monkeypatch.setenv("DAILY_COST_LIMIT_USD", raw)
    # Then it is held as integer micro-USD
    value = Settings().daily_cost_limit_micros
    assert value == micros
    assert isinstance(value, int)
