"""The model table: prices and per-model facts, data with an as-of date, looked up by the
reported model name. Users update it without a code change (data/models.json, or an
override file named by MODEL_TABLE_PATH)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any, Literal, cast, get_args

from tollgate.errors import InvalidParameter

DEFAULT_MODEL_TABLE = Path(__file__).resolve().parent / "data" / "models.json"

CapParameter = Literal["max_completion_tokens", "max_tokens"]

# gpt-4o-mini-2024-07-18 -> gpt-4o-mini, gpt-3.5-turbo-0125 -> gpt-3.5-turbo
_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


class UnknownModelPrice(LookupError):
    """A model has no entry in the model table: refusing beats billing $0."""


class ModelTableError(ValueError):
    """The model table file is malformed: a start-up error, like a missing model."""


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1M tokens, which is the same number as micro-USD per token."""

    input: Decimal
    cached_input: Decimal
    output: Decimal

    def cost_micros(self, input_tokens: int, cached_input_tokens: int, output_tokens: int) -> int:
        cached = min(cached_input_tokens, input_tokens)
        exact = (
            (input_tokens - cached) * self.input
            + cached * self.cached_input
            + output_tokens * self.output
        )
        return math.ceil(exact)  # never under-charge by rounding


@dataclass(frozen=True, slots=True)
class ImageTokenBound:
    """The most tokens one image may cost at each `detail` (the table's notes give the source)."""

    low: int
    high: int

    def at(self, detail: str) -> int:
        # "auto" lets upstream choose, and a detail we do not know gets the safe answer.
        return self.low if detail == "low" else max(self.low, self.high)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    price: ModelPrice
    encoding: str
    reasoning: bool
    cap_parameter: CapParameter
    image_tokens: ImageTokenBound | None  # None: the model takes no image input


def _decimal(value: object, field: str) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ModelTableError(f"{field} must be a price (a number >= 0), not {value!r}")
    return Decimal(str(value))


def _spec(model: str, entry: dict[str, Any]) -> ModelSpec:
    try:
        input_price = _decimal(entry["input"], f"{model}.input")
        cached = entry.get("cached_input")
        encoding = entry["encoding"]
        reasoning = entry["reasoning"]
        cap_parameter = entry["cap_parameter"]
        images = entry.get("image_tokens")
        output_price = _decimal(entry["output"], f"{model}.output")
    except KeyError as exc:
        raise ModelTableError(f"model {model!r} has no {exc.args[0]!r}") from exc
    if not isinstance(encoding, str) or not encoding:
        raise ModelTableError(f"{model}.encoding must name a tiktoken encoding")
    if not isinstance(reasoning, bool):
        raise ModelTableError(f"{model}.reasoning must be true or false")
    if cap_parameter not in get_args(CapParameter):
        raise ModelTableError(f"{model}.cap_parameter must be one of {get_args(CapParameter)}")
    return ModelSpec(
        price=ModelPrice(
            input=input_price,
            cached_input=input_price
            if cached is None
            else _decimal(cached, f"{model}.cached_input"),
            output=output_price,
        ),
        encoding=encoding,
        reasoning=reasoning,
        cap_parameter=cast(CapParameter, cap_parameter),
        image_tokens=_image_bound(model, images),
    )


def _image_bound(model: str, images: object) -> ImageTokenBound | None:
    if images is None:
        return None
    if isinstance(images, dict) and all(_is_count(images.get(key)) for key in ("low", "high")):
        return ImageTokenBound(low=images["low"], high=images["high"])
    raise ModelTableError(f"{model}.image_tokens needs whole-number low and high bounds, or null")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


@dataclass(frozen=True, slots=True)
class PriceTable:
    """The model table. Every accessor takes a model as configured or as upstream reports it
    (a dated snapshot resolves to its base entry) and raises UnknownModelPrice without one."""

    as_of: str
    source: str
    models: dict[str, ModelSpec]

    @classmethod
    def load(cls, path: Path | str | None = None) -> PriceTable:
        raw = json.loads(Path(path or DEFAULT_MODEL_TABLE).read_text(encoding="utf-8"))
        models = {model: _spec(model, entry) for model, entry in raw["models"].items()}
        return cls(as_of=str(raw["as_of"]), source=str(raw.get("source", "")), models=models)

    @property
    def prices(self) -> dict[str, ModelPrice]:
        return {model: spec.price for model, spec in self.models.items()}

    def base_model(self, model: str) -> str | None:
        if model in self.models:
            return model
        base = _SNAPSHOT_SUFFIX.sub("", model)
        return base if base in self.models else None

    def spec(self, model: str) -> ModelSpec:
        base = self.base_model(model)
        if base is None:
            raise UnknownModelPrice(f"no entry for model {model!r} in the model table")
        return self.models[base]

    def price(self, model: str) -> ModelPrice:
        return self.spec(model).price

    def price_for(self, reported: str | None, configured: str) -> ModelPrice:
        """By the model upstream reports; by the configured name when that one is unknown
        (a stand-in server may report anything): a request is never priced at $0."""
        if reported is not None and self.base_model(reported) is not None:
            return self.price(reported)
        return self.price(configured)

    def taking_images(self, models: tuple[str, ...]) -> tuple[str, ...]:
        """The models of a chain that take images; the first (the one named) must."""
        if self.image_token_bound(models[0], "auto") is None:
            raise InvalidParameter("messages", f"model {models[0]!r} does not take image input")
        return tuple(m for m in models if self.image_token_bound(m, "auto") is not None)

    def require(self, models: list[str] | tuple[str, ...]) -> None:
        missing = [model for model in models if self.base_model(model) is None]
        if missing:
            raise UnknownModelPrice(f"no price for configured model(s): {', '.join(missing)}")

    def encoding_for(self, model: str) -> str:
        return self.spec(model).encoding

    def is_reasoning(self, model: str) -> bool:
        return self.spec(model).reasoning

    def cap_parameter(self, model: str) -> CapParameter:
        return self.spec(model).cap_parameter

    def image_token_bound(self, model: str, detail: str) -> int | None:
        """The most tokens one image may cost on this model; None: it takes no images."""
        bound = self.spec(model).image_tokens
        return None if bound is None else bound.at(detail)


@cache
def price_table(path: str | None = None) -> PriceTable:
    return PriceTable.load(path)


def micros_to_usd(micros: int) -> float:
    return round(micros / 1_000_000, 6)
