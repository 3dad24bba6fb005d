"""Response cache: a hit's time to first token next to a miss's, in the same run.

The gateway runs with `CACHE_TTL_S` on, once on DynamoDB (the moto server: the full path)
and once with STORE_BACKEND=memory (the gateway's own cost); the offline model server
answers after its usual first-token delay. Each sample asks a question nobody asked before
(a miss: the lookup runs alongside the budget hold, then upstream answers) and then the
same question again (a hit: no upstream call), one request at a time, so the two are
measured side by side on the same machine state. TTFT is measured by the client, from
sending the request to the first `delta` event.

Part of `make bench`; on its own: `python -m bench.cache_ttft [--first-token-delay-ms 50]`.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import httpx
import jwt

from bench.processes import (
    JWT_SECRET,
    PYTHON,
    Server,
    Servers,
    base_env,
    configure_offline,
    create_bench_tables,
    gateway_env,
    log_directory,
    uvicorn_args,
)
from bench.stats import percentile

SAMPLES = 30
# The target: a hit's time to first token at most a third of a miss's.
TARGET_RATIO = 1 / 3


def _token(secret: str) -> str:
    return jwt.encode({"sub": "cache-bench", "exp": int(time.time()) + 600}, secret, "HS256")


def _ask(client: httpx.Client, message: str) -> tuple[float, bool]:
    """(ms to the first delta, whether meta said cached)."""
    started = time.perf_counter()
    cached = False
    with client.stream("POST", "/chat", json={"message": message}) as response:
        response.raise_for_status()
        lines = response.iter_lines()
        for line in lines:
            if line.startswith("data: {") and '"conversation_id"' in line:
                cached = json.loads(line[len("data: ") :]).get("cached") is True
            if line.startswith('data: {"delta"'):
                ttft_ms = (time.perf_counter() - started) * 1000
                for _ in lines:  # read to [DONE]: the next request starts after this one
                    pass
                return ttft_ms, cached
    raise RuntimeError(f"no delta in the reply to {message!r}")


def run(gateway_url: str, secret: str, samples: int = SAMPLES) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {_token(secret)}"}
    misses: list[float] = []
    hits: list[float] = []
    with httpx.Client(base_url=gateway_url, headers=headers, timeout=30) as client:
        _ask(client, "Warm-up question for the cache bench")
        for index in range(samples):
            message = f"Question {index} of the cache bench {time.time_ns()}: what is a river?"
            miss_ms, miss_cached = _ask(client, message)
            hit_ms, hit_cached = _ask(client, message)
            if miss_cached or not hit_cached:
                raise RuntimeError("the cache bench expected a miss then a hit")
            misses.append(miss_ms)
            hits.append(hit_ms)
    miss_p50, hit_p50 = percentile(misses, 0.5), percentile(hits, 0.5)
    return {
        "samples": samples,
        "miss_ttft_p50_ms": miss_p50,
        "miss_ttft_p90_ms": percentile(misses, 0.9),
        "hit_ttft_p50_ms": hit_p50,
        "hit_ttft_p90_ms": percentile(hits, 0.9),
        "hit_to_miss_p50": hit_p50 / miss_p50,
    }


def render(result: dict[str, Any]) -> str:
    rows = [
        f"| {store} | {r['miss_ttft_p50_ms']:.1f} | {r['miss_ttft_p90_ms']:.1f} "
        f"| {r['hit_ttft_p50_ms']:.1f} | {r['hit_ttft_p90_ms']:.1f} | {r['hit_to_miss_p50']:.2f}× |"
        for store, r in result["stores"].items()
    ]
    return "\n".join(
        [
            f"{SAMPLES} first questions, each asked twice in a row; model's first-token delay "
            f"{result['first_token_delay_ms']:.0f} ms; TTFT measured by the client.",
            "",
            "| store | miss p50 (ms) | miss p90 | hit p50 (ms) | hit p90 | hit ÷ miss (p50) |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )


def scenario(
    servers: Servers, offline: Server, moto_url: str, first_token_delay_s: float
) -> dict[str, Any]:
    """Per store: start a gateway with the cache on, measure, stop it."""
    configure_offline(
        offline, first_token_delay_s=first_token_delay_s, chunk_interval_s=0.001, reply_tokens=50
    )
    stores = {}
    for store in ("dynamodb", "memory"):
        env = gateway_env(offline, moto_url, store)
        env.update(CACHE_TTL_S="3600")
        name = f"tollgate-cache-{store}"
        gateway = servers.start(name, uvicorn_args("tollgate.app:create_app"), env)
        try:
            stores[store] = run(gateway.url, JWT_SECRET)
        finally:
            servers.stop(name)
    return {"first_token_delay_ms": first_token_delay_s * 1000, "stores": stores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--first-token-delay-ms", type=float, default=50.0)
    args = parser.parse_args()
    with log_directory(None) as log_dir:
        servers = Servers(log_dir)
        try:
            offline = servers.start(
                "offline-model", uvicorn_args("tollgate.local.offline_model:create_app"), base_env()
            )
            moto = servers.start(
                "moto",
                [PYTHON, "-m", "tollgate.local.moto_server", "--port", "{port}"],
                base_env(),
                health="/moto-api/",
            )
            create_bench_tables(moto.url)
            result = scenario(servers, offline, moto.url, args.first_token_delay_ms / 1000)
        finally:
            servers.stop_all()
    print(render(result))


if __name__ == "__main__":
    main()
