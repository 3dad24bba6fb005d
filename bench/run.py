"""`make bench`: Tollgate's overhead, cold start and cost, side by side with their floors.

    python -m bench.run [--rounds 3] [--duration 2.5] [--quick] [--out docs]

Everything runs on this machine from the repo alone, each server a subprocess of its own
started with src/run.sh's uvicorn flags:

  direct             the offline model server itself (fixed first-token delay and cadence)
  floor              bench/floor_proxy.py: a raw ASGI pass-through proxy (httpx2, streaming)
  tollgate-memory    the gateway, STORE_BACKEND=memory (no DynamoDB round trips)
  tollgate-dynamodb  the gateway on the moto server (the full path)
  *-continue         the gateway continuing conversations (lease + history load per turn)

The load generator (bench/loadgen.py) is a process of its own. Targets are interleaved
round-robin within each scenario (reply length × concurrency), so a noisy neighbour
hits them alike and every ratio compares numbers from the same run. Then: DynamoDB round
trips per request path behind a latency-injecting proxy (bench/round_trips.py), the
gateway under Lambda's CPU share (bench/lambda_cpu.py), a DynamoDB call's CPU through
botocore and through the gateway's client (bench/dynamodb_cpu.py), budget burst, cold start, and
Tollgate's own cost per 1,000 chats (bench/operating_cost.py). Results go to
docs/bench.json and docs/BENCHMARKS.md, regenerated on every run.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench import budget_burst, cache_ttft, dynamodb_cpu, tokenizer_memory
from bench.cold_start import artifact_size, cold_start
from bench.global_admission import global_admission
from bench.lambda_cpu import lambda_shaped
from bench.operating_cost import log_bytes_per_request, operating_cost, template_memory_mb
from bench.overhead import Target, dynamodb_round_trip_ms, overhead, run_cell
from bench.processes import (
    BENCH_DIR,
    JWT_SECRET,
    MODEL,
    PYTHON,
    REPO,
    UVICORN_FLAGS,
    LoadGenerator,
    Server,
    Servers,
    base_env,
    configure_offline,
    count_cost_records,
    create_bench_tables,
    gateway_env,
    log_directory,
    uvicorn_args,
)
from bench.report import machine_info, write_outputs
from bench.round_trips import round_trips
from bench.targets import check_targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=float, default=2.5, help="seconds per target per round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--replies", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--first-token-delay-ms", type=float, default=50.0)
    parser.add_argument("--chunk-interval-ms", type=float, default=1.0)
    parser.add_argument("--continue-turns", type=int, default=8)
    parser.add_argument("--cold-repetitions", type=int, default=5)
    parser.add_argument("--skip-cold", action="store_true")
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--round-trip-delay-ms", type=float, default=50.0)
    parser.add_argument("--round-trip-samples", type=int, default=10)
    parser.add_argument("--lambda-sizes", type=int, nargs="+", default=[256, 512, 1024])
    parser.add_argument(
        "--lambda-rounds",
        type=int,
        default=6,
        help="rounds per size: its TTFT decides the right size, so more samples than a cell",
    )
    parser.add_argument("--skip-lambda", action="store_true")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="1 round of 1 s, 2 cold starts, 3 round-trip samples: a smoke run",
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs")
    parser.add_argument("--logs", type=Path, help="keep the servers' logs here")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.duration, args.cold_repetitions = 1, 1.0, 2
        args.lambda_rounds = 1
        args.round_trip_samples = 3

    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": machine_info(),
        "parameters": {
            "rounds": args.rounds,
            "duration_s": args.duration,
            "concurrency": args.concurrency,
            "reply_chunks": args.replies,
            "first_token_delay_ms": args.first_token_delay_ms,
            "chunk_interval_ms": args.chunk_interval_ms,
            "continue_turns": args.continue_turns,
            "uvicorn_flags": UVICORN_FLAGS,
            "round_trip_delay_ms": args.round_trip_delay_ms,
            "round_trip_samples": args.round_trip_samples,
            "lambda_sizes_mb": args.lambda_sizes,
            "lambda_rounds": args.lambda_rounds,
        },
    }
    first_token_delay_s = args.first_token_delay_ms / 1000
    with log_directory(args.logs) as log_dir:
        servers = Servers(log_dir)
        loadgen: LoadGenerator | None = None
        try:
            offline = servers.start(
                "offline-model",
                uvicorn_args("tollgate.local.offline_model:create_app"),
                base_env(),
            )
            moto = servers.start(
                "moto",
                [PYTHON, "-m", "tollgate.local.moto_server", "--port", "{port}"],
                base_env(),
                health="/moto-api/",
            )
            create_bench_tables(moto.url)
            floor = servers.start(
                "floor",
                uvicorn_args("floor_proxy:create_app", app_dir=BENCH_DIR),
                {**base_env(), "FLOOR_UPSTREAM_URL": offline.url},
            )
            gateways = {}
            for store in ("memory", "dynamodb"):
                gateways[store] = servers.start(
                    f"tollgate-{store}",
                    uvicorn_args("tollgate.app:create_app"),
                    gateway_env(offline, moto.url, store),
                )
            results["dynamodb_round_trip"] = dynamodb_round_trip_ms(moto.url)
            completions = "/v1/chat/completions"
            targets = [
                Target("direct", offline, completions, "openai"),
                Target("floor", floor, completions, "openai"),
                Target("tollgate-memory", gateways["memory"], "/chat", "tollgate"),
                Target("tollgate-dynamodb", gateways["dynamodb"], "/chat", "tollgate"),
                Target(
                    "tollgate-memory-continue",
                    gateways["memory"],
                    "/chat",
                    "tollgate",
                    args.continue_turns,
                ),
                Target(
                    "tollgate-dynamodb-continue",
                    gateways["dynamodb"],
                    "/chat",
                    "tollgate",
                    args.continue_turns,
                ),
            ]
            loadgen = LoadGenerator(log_dir)
            # Warm up every server (encodings, pools, botocore models) outside the numbers.
            configure_offline(
                offline,
                first_token_delay_s=first_token_delay_s,
                chunk_interval_s=args.chunk_interval_ms / 1000,
                reply_tokens=min(args.replies),
            )
            for target in targets[:4]:
                run_cell(
                    loadgen,
                    target,
                    reply_tokens=min(args.replies),
                    concurrency=8,
                    duration_s=1.0,
                    tag=f"warm-{target.name}",
                )
            results["overhead"] = overhead(
                loadgen,
                targets,
                offline,
                replies=args.replies,
                concurrencies=args.concurrency,
                rounds=args.rounds,
                duration_s=args.duration,
                first_token_delay_s=first_token_delay_s,
                chunk_interval_s=args.chunk_interval_ms / 1000,
                continue_for_replies=[min(args.replies)],
            )
            results["cost_records_written"] = {
                store: count_cost_records(log_dir / f"tollgate-{store}.log") for store in gateways
            }
            for name in ("floor", "tollgate-memory", "tollgate-dynamodb"):
                servers.stop(name)
            if not args.skip_lambda:
                results["lambda_cpu"] = lambda_shaped(
                    servers,
                    loadgen,
                    offline,
                    moto.url,
                    log_dir,
                    sizes=args.lambda_sizes,
                    rounds=args.lambda_rounds,
                    duration_s=args.duration,
                    cold_repetitions=args.cold_repetitions,
                    first_token_delay_s=first_token_delay_s,
                    chunk_interval_s=args.chunk_interval_ms / 1000,
                )
            configure_offline(
                offline,
                first_token_delay_s=first_token_delay_s,
                chunk_interval_s=args.chunk_interval_ms / 1000,
                reply_tokens=min(args.replies),
            )
            results["dynamodb_cpu"] = {"per_call_ms": dynamodb_cpu.per_call(moto.url)}
            loadgen.close()
            loadgen = None
            results["round_trips"] = round_trips(
                servers,
                offline,
                moto,
                samples=args.round_trip_samples,
                delay_ms=args.round_trip_delay_ms,
            )
            results["operating_cost"] = tollgate_cost(results, log_dir)
            results["budget_burst"] = budget_burst_scenario(servers, offline, moto.url)
            results["global_admission"] = global_admission(moto.url)
            results["cache_ttft"] = cache_ttft.scenario(
                servers, offline, moto.url, first_token_delay_s
            )
            if not args.skip_cold:
                results["cold_start"] = cold_start(
                    offline,
                    moto.url,
                    log_dir,
                    repetitions=args.cold_repetitions,
                    first_token_delay_s=first_token_delay_s,
                )
        finally:
            if loadgen is not None:
                loadgen.close()
            servers.stop_all()
    results["artifact"] = artifact_size()
    results["encoding_load"] = tokenizer_memory.compare()
    if not args.skip_cost:
        from bench.cost_simulation import render, simulate

        simulated = simulate()
        results["cost"] = {**simulated, "rendered": render(simulated)}
    results["targets"] = check_targets(results) + results.get("cost", {}).get("targets", [])
    results["duration_s"] = time.monotonic() - started
    write_outputs(results, args.out)
    return 0


def budget_burst_scenario(servers: Servers, offline: Server, moto_url: str) -> dict[str, Any]:
    limit = budget_burst.token_limit(MODEL)
    configure_offline(
        offline,
        first_token_delay_s=budget_burst.FIRST_TOKEN_DELAY_S,
        chunk_interval_s=0.001,
        reply_tokens=budget_burst.REPLY_TOKENS,
    )
    env = gateway_env(offline, moto_url, "dynamodb")
    env.update(DAILY_TOKEN_LIMIT=str(limit), MAX_OUTPUT_TOKENS=str(budget_burst.OUTPUT_CAP))
    gateway = servers.start("tollgate-burst", uvicorn_args("tollgate.app:create_app"), env)
    try:
        return budget_burst.run(gateway.url, offline.url, JWT_SECRET, limit)
    finally:
        servers.stop("tollgate-burst")


def tollgate_cost(results: dict[str, Any], log_dir: Path) -> dict[str, Any]:
    """Cost per 1,000 chats from this run: a continued turn's DynamoDB calls, the DynamoDB
    gateway's log bytes per request, and the time it adds to the longest reply at c=1."""
    continued = next(p for p in results["round_trips"]["paths"] if p["path"].startswith("cont"))
    longest = max(
        (s for s in results["overhead"] if s["concurrency"] == 1),
        key=lambda s: s["reply_chunks"],
    )["targets"]
    added_ms = longest["tollgate-dynamodb"]["total_p50_ms"] - longest["direct"]["total_p50_ms"]
    template_mb = template_memory_mb()
    return {
        **operating_cost(
            calls_per_chat=continued["call_samples"],
            log_bytes=log_bytes_per_request(log_dir / "tollgate-dynamodb.log"),
            gateway_added_s=max(0.0, added_ms / 1000),
            memory_sizes_mb=sorted({*results["parameters"]["lambda_sizes_mb"], template_mb}),
        ),
        "template_memory_mb": template_mb,
    }


if __name__ == "__main__":
    sys.exit(main())
