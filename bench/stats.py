"""Statistics: percentiles, per-target sums over rounds, ratios to the floor, round-trip depth."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))]


def ratio(value: float, floor: float) -> float:
    if not floor or math.isnan(floor) or math.isnan(value):
        return math.nan
    return value / floor


@dataclass
class Cell:
    """One target in one scenario, summed over the rounds."""

    ttft_ms: list[float] = field(default_factory=list)
    total_ms: list[float] = field(default_factory=list)
    deltas: list[int] = field(default_factory=list)
    completed: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0
    cpu_s: float = 0.0
    rounds_rps: list[float] = field(default_factory=list)

    def add(self, result: dict[str, Any], pid: int) -> None:
        self.ttft_ms += result["ttft_ms"]
        self.total_ms += result["total_ms"]
        self.deltas += result["deltas"]
        self.completed += result["completed"]
        self.errors += result["errors"]
        self.error_samples += result["error_samples"][: 3 - len(self.error_samples)]
        self.elapsed_s += result["elapsed_s"]
        self.cpu_s += result["cpu_s"][str(pid)]
        self.rounds_rps.append(result["completed"] / result["elapsed_s"])

    def summary(self) -> dict[str, Any]:
        done = max(1, self.completed)
        return {
            "requests": self.completed,
            "errors": self.errors,
            "error_samples": self.error_samples,
            "ttft_p50_ms": percentile(self.ttft_ms, 0.50),
            "ttft_p99_ms": percentile(self.ttft_ms, 0.99),
            "total_p50_ms": percentile(self.total_ms, 0.50),
            "total_p99_ms": percentile(self.total_ms, 0.99),
            "requests_per_s": self.completed / self.elapsed_s if self.elapsed_s else math.nan,
            "requests_per_s_by_round": self.rounds_rps,
            "cpu_ms_per_request": self.cpu_s * 1000 / done,
            "deltas_per_request": statistics.mean(self.deltas) if self.deltas else 0,
        }


def add_ratios(scenario: dict[str, Any]) -> None:
    targets = scenario["targets"]
    direct, floor = targets["direct"], targets["floor"]
    for summary in targets.values():
        summary["ttft_added_p50_ms"] = summary["ttft_p50_ms"] - direct["ttft_p50_ms"]
        summary["ttft_added_p99_ms"] = summary["ttft_p99_ms"] - direct["ttft_p99_ms"]
    for summary in targets.values():
        summary["vs_floor"] = {
            "ttft_added_p50_ms_over_floor": summary["ttft_p50_ms"] - floor["ttft_p50_ms"],
            "ttft_added_p99_ms_over_floor": summary["ttft_p99_ms"] - floor["ttft_p99_ms"],
            "ttft_added_p50": ratio(summary["ttft_added_p50_ms"], floor["ttft_added_p50_ms"]),
            "ttft_added_p99": ratio(summary["ttft_added_p99_ms"], floor["ttft_added_p99_ms"]),
            "total_p50": ratio(summary["total_p50_ms"], floor["total_p50_ms"]),
            "requests_per_s": ratio(summary["requests_per_s"], floor["requests_per_s"]),
            "cpu_ms_per_request": ratio(summary["cpu_ms_per_request"], floor["cpu_ms_per_request"]),
            "peak_rss_mb": ratio(summary["peak_rss_mb_so_far"], floor["peak_rss_mb_so_far"]),
        }


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = [key for key, value in runs[0].items() if isinstance(value, int | float)]
    merged: dict[str, Any] = {key: statistics.median(run[key] for run in runs) for key in keys}
    merged.update({key: value for key, value in runs[0].items() if key not in keys})
    return merged


@dataclass(frozen=True)
class Call:
    """One call seen by the latency proxy, wall-clock seconds."""

    started_at: float
    ended_at: float


def round_trip_depth(calls: Sequence[Call], sent_at: float, upstream_at: float) -> int:
    """How many calls lie one after another on the way from `sent_at` to `upstream_at`.

    Only calls that started after the request was sent and ended before the upstream
    request arrived can delay it; of those, the longest chain in which each call starts
    after the previous one ended is the number of sequential round trips (calls that
    overlap ran concurrently and count once).
    """
    before = sorted(
        (c for c in calls if c.started_at >= sent_at and c.ended_at <= upstream_at),
        key=lambda c: c.ended_at,
    )
    depth: list[int] = []
    for index, call in enumerate(before):
        previous = [depth[i] for i in range(index) if before[i].ended_at <= call.started_at]
        depth.append(1 + max(previous, default=0))
    return max(depth, default=0)
