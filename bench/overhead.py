"""The overhead scenarios: every target under the same load, interleaved round-robin."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from bench.processes import (
    JWT_SECRET,
    MESSAGE,
    MODEL,
    TABLES,
    LoadGenerator,
    Server,
    configure_offline,
    dynamodb_client,
    rss_now_mb,
    rss_peak_mb,
)
from bench.report import render_scenario
from bench.stats import Cell, add_ratios, percentile


@dataclass
class Target:
    name: str
    server: Server
    path: str
    mode: str  # how the load generator reads the stream: "openai" or "tollgate"
    continue_turns: int = 0

    def body(self, reply_tokens: int) -> dict[str, Any]:
        if self.mode == "tollgate":
            return {"message": MESSAGE, "prompt": "default", "max_tokens": reply_tokens + 10}
        return {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "You are a helpful, concise assistant."},
                {"role": "user", "content": MESSAGE},
            ],
            "max_completion_tokens": reply_tokens + 10,
            "stream": True,
            "stream_options": {"include_usage": True},
        }


def run_cell(
    loadgen: LoadGenerator,
    target: Target,
    *,
    reply_tokens: int,
    concurrency: int,
    duration_s: float,
    tag: str,
) -> dict[str, Any]:
    return loadgen.run(
        {
            "port": target.server.port,
            "path": target.path,
            "mode": target.mode,
            "body": target.body(reply_tokens),
            "concurrency": concurrency,
            "duration_s": duration_s,
            "pids": [target.server.pid],
            "jwt_secret": JWT_SECRET if target.mode == "tollgate" else None,
            "user_prefix": f"bench-{tag}",
            "continue_turns": target.continue_turns,
        }
    )


def overhead(
    loadgen: LoadGenerator,
    targets: list[Target],
    offline: Server,
    *,
    replies: Sequence[int],
    concurrencies: Sequence[int],
    rounds: int,
    duration_s: float,
    first_token_delay_s: float,
    chunk_interval_s: float,
    continue_for_replies: Sequence[int],
) -> list[dict[str, Any]]:
    scenarios = []
    for reply_tokens in replies:
        configure_offline(
            offline,
            first_token_delay_s=first_token_delay_s,
            chunk_interval_s=chunk_interval_s,
            reply_tokens=reply_tokens,
        )
        for concurrency in concurrencies:
            in_play = [
                t for t in targets if not t.continue_turns or reply_tokens in continue_for_replies
            ]
            cells = {t.name: Cell() for t in in_play}
            for round_number in range(rounds):
                # Rotate the order each round so no target always runs first or last.
                shift = round_number % len(in_play)
                for target in in_play[shift:] + in_play[:shift]:
                    tag = f"{reply_tokens}-{concurrency}-{round_number}-{target.name}"
                    result = run_cell(
                        loadgen,
                        target,
                        reply_tokens=reply_tokens,
                        concurrency=concurrency,
                        duration_s=duration_s,
                        tag=tag,
                    )
                    cells[target.name].add(result, target.server.pid)
            summaries = {name: cell.summary() for name, cell in cells.items()}
            for target in in_play:
                summaries[target.name]["peak_rss_mb_so_far"] = rss_peak_mb(target.server.pid)
                summaries[target.name]["rss_mb_after_cell"] = rss_now_mb(target.server.pid)
            scenario = {
                "reply_chunks": reply_tokens,
                "concurrency": concurrency,
                "targets": summaries,
            }
            add_ratios(scenario)
            scenarios.append(scenario)
            print(render_scenario(scenario), flush=True)
    return scenarios


def dynamodb_round_trip_ms(moto_url: str, samples: int = 60) -> dict[str, float]:
    """p50/p99 of one conditional UpdateItem on moto, like a budget reservation."""
    client = dynamodb_client(moto_url)
    timings = []
    for number in range(samples):
        started = time.perf_counter()
        client.update_item(
            TableName=TABLES["UsageTable"],
            Key={"pk": {"S": "USER#rtt"}, "sk": {"S": "DAY#2000-01-01"}},
            UpdateExpression="ADD #t :one SET #r = :one",
            ConditionExpression="attribute_not_exists(#t) OR #t <= :max",
            ExpressionAttributeNames={"#t": "tokens", "#r": f"rt_{number}"},
            ExpressionAttributeValues={":one": {"N": "1"}, ":max": {"N": "1000000"}},
            ReturnValues="ALL_NEW",
        )
        timings.append((time.perf_counter() - started) * 1000)
    timings = timings[10:]  # the first calls load botocore's models
    return {"p50_ms": percentile(timings, 0.5), "p99_ms": percentile(timings, 0.99)}
