"""The model table (docs/CONTRACTS.md, models and prices: prices and per-model facts as data)."""

from __future__ import annotations

import json
import math
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tollgate.pricing import (
    DEFAULT_MODEL_TABLE,
    ModelPrice,
    ModelTableError,
    PriceTable,
    UnknownModelPrice,
    micros_to_usd,
    price_table,
)
from tollgate.settings import Settings

# USD per 1M tokens, docs/CONTRACTS.md: input / cached input / output (no discount: cached = input)
STARTING_PRICES = {
    "gpt-5": ("1.25", "0.125", "10.00"),
    "gpt-5-mini": ("0.25", "0.025", "2.00"),
    "gpt-5-nano": ("0.05", "0.005", "0.40"),
    "gpt-4.1": ("2.00", "0.50", "8.00"),
    "gpt-4.1-mini": ("0.40", "0.10", "1.60"),
    "gpt-4.1-nano": ("0.10", "0.025", "0.40"),
    "o3": ("2.00", "0.50", "8.00"),
    "o4-mini": ("1.10", "0.275", "4.40"),
    "gpt-4o-mini": ("0.15", "0.075", "0.60"),
    "gpt-4o": ("2.50", "1.25", "10.00"),
    "gpt-3.5-turbo": ("0.50", "0.50", "1.50"),
}
REASONING_MODELS = {"gpt-5", "gpt-5-mini", "gpt-5-nano", "o3", "o4-mini"}
# OpenAI's image token formulas (Images and vision guide, "Calculating costs"):
# tile models (base, per 512-px tile), patch models (multiplier per 32-px patch, 1536 cap).
IMAGE_TILES = {"gpt-5": (70, 140), "gpt-4.1": (85, 170), "gpt-4o": (85, 170), "o3": (75, 150)}
IMAGE_TILES["gpt-4o-mini"] = (2833, 5667)
IMAGE_PATCH_MULTIPLIERS = {
    "gpt-5-mini": "1.62",
    "gpt-5-nano": "2.46",
    "gpt-4.1-mini": "1.62",
    "gpt-4.1-nano": "2.46",
    "o4-mini": "1.72",
}


@pytest.fixture(scope="module")
def table() -> PriceTable:
    return PriceTable.load()


@pytest.mark.parametrize("model", sorted(STARTING_PRICES))
def test_starting_prices_match_design(table: PriceTable, model: str) -> None:
    # Given the shipped price table
    price = table.price(model)
    # Then it holds the contract's figures
    expected = tuple(Decimal(figure) for figure in STARTING_PRICES[model])
    assert (price.input, price.cached_input, price.output) == expected


def test_price_table_is_data_with_an_as_of_date(table: PriceTable) -> None:
    # Given the data file
    raw = json.loads(Path(DEFAULT_MODEL_TABLE).read_text(encoding="utf-8"))
    # Then it carries an as-of date and the source it was checked against
    assert raw["as_of"]
    assert table.as_of == str(raw["as_of"])
    assert len(table.as_of) == len("2026-03-01")
    assert "developers.openai.com" in table.source
    assert set(raw["models"]) == set(STARTING_PRICES)
    assert raw["models"]["gpt-3.5-turbo"]["cached_input"] is None


@pytest.mark.parametrize(
    ("family", "discount"),
    [
        (("gpt-4o", "gpt-4o-mini"), "0.50"),
        (("gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "o3", "o4-mini"), "0.75"),
        (("gpt-5", "gpt-5-mini", "gpt-5-nano"), "0.90"),
    ],
)
def test_each_family_has_its_own_cached_discount(
    table: PriceTable, family: tuple[str, ...], discount: str
) -> None:
    for model in family:
        price = table.price(model)
        assert price.cached_input == price.input * (1 - Decimal(discount))


@pytest.mark.parametrize("model", sorted(STARTING_PRICES))
def test_every_model_has_its_encoding_reasoning_flag_and_cap_parameter(
    table: PriceTable, model: str
) -> None:
    expected_encoding = "cl100k_base" if model == "gpt-3.5-turbo" else "o200k_base"
    assert table.encoding_for(model) == expected_encoding
    assert table.is_reasoning(model) is (model in REASONING_MODELS)
    assert table.cap_parameter(model) == "max_completion_tokens"


@pytest.mark.parametrize("model", sorted(IMAGE_TILES))
def test_tile_models_image_bound_is_base_plus_eight_tiles(table: PriceTable, model: str) -> None:
    # Given a model billed per 512-px tile: fitted in 2048x2048, short side at most 768,
    # an image covers at most 2 x 4 tiles
    base, tile = IMAGE_TILES[model]
    # Then low detail costs the base, high (and auto) at most the base plus eight tiles
    assert table.image_token_bound(model, "low") == base
    assert table.image_token_bound(model, "high") == base + 8 * tile
    assert table.image_token_bound(model, "auto") == base + 8 * tile


@pytest.mark.parametrize("model", sorted(IMAGE_PATCH_MULTIPLIERS))
def test_patch_models_image_bound_is_the_capped_patches_times_the_multiplier(
    table: PriceTable, model: str
) -> None:
    bound = math.ceil(1536 * Decimal(IMAGE_PATCH_MULTIPLIERS[model]))
    for detail in ("low", "high", "auto"):
        assert table.image_token_bound(model, detail) == bound


def test_a_detail_the_table_does_not_know_gets_the_larger_bound(table: PriceTable) -> None:
    assert table.image_token_bound("gpt-4o", "original") == table.image_token_bound(
        "gpt-4o", "high"
    )


def test_a_model_without_image_input_has_no_bound(table: PriceTable) -> None:
    assert table.image_token_bound("gpt-3.5-turbo", "low") is None
    assert set(IMAGE_TILES) | set(IMAGE_PATCH_MULTIPLIERS) | {"gpt-3.5-turbo"} == set(
        STARTING_PRICES
    )


@pytest.mark.parametrize(
    ("reported", "base"),
    [
        ("gpt-4o-mini", "gpt-4o-mini"),
        ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
        ("gpt-4o-2024-08-06", "gpt-4o"),
        ("gpt-4o-2024-11-20", "gpt-4o"),
        ("gpt-3.5-turbo-0125", "gpt-3.5-turbo"),
        ("gpt-3.5-turbo-1106", "gpt-3.5-turbo"),
        ("gpt-5-mini-2025-08-07", "gpt-5-mini"),
        ("gpt-4.1-nano-2025-04-14", "gpt-4.1-nano"),
        ("o4-mini-2025-04-16", "o4-mini"),
    ],
)
def test_snapshot_names_map_to_their_base_entry(
    table: PriceTable, reported: str, base: str
) -> None:
    # Given the dated snapshot name upstream reports
    # Then it is priced as its base model
    assert table.base_model(reported) == base
    assert table.price(reported) == table.price(base)
    assert table.is_reasoning(reported) is table.is_reasoning(base)
    assert table.encoding_for(reported) == table.encoding_for(base)


@pytest.mark.parametrize(
    "reported",
    [
        "gpt-4o-mini-2024-07-18",
        "gpt-4o-mini-tts",
        "gpt-4o-mini-search-preview",
        "gpt-4o-mini-search-preview-2025-03-11",
        "gpt-4o-mini-realtime-preview-2024-12-17",
    ],
)
def test_gpt_4o_mini_variants_never_price_as_gpt_4o(table: PriceTable, reported: str) -> None:
    # Given any gpt-4o-mini-… name
    # Then it is never mistaken for the 16x pricier gpt-4o
    assert table.base_model(reported) != "gpt-4o"


@pytest.mark.parametrize(
    "model",
    ["gpt-6", "gpt-4o-audio-preview", "claude-3", "", "gpt-4o-mini-x", "gpt-4", "4o", "o3-pro"],
)
def test_unknown_model_raises_rather_than_billing_zero(table: PriceTable, model: str) -> None:
    # Given a model with no entry
    # Then pricing it (or asking anything about it) is an error, never $0
    assert table.base_model(model) is None
    with pytest.raises(UnknownModelPrice):
        table.price(model)
    with pytest.raises(UnknownModelPrice):
        table.encoding_for(model)


def test_unknown_model_price_is_a_lookup_error() -> None:
    assert issubclass(UnknownModelPrice, LookupError)


def test_require_passes_for_known_models_and_snapshots(table: PriceTable) -> None:
    table.require(["gpt-4o-mini", "gpt-4o", "gpt-3.5-turbo", "gpt-4o-mini-2024-07-18"])
    table.require(())


def test_require_lists_every_missing_model(table: PriceTable) -> None:
    # Given a chain with two unpriced models among priced ones
    # When required at start-up
    with pytest.raises(UnknownModelPrice) as excinfo:
        table.require(["gpt-4o-mini", "gpt-6", "o9-preview", "gpt-4o"])
    # Then the error names each missing one and none of the priced ones
    message = str(excinfo.value)
    assert "gpt-6" in message
    assert "o9-preview" in message
    assert "gpt-4o-mini" not in message


def test_cost_in_integer_micro_usd(table: PriceTable) -> None:
    # Given 1M input and 1M output tokens on gpt-4o
    cost = table.price("gpt-4o").cost_micros(1_000_000, 0, 1_000_000)
    # Then the cost is $12.50 as integer micro-USD
    assert cost == 12_500_000
    assert isinstance(cost, int)


def test_cached_input_uses_the_cached_price(table: PriceTable) -> None:
    # Given 1000 input tokens of which 400 cached, 100 output on gpt-4o-mini
    cost = table.price("gpt-4o-mini").cost_micros(1000, 400, 100)
    # Then 600 * 0.15 + 400 * 0.075 + 100 * 0.60 = 90 + 30 + 60 = 180 micro-USD
    assert cost == 180


def test_gpt_35_turbo_has_no_cached_discount(table: PriceTable) -> None:
    # Given gpt-3.5-turbo, which has no prompt caching discount
    price = table.price("gpt-3.5-turbo")
    # Then cached tokens bill at the full input price
    assert price.cost_micros(1000, 1000, 0) == price.cost_micros(1000, 0, 0) == 500


def test_cached_tokens_never_exceed_input(table: PriceTable) -> None:
    # Given a (bogus) report of more cached tokens than input tokens
    price = table.price("gpt-4o")
    # Then it is never cheaper than all input being cached
    assert price.cost_micros(100, 500, 0) == price.cost_micros(100, 100, 0) == 125


@pytest.mark.parametrize(
    ("model", "tokens", "expected"),
    [
        ("gpt-4o-mini", (1, 0, 0), 1),  # 0.15 -> 1
        ("gpt-4o-mini", (0, 0, 1), 1),  # 0.60 -> 1
        ("gpt-4o-mini", (1, 1, 0), 1),  # 0.075 -> 1
        ("gpt-4o-mini", (7, 0, 0), 2),  # 1.05 -> 2
        ("gpt-4o-mini", (20, 0, 0), 3),  # 3.00 exactly -> 3
        ("gpt-4o", (1, 0, 1), 13),  # 12.5 -> 13
        ("gpt-3.5-turbo", (1, 0, 1), 2),  # 2.0 exactly -> 2
        ("gpt-4o-mini", (0, 0, 0), 0),
    ],
)
def test_cost_rounds_up_never_under_charges(
    table: PriceTable, model: str, tokens: tuple[int, int, int], expected: int
) -> None:
    assert table.price(model).cost_micros(*tokens) == expected


@given(
    st.integers(0, 2_000_000),
    st.integers(0, 2_000_000),
    st.integers(0, 2_000_000),
    st.sampled_from(sorted(STARTING_PRICES)),
)
def test_cost_is_the_exact_charge_rounded_up(
    input_tokens: int, cached: int, output_tokens: int, model: str
) -> None:
    # Given any token counts
    price = price_table().price(model)
    in_price, cached_price, out_price = (Decimal(figure) for figure in STARTING_PRICES[model])
    used_cached = min(cached, input_tokens)
    exact = (
        (input_tokens - used_cached) * in_price
        + used_cached * cached_price
        + output_tokens * out_price
    )
    # When priced
    cost = price.cost_micros(input_tokens, cached, output_tokens)
    # Then it is the smallest integer micro-USD not below the exact charge
    assert cost >= exact
    assert cost - 1 < exact


def test_custom_table_without_cached_price_bills_cached_at_input(tmp_path: Path) -> None:
    # Given a user-edited table (no code change) with a new model and a null cached price
    path = tmp_path / "models.json"
    entry = {"input": 1, "cached_input": None, "output": 2, **NEW_MODEL_FACTS}
    path.write_text(json.dumps({"as_of": "2027-01-01", "models": {"m": entry}}))
    # When loaded
    table = PriceTable.load(path)
    # Then it is used as data
    assert table.as_of == "2027-01-01"
    assert table.price("m") == ModelPrice(Decimal(1), Decimal(1), Decimal(2))
    assert table.price("m-2027-01-01").cost_micros(10, 10, 10) == 30
    assert table.encoding_for("m") == "cl100k_base"
    assert table.cap_parameter("m") == "max_tokens"
    assert table.image_token_bound("m", "auto") is None


NEW_MODEL_FACTS = {"encoding": "cl100k_base", "reasoning": False, "cap_parameter": "max_tokens"}


@pytest.mark.parametrize(
    "change",
    [
        {"encoding": None},
        {"reasoning": "yes"},
        {"cap_parameter": "max_output_tokens"},
        {"input": "free"},
        {"image_tokens": {"low": 85}},
        {"image_tokens": {"low": 85, "high": -1}},
    ],
)
def test_a_malformed_entry_is_refused_at_load(tmp_path: Path, change: dict[str, object]) -> None:
    path = tmp_path / "models.json"
    entry = {"input": 1, "cached_input": None, "output": 2, **NEW_MODEL_FACTS, **change}
    path.write_text(json.dumps({"as_of": "2027-01-01", "models": {"m": entry}}))
    with pytest.raises(ModelTableError):
        PriceTable.load(path)


@pytest.mark.parametrize("missing", ["encoding", "reasoning", "cap_parameter", "output"])
def test_an_entry_missing_a_fact_is_refused_at_load(tmp_path: Path, missing: str) -> None:
    path = tmp_path / "models.json"
    entry = {"input": 1, "cached_input": None, "output": 2, **NEW_MODEL_FACTS}
    del entry[missing]
    path.write_text(json.dumps({"as_of": "2027-01-01", "models": {"m": entry}}))
    with pytest.raises(ModelTableError, match=missing):
        PriceTable.load(path)


@pytest.mark.parametrize("variable", ["MODEL_TABLE_PATH", "PRICE_TABLE_PATH"])
def test_an_override_table_is_named_by_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str
) -> None:
    monkeypatch.setenv(variable, "/etc/tollgate/models.json")
    settings = Settings(usage_table="u", conversations_table="c", jwt_secret="s")
    assert settings.price_table_path == "/etc/tollgate/models.json"


@pytest.mark.parametrize(
    ("micros", "usd"),
    [(0, 0.0), (1, 0.000001), (1_234_567, 1.234567), (12_500_000, 12.5), (999_999, 0.999999)],
)
def test_micros_to_usd_rounds_to_six_decimals(micros: int, usd: float) -> None:
    assert micros_to_usd(micros) == usd


def test_an_unknown_reported_model_is_priced_as_the_configured_one() -> None:
    table = PriceTable.load()

    assert table.price_for("gpt-4o-2024-08-06", "gpt-4o-mini") == table.price("gpt-4o")
    assert table.price_for("some-local-model", "gpt-4o-mini") == table.price("gpt-4o-mini")
    assert table.price_for(None, "gpt-4o") == table.price("gpt-4o")
