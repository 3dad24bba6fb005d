"""Tollgate's own cost per 1,000 chats beside the token cost of the same chats.

Measured: the DynamoDB calls of one chat (from the latency proxy's log), the bytes of one
request's log lines (cost record + EMF, from the gateway's stdout) and the time the
gateway adds to a stream. Assumed, and said so in the report: a typical chat's tokens and
how long its reply streams. Prices are us-east-1, arm64 (the template's architecture).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from bench.processes import REPO
from tollgate.pricing import PriceTable, UnknownModelPrice

PRICES_AS_OF = "2026"
PRICE_SOURCES = "aws.amazon.com/lambda/pricing, /dynamodb/pricing/on-demand, /cloudwatch/pricing"
LAMBDA_USD_PER_GB_S = 0.0000133334  # arm64, first 7.5 billion GB-s a month
LAMBDA_USD_PER_REQUEST = 0.20 / 1_000_000
DYNAMODB_USD_PER_WRITE_UNIT = 0.625 / 1_000_000  # on-demand, since November 2024
DYNAMODB_USD_PER_READ_UNIT = 0.125 / 1_000_000
LOGS_USD_PER_GB_INGESTED = 0.50  # standard log class
# Lambda's own START / END / REPORT lines per invocation (not written by the gateway).
LAMBDA_PLATFORM_LOG_BYTES = 300

# A typical chat, the same one for every model family: a turn with some history.
TYPICAL_INPUT_TOKENS = 1_500
TYPICAL_OUTPUT_TOKENS = 500
# How long its reply streams from OpenAI (first token plus ~50 tokens/s): Lambda bills it all.
TYPICAL_STREAM_S = 10.0
MODEL_FAMILIES = ("gpt-4o-mini", "gpt-4.1-mini", "gpt-5-mini", "gpt-5-nano")

WRITES = {"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"}
READS = {"GetItem", "Query", "Scan", "BatchGetItem"}


def request_units(call: dict[str, Any]) -> tuple[float, float]:
    """(write units, read units) of one call, from its payload sizes.

    The item's size is taken as the request's payload for writes and the response's for
    reads (the wire carries no item size): 1 write unit per KB, 1 read unit per 4 KB
    strongly consistent or half that eventually consistent; transactions cost double per
    item.
    """
    operation = call["operation"]
    if operation == "TransactWriteItems":
        items = max(1, call["transact_items"])
        per_item_kb = call["request_bytes"] / items / 1024
        return 2 * items * max(1, math.ceil(per_item_kb)), 0.0
    if operation in WRITES:
        return float(max(1, math.ceil(call["request_bytes"] / 1024))), 0.0
    if operation in READS:
        units = max(1, math.ceil(call["response_bytes"] / 4096))
        return 0.0, float(units if call["consistent_read"] else units / 2)
    return 0.0, 0.0


def log_bytes_per_request(log: Path) -> dict[str, float]:
    """Bytes of cost-record and EMF lines in a gateway's stdout, per cost record."""
    records = cost_bytes = emf_bytes = 0
    with log.open("rb") as lines:
        for line in lines:
            if b'"message":"cost_record"' in line:
                records += 1
                cost_bytes += len(line)
            elif b'"_aws"' in line:
                emf_bytes += len(line)
    if records == 0:
        return {"requests": 0, "cost_record_bytes": math.nan, "emf_bytes": math.nan}
    return {
        "requests": records,
        "cost_record_bytes": cost_bytes / records,
        "emf_bytes": emf_bytes / records,
    }


def token_cost_per_1000(prices: PriceTable) -> dict[str, float | None]:
    """USD per 1,000 typical chats per model family; None when the table lacks the model."""
    costs: dict[str, float | None] = {}
    for model in MODEL_FAMILIES:
        try:
            price = prices.price(model)
        except UnknownModelPrice:
            costs[model] = None
            continue
        micros = price.cost_micros(TYPICAL_INPUT_TOKENS, 0, TYPICAL_OUTPUT_TOKENS)
        costs[model] = micros * 1000 / 1_000_000
    return costs


def operating_cost(
    *,
    calls_per_chat: list[dict[str, Any]],
    log_bytes: dict[str, float],
    gateway_added_s: float,
    memory_sizes_mb: list[int],
    prices: PriceTable | None = None,
) -> dict[str, Any]:
    """Cost per 1,000 chats of Lambda, DynamoDB and CloudWatch Logs, and of the tokens."""
    write_units = sum(request_units(call)[0] for call in calls_per_chat)
    read_units = sum(request_units(call)[1] for call in calls_per_chat)
    dynamodb_usd = 1000 * (
        write_units * DYNAMODB_USD_PER_WRITE_UNIT + read_units * DYNAMODB_USD_PER_READ_UNIT
    )
    bytes_per_chat = (
        log_bytes["cost_record_bytes"] + log_bytes["emf_bytes"] + LAMBDA_PLATFORM_LOG_BYTES
    )
    logs_usd = 1000 * bytes_per_chat / 1e9 * LOGS_USD_PER_GB_INGESTED
    duration_s = TYPICAL_STREAM_S + gateway_added_s
    by_size = {}
    for memory_mb in memory_sizes_mb:
        gb_s = memory_mb / 1024 * duration_s
        lambda_usd = 1000 * (gb_s * LAMBDA_USD_PER_GB_S + LAMBDA_USD_PER_REQUEST)
        by_size[str(memory_mb)] = {
            "gb_seconds_per_chat": gb_s,
            "lambda_usd": lambda_usd,
            "total_usd": lambda_usd + dynamodb_usd + logs_usd,
        }
    return {
        "assumptions": {
            "input_tokens": TYPICAL_INPUT_TOKENS,
            "output_tokens": TYPICAL_OUTPUT_TOKENS,
            "stream_s": TYPICAL_STREAM_S,
            "lambda_platform_log_bytes": LAMBDA_PLATFORM_LOG_BYTES,
            "prices_as_of": PRICES_AS_OF,
            "price_sources": PRICE_SOURCES,
        },
        "duration_s": duration_s,
        "gateway_added_s": gateway_added_s,
        "dynamodb": {
            "calls_per_chat": len(calls_per_chat),
            "write_units_per_chat": write_units,
            "read_units_per_chat": read_units,
            "usd": dynamodb_usd,
        },
        "logs": {"bytes_per_chat": bytes_per_chat, **log_bytes, "usd": logs_usd},
        "by_memory_mb": by_size,
        "token_usd": token_cost_per_1000(prices or PriceTable.load()),
    }


def template_memory_mb(template: Path = REPO / "template.yaml") -> int:
    """The chat function's MemorySize in the SAM template (its ChatMemorySize default)."""
    text = template.read_text(encoding="utf-8")
    match = re.search(r"ChatMemorySize:.*?Default: (\d+)", text, re.DOTALL)
    if match is None:
        raise ValueError(f"no ChatMemorySize default in {template}")
    return int(match.group(1))
