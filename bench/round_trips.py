"""Sequential DynamoDB round trips before the first upstream byte, per request path.

The gateway talks to moto through bench/latency_proxy.py. Requests go one at a time; for
each, the proxy's log gives every DynamoDB call's start and end, and the offline model
server's request log gives the moment the upstream request arrived. The depth of the
chain of calls between the two (stats.round_trip_depth) is the number of round trips a
user waits for. As a cross-check, the same requests run with no delay and with a delay D
per call: (TTFT with D − TTFT without) / D estimates the same number from the outside.
The proxy's log also counts each request's calls by operation (the DynamoDB bill).
"""

from __future__ import annotations

import json
import re
import statistics
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt

from bench.processes import (
    BENCH_DIR,
    JWT_SECRET,
    MESSAGE,
    MODEL,
    Server,
    Servers,
    base_env,
    configure_offline,
    gateway_env,
    stream_request,
    uvicorn_args,
)
from bench.stats import Call, round_trip_depth

TOLLGATE_MARKER = b'data: {"delta": '
OPENAI_MARKER = b'"content":"'
CONVERSATION_ID = re.compile(rb'"conversation_id": "([0-9a-f]{32})"')
# Scopes for the team/global path (the budget-scope contract's BUDGETS, with room to spare).
SCOPED_BUDGETS = {
    "plans": {"default": {"day": {"tokens": 10**12}}},
    "team": {"day": {"tokens": 10**12}},
    "global": {"day": {"tokens": 10**12}},
}


@dataclass
class RequestPath:
    name: str
    path: str
    marker: bytes
    body: Callable[[str | None], dict[str, Any]]  # conversation id → request body
    continues: bool = False
    claims: dict[str, str] = field(default_factory=dict)


def chat_body(conversation_id: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"message": MESSAGE, "max_tokens": 60}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    return body


def completions_body(_: str | None) -> dict[str, Any]:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": MESSAGE}],
        "max_completion_tokens": 60,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


PATHS = [
    RequestPath("new conversation (/chat)", "/chat", TOLLGATE_MARKER, chat_body),
    RequestPath("continued conversation (/chat)", "/chat", TOLLGATE_MARKER, chat_body, True),
    RequestPath("/v1/chat/completions", "/v1/chat/completions", OPENAI_MARKER, completions_body),
]
SCOPED_PATH = RequestPath(
    "team and global scopes (/chat)", "/chat", TOLLGATE_MARKER, chat_body, claims={"team": "t1"}
)


def gateway_has_budget_scopes() -> bool:
    from tollgate.settings import Settings

    return "budgets" in Settings.model_fields


def _call(url: str, method: str = "GET", body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"null")


class Probe:
    """Sends one request at a time through a gateway and reads both logs around it."""

    def __init__(self, gateway: Server, proxy: Server, offline: Server) -> None:
        self.gateway, self.proxy, self.offline = gateway, proxy, offline

    def set_delay(self, delay_ms: float) -> None:
        _call(self.proxy.url + "/_proxy/config", "POST", {"delay_ms": delay_ms})

    def send(self, path: RequestPath, user: str, conversation_id: str | None) -> Any:
        claims = {"sub": user, "exp": int(time.time()) + 3600, **path.claims}
        headers = {"authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, 'HS256')}"}
        body = json.dumps(path.body(conversation_id)).encode()
        return stream_request(self.gateway.port, path.path, body, headers, path.marker)

    def measure(self, path: RequestPath, user: str, settle_s: float) -> dict[str, Any]:
        conversation_id = None
        if path.continues:
            opened = self.send(path, user, None)
            match = CONVERSATION_ID.search(opened.body)
            if match is None:
                raise RuntimeError(f"no conversation id in {opened.body[:300]!r}")
            conversation_id = match.group(1).decode()
            time.sleep(settle_s)
        _call(self.proxy.url + "/_proxy/calls", "DELETE")
        _call(self.offline.url + "/_offline/requests", "DELETE")
        response = self.send(path, user, conversation_id)
        time.sleep(settle_s)  # the settle and the conversation store run after the stream
        calls = _call(self.proxy.url + "/_proxy/calls")
        upstream = _call(self.offline.url + "/_offline/requests")
        upstream_at = min(record["started_at"] for record in upstream)
        spans = [Call(c["started_at"], c["ended_at"]) for c in calls]
        return {
            "ttft_ms": response.first_token_s * 1000,
            "depth": round_trip_depth(spans, response.sent_at, upstream_at),
            "calls": calls,
        }


def measure_path(
    probe: Probe, path: RequestPath, *, samples: int, delay_ms: float
) -> dict[str, Any]:
    by_delay: dict[float, list[dict[str, Any]]] = {}
    for delay in (0.0, delay_ms):
        probe.set_delay(delay)
        settle_s = 0.2 + 4 * delay / 1000
        by_delay[delay] = [
            probe.measure(path, f"rt-{path.name[:3]}-{delay:g}-{n}", settle_s)
            for n in range(samples)
        ]
    delayed = by_delay[delay_ms]
    ttft = {
        delay: statistics.median(s["ttft_ms"] for s in runs) for delay, runs in by_delay.items()
    }
    operations: Counter[str] = Counter()
    for sample in delayed:
        operations.update(call["operation"] for call in sample["calls"])
    return {
        "path": path.name,
        "depths": [s["depth"] for s in delayed],
        "depth_p50": statistics.median(s["depth"] for s in delayed),
        "depth_max": max(s["depth"] for s in delayed),
        "ttft_p50_ms_without_delay": ttft[0.0],
        "ttft_p50_ms_with_delay": ttft[delay_ms],
        "depth_from_ttft": (ttft[delay_ms] - ttft[0.0]) / delay_ms,
        "calls_per_request": {op: n / samples for op, n in sorted(operations.items())},
        "call_samples": delayed[-1]["calls"],
    }


def round_trips(
    servers: Servers, offline: Server, moto: Server, *, samples: int, delay_ms: float
) -> dict[str, Any]:
    configure_offline(offline, first_token_delay_s=0.0, chunk_interval_s=0.0, reply_tokens=20)
    proxy = servers.start(
        "latency-proxy",
        uvicorn_args("latency_proxy:create_app", app_dir=BENCH_DIR),
        {**base_env(), "LATENCY_PROXY_UPSTREAM": moto.url},
        health="/moto-api/",
    )
    paths = list(PATHS)
    extra_env: dict[str, str] = {}
    scoped_status = "skipped: the gateway has no BUDGETS setting yet (budget-scope issue)"
    if gateway_has_budget_scopes():
        paths.append(SCOPED_PATH)
        extra_env["BUDGETS"] = json.dumps(SCOPED_BUDGETS)
        scoped_status = "measured"
    env = {**gateway_env(offline, proxy.url, "dynamodb"), **extra_env}
    gateway = servers.start("tollgate-round-trips", uvicorn_args("tollgate.app:create_app"), env)
    try:
        probe = Probe(gateway, proxy, offline)
        for path in paths:  # warm-up: botocore models, connection pools, the encoding
            probe.send(path, "rt-warm", None)
        measured = [measure_path(probe, p, samples=samples, delay_ms=delay_ms) for p in paths]
    finally:
        servers.stop("tollgate-round-trips")
        servers.stop("latency-proxy")
    return {
        "delay_ms": delay_ms,
        "samples": samples,
        "paths": measured,
        "scoped": scoped_status,
    }
