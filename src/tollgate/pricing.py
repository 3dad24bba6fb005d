"""The versioned price table: data with an as-of date, looked up by the reported model name."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

DEFAULT_PRICE_TABLE = Path(__file__).resolve().parent / "data" / "prices.json"

# gpt-4o-mini-2024-07-18 -> gpt-4o-mini, gpt-3.5-turbo-0125 -> gpt-3.5-turbo
_SNAPSHOT_SUFFIX = re.compile(r"-(\d{4}-\d{2}-\d{2}|\d{4})$")


class UnknownModelPrice(LookupError):
    """A model has no entry in the price table: refusing beats billing $0."""


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
class PriceTable:
    as_of: str
    prices: dict[str, ModelPrice]

    @classmethod
    def load(cls, path: Path | str | None = None) -> PriceTable:
        raw = json.loads(Path(path or DEFAULT_PRICE_TABLE).read_text(encoding="utf-8"))
        prices = {}
        for model, entry in raw["models"].items():
            input_price = Decimal(str(entry["input"]))
            cached = entry.get("cached_input")
            prices[model] = ModelPrice(
                input=input_price,
                cached_input=input_price if cached is None else Decimal(str(cached)),
                output=Decimal(str(entry["output"])),
            )
        return cls(as_of=str(raw["as_of"]), prices=prices)

    def base_model(self, model: str) -> str | None:
        if model in self.prices:
            return model
        base = _SNAPSHOT_SUFFIX.sub("", model)
        return base if base in self.prices else None

    def price(self, model: str) -> ModelPrice:
        base = self.base_model(model)
        if base is None:
            raise UnknownModelPrice(f"no price for model {model!r} in the price table")
        return self.prices[base]

    def price_for(self, reported: str | None, configured: str) -> ModelPrice:
        """By the model upstream reports; by the configured name when that one is unknown
        (a stand-in server may report anything): a request is never priced at $0."""
        if reported is not None and self.base_model(reported) is not None:
            return self.price(reported)
        return self.price(configured)

    def require(self, models: list[str] | tuple[str, ...]) -> None:
        missing = [model for model in models if self.base_model(model) is None]
        if missing:
            raise UnknownModelPrice(f"no price for configured model(s): {', '.join(missing)}")


@cache
def price_table(path: str | None = None) -> PriceTable:
    return PriceTable.load(path)


def micros_to_usd(micros: int) -> float:
    return round(micros / 1_000_000, 6)
