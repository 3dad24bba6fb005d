"""Target checks: where the issues' targets stand in one run (reported, never asserted)."""

from __future__ import annotations

import math
from typing import Any

from bench import cache_ttft
from bench.operating_cost import template_memory_mb
from bench.processes import LITELLM_RPS
from bench.report import fmt_ratio


def check_targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Where the issue's targets stand (reported, never asserted)."""
    scenarios = {(s["reply_chunks"], s["concurrency"]): s["targets"] for s in results["overhead"]}
    checks: list[dict[str, Any]] = []
    burst = results.get("budget_burst")
    if burst:
        checks.append(
            {
                "target": "budget overshoot, 50 concurrent streams against ~5 reservations",
                "goal": "0 tokens, no refused request reaches upstream",
                "value": (
                    f"{burst['overshoot_tokens']} tokens, "
                    f"{burst['refused_that_reached_upstream']} reached upstream"
                ),
                "met": burst["overshoot_tokens"] == 0
                and burst["refused_that_reached_upstream"] == 0
                and burst["usage_matches_events"],
            }
        )
    cache = results.get("cache_ttft")
    for store, measured in (cache or {}).get("stores", {}).items():
        checks.append(
            {
                "target": f"response cache: a hit's TTFT p50 vs a miss's, {store} store",
                "goal": "≤ 1/3",
                "value": (
                    f"{measured['hit_ttft_p50_ms']:.1f} ms vs {measured['miss_ttft_p50_ms']:.1f}"
                    f" ms = {measured['hit_to_miss_p50']:.2f}×"
                ),
                "met": measured["hit_to_miss_p50"] <= cache_ttft.TARGET_RATIO,
            }
        )
    rtt = results["dynamodb_round_trip"]["p50_ms"]
    for (chunks, concurrency), targets in sorted(scenarios.items()):
        if concurrency != 1:
            continue
        memory, dynamo, floor = (
            targets["tollgate-memory"],
            targets["tollgate-dynamodb"],
            targets["floor"],
        )
        added = memory["ttft_p50_ms"] - floor["ttft_p50_ms"]
        checks.append(
            {
                "target": f"added TTFT p50 over the floor, memory store, c=1, {chunks} chunks",
                "goal": "≤ 2 ms",
                "value": f"{added:.2f} ms",
                "met": added <= 2.0,
            }
        )
        extra = dynamo["ttft_p50_ms"] - memory["ttft_p50_ms"]
        checks.append(
            {
                "target": f"DynamoDB's extra TTFT p50 over memory, c=1, {chunks} chunks",
                "goal": f"≤ 1 round trip ({rtt:.2f} ms)",
                "value": f"{extra:.2f} ms = {extra / rtt:.1f} round trips",
                "met": extra <= rtt,
            }
        )
        key = "tollgate-dynamodb-continue"
        if key in targets:
            extra = targets[key]["ttft_p50_ms"] - memory["ttft_p50_ms"]
            checks.append(
                {
                    "target": f"same, continuing a conversation, c=1, {chunks} chunks",
                    "goal": f"≤ 1 round trip ({rtt:.2f} ms)",
                    "value": f"{extra:.2f} ms = {extra / rtt:.1f} round trips",
                    "met": extra <= rtt,
                }
            )
    for (chunks, concurrency), targets in sorted(scenarios.items()):
        for name in ("tollgate-memory", "tollgate-dynamodb"):
            cpu = targets[name]["vs_floor"]["cpu_ms_per_request"]
            checks.append(
                {
                    "target": f"CPU per request vs floor, {name}, c={concurrency}, {chunks} chunks",
                    "goal": "≤ 2×",
                    "value": fmt_ratio(cpu),
                    "met": cpu <= 2.0,
                }
            )
    for (chunks, concurrency), targets in sorted(scenarios.items()):
        if concurrency != 16:
            continue
        for name in ("tollgate-memory", "tollgate-dynamodb"):
            rps = targets[name]["requests_per_s"]
            checks.append(
                {
                    "target": f"requests/s at c=16, {name}, {chunks} chunks",
                    "goal": f"≥ {3 * LITELLM_RPS:.0f} (3 × LiteLLM's {LITELLM_RPS:.0f})",
                    "value": f"{rps:.1f} (direct: {targets['direct']['requests_per_s']:.1f})",
                    "met": rps >= 3 * LITELLM_RPS,
                }
            )
    for name in ("tollgate-memory", "tollgate-dynamodb"):
        cells = [s for s in results["overhead"] if name in s["targets"]]
        resident = max(s["targets"][name].get("rss_mb_after_cell", math.nan) for s in cells)
        peak = max(s["targets"][name]["peak_rss_mb_so_far"] for s in cells)
        checks.append(
            {
                "target": f"resident memory with the encoding loaded, {name}, most after any cell",
                "goal": "≤ 150 MB",
                "value": f"{resident:.0f} MB",
                "met": resident <= 150,
            }
        )
        checks.append(
            {
                "target": f"peak RSS (Lambda's Max Memory Used), {name}, whole run",
                "goal": "≤ 150 MB",
                "value": f"{peak:.0f} MB",
                "met": peak <= 150,
            }
        )
    checks += round_trip_checks(results.get("round_trips"))
    checks += lambda_checks(results.get("lambda_cpu"))
    cold = results.get("cold_start")
    if cold:
        for name in ("tollgate-memory", "tollgate-dynamodb"):
            value = cold["median"][name]["vs_floor"]
            checks.append(
                {
                    "target": f"cold start to first token vs floor, {name}",
                    "goal": "≤ 1.3×",
                    "value": fmt_ratio(value),
                    "met": value <= 1.3,
                }
            )
    return checks


def round_trip_checks(trips: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not trips:
        return []
    return [
        {
            "target": f"sequential DynamoDB round trips before the upstream call, {p['path']}",
            "goal": "1",
            "value": f"{p['depth_p50']:g} (max {p['depth_max']})",
            "met": p["depth_max"] <= 1,
        }
        for p in trips["paths"]
    ]


def lambda_checks(lam: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Per memory size: the overhead targets under its CPU share; then the smallest size
    that keeps them all, against the template's default."""
    if not lam or lam["status"] != "measured":
        return []
    checks = []
    keeps: list[int] = []
    for size in lam["sizes"]:
        warm, mb, cold = size["warm"], size["memory_mb"], size["cold_first_token_ms"]
        added = warm["tollgate-memory"]["ttft_added_p50_ms_over_floor"]
        cpu = warm["tollgate-dynamodb"]["cpu_vs_floor"]
        cold_ratio = cold["tollgate-dynamodb"] / cold["floor"]
        size_checks = [
            {
                "target": f"added TTFT p50 over the floor, memory store, c=1, at {mb} MB CPU",
                "goal": "≤ 2 ms",
                "value": f"{added:.2f} ms",
                "met": added <= 2.0,
            },
            {
                "target": f"CPU per request vs floor, tollgate-dynamodb, c=1, at {mb} MB CPU",
                "goal": "≤ 2×",
                "value": fmt_ratio(cpu),
                "met": cpu <= 2.0,
            },
            {
                "target": f"cold start to first token vs floor, tollgate-dynamodb, at {mb} MB CPU",
                "goal": "≤ 1.3×",
                "value": f"{fmt_ratio(cold_ratio)} ({cold['tollgate-dynamodb'] / 1000:.1f} s)",
                "met": cold_ratio <= 1.3,
            },
        ]
        checks += size_checks
        if all(check["met"] for check in size_checks):
            keeps.append(mb)
    default_mb = template_memory_mb()
    smallest = min(keeps) if keeps else None
    checks.append(
        {
            "target": "template's ChatMemorySize default = the smallest measured size keeping "
            "the overhead targets",
            "goal": f"{smallest} MB" if smallest else "a size that keeps them",
            "value": f"{default_mb} MB",
            "met": smallest == default_mb,
        }
    )
    return checks
