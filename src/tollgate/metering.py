"""What an upstream call costs: upstream's usage when it reported it, else counted."""

from __future__ import annotations

from tollgate.counting import Counts, PromptCounter
from tollgate.observability import CostRecord
from tollgate.ports import Amount, Message, UpstreamStream
from tollgate.pricing import PriceTable


class Meter:
    def __init__(self, counter: PromptCounter, prices: PriceTable) -> None:
        self.counter = counter
        self.prices = prices

    async def charge(
        self,
        record: CostRecord,
        stream: UpstreamStream,
        *,
        reply: str,
        prompt_tokens: int | None,
        messages: list[Message],
        cap: int,
        beside_messages: int = 0,
    ) -> Amount:
        """Fill the record's usage and cost; the amount charged to the budget.

        Cut short before upstream reported usage, the call is priced by counting its
        prompt (`prompt_tokens` when known exactly) and the text it produced; a reasoning
        model's hidden tokens cannot be counted, so its output is charged at the full cap.
        """
        model = stream.model
        record.upstream_model = stream.upstream_model
        usage = stream.usage
        if usage is not None:
            record.usage_source = "upstream"
            record.input_tokens = usage.input_tokens
            record.cached_input_tokens = usage.cached_input_tokens
            record.output_tokens = usage.output_tokens
            record.reasoning_tokens = usage.reasoning_tokens
        else:
            await self.counter.loaded()  # counting below must not block the event loop
            tokens = self.counter.tokens
            record.usage_source = "estimated"
            record.input_tokens = prompt_tokens or (
                Counts(True, tokens).messages([model], messages) + beside_messages
            )
            if self.prices.is_reasoning(model):
                record.output_tokens = cap
            else:
                record.output_tokens = tokens.count_text(model, reply) if reply else 0
        price = self.prices.price_for(record.upstream_model, model)
        record.cost_micros = price.cost_micros(
            record.input_tokens, record.cached_input_tokens, record.output_tokens
        )
        return Amount(record.input_tokens + record.output_tokens, record.cost_micros)
