"""Lambda-shaped CPU: the gateway and its floors under Lambda's CPU share for a memory size.

Lambda gives a function one vCPU at 1,769 MB and a proportional share below it. Each
process here runs in a cgroup v1 CPU controller of its own with cpu.cfs_quota_us set to
that share of cpu.cfs_period_us (a process joins its cgroup before it execs). Reported per
size: time to first token and CPU per request at concurrency 1 beside the floor proxy
under the same quota, and cold start to first token beside the cold floor.

A cold start is Lambda's init phase, then the first invocation. On-demand functions
initialise with burst CPU (up to 10 s; the Lambda Web Adapter starts the app and waits for
its readiness check inside it), so a cold process starts in a group of one full vCPU and
is moved into the size's group once /health answers, before the first request. Where
cgroup v1's CPU controller is not writable the scenario is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from bench.cold_start import cold_start_once
from bench.overhead import Target, run_cell
from bench.processes import (
    BENCH_DIR,
    JWT_SECRET,
    MESSAGE,
    LoadGenerator,
    Server,
    Servers,
    StreamingRequest,
    base_env,
    configure_offline,
    gateway_env,
    uvicorn_args,
)
from bench.stats import Cell, ratio

CPU_CGROUP = Path("/sys/fs/cgroup/cpu")
FULL_VCPU_MB = 1769
PERIOD_US = 100_000
REPLY_TOKENS = 50


def cgroup_available() -> bool:
    return (CPU_CGROUP / "cpu.cfs_quota_us").exists() and os.access(CPU_CGROUP, os.W_OK)


def cpu_share(memory_mb: int) -> float:
    """Lambda's vCPUs for a memory size (one at 1,769 MB, proportional below)."""
    return memory_mb / FULL_VCPU_MB


@dataclass(frozen=True)
class CpuGroup:
    path: Path

    @property
    def launcher(self) -> list[str]:
        """Goes before a command: the command runs inside this group from its first instruction."""
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def admit(self, pid: int) -> None:
        """Move a running process (every thread of it) into this group."""
        (self.path / "cgroup.procs").write_text(str(pid))


@contextlib.contextmanager
def cpu_quota(name: str, memory_mb: int) -> Iterator[CpuGroup]:
    """A cgroup with Lambda's CPU share for `memory_mb`."""
    group = CPU_CGROUP / f"tollgate-bench-{name}"
    group.mkdir(exist_ok=True)
    (group / "cpu.cfs_period_us").write_text(str(PERIOD_US))
    (group / "cpu.cfs_quota_us").write_text(str(round(PERIOD_US * cpu_share(memory_mb))))
    try:
        yield CpuGroup(group)
    finally:
        for _ in range(50):  # the cgroup can be removed once its last process has exited
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def one_size(
    servers: Servers,
    loadgen: LoadGenerator,
    offline: Server,
    moto_url: str,
    log_dir: Path,
    *,
    memory_mb: int,
    rounds: int,
    duration_s: float,
    cold_repetitions: int,
) -> dict[str, Any]:
    completions = "/v1/chat/completions"
    floor_args = uvicorn_args("floor_proxy:create_app", app_dir=BENCH_DIR)
    gateway_args = uvicorn_args("tollgate.app:create_app")
    with contextlib.ExitStack() as stack:
        groups = {
            name: stack.enter_context(cpu_quota(f"{memory_mb}-{name}", memory_mb))
            for name in ("floor", "tollgate-memory", "tollgate-dynamodb", "cold")
        }
        init_burst = stack.enter_context(cpu_quota(f"{memory_mb}-init", FULL_VCPU_MB))
        try:
            floor = servers.start(
                f"floor-{memory_mb}",
                floor_args,
                {**base_env(), "FLOOR_UPSTREAM_URL": offline.url},
                launcher=groups["floor"].launcher,
            )
            targets = [Target("floor", floor, completions, "openai")]
            for store in ("memory", "dynamodb"):
                name = f"tollgate-{store}"
                gateway = servers.start(
                    f"{name}-{memory_mb}",
                    gateway_args,
                    gateway_env(offline, moto_url, store),
                    launcher=groups[name].launcher,
                )
                targets.append(Target(name, gateway, "/chat", "tollgate"))
            for target in targets:
                run_cell(
                    loadgen,
                    target,
                    reply_tokens=REPLY_TOKENS,
                    concurrency=1,
                    duration_s=0.5,
                    tag=f"warm-{memory_mb}-{target.name}",
                )
            cells = {target.name: Cell() for target in targets}
            for round_number in range(rounds):
                shift = round_number % len(targets)
                for target in targets[shift:] + targets[:shift]:
                    result = run_cell(
                        loadgen,
                        target,
                        reply_tokens=REPLY_TOKENS,
                        concurrency=1,
                        duration_s=duration_s,
                        tag=f"{memory_mb}-{round_number}-{target.name}",
                    )
                    cells[target.name].add(result, target.server.pid)
        finally:
            for target_name in ("floor", "tollgate-memory", "tollgate-dynamodb"):
                servers.stop(f"{target_name}-{memory_mb}")
        warm = {name: cell.summary() for name, cell in cells.items()}
        cold = cold_starts(offline, moto_url, log_dir, init_burst, groups["cold"], cold_repetitions)
    floor_summary = warm["floor"]
    for summary in warm.values():
        summary["ttft_added_p50_ms_over_floor"] = (
            summary["ttft_p50_ms"] - floor_summary["ttft_p50_ms"]
        )
        summary["cpu_vs_floor"] = ratio(
            summary["cpu_ms_per_request"], floor_summary["cpu_ms_per_request"]
        )
    return {
        "memory_mb": memory_mb,
        "vcpu": cpu_share(memory_mb),
        "warm": warm,
        "cold_first_token_ms": cold,
    }


def cold_starts(
    offline: Server,
    moto_url: str,
    log_dir: Path,
    init: CpuGroup,
    invoke: CpuGroup,
    repetitions: int,
) -> dict[str, float]:
    """Median cold start to first token of the cold floor and the DynamoDB gateway: started
    in `init` (the init phase's burst), moved to `invoke` for the first request."""
    token = jwt.encode({"sub": "cold", "exp": int(time.time()) + 3600}, JWT_SECRET, "HS256")
    chat = (
        "/chat",
        json.dumps({"message": MESSAGE}).encode(),
        {"authorization": f"Bearer {token}"},
        b'data: {"delta": ',
    )
    body = Target("floor", offline, "/v1/chat/completions", "openai").body(REPLY_TOKENS)
    completions: StreamingRequest = (
        "/v1/chat/completions",
        json.dumps(body).encode(),
        {},
        b'"content":"',
    )
    kinds = {
        "floor": (
            uvicorn_args("cold_floor:create_app", app_dir=BENCH_DIR),
            {**base_env(), "OPENAI_BASE_URL": offline.url + "/v1", "OPENAI_API_KEY": "x"},
            completions,
        ),
        "tollgate-dynamodb": (
            uvicorn_args("tollgate.app:create_app"),
            gateway_env(offline, moto_url, "dynamodb"),
            chat,
        ),
    }
    medians: dict[str, float] = {}
    with (log_dir / "lambda-cold.log").open("ab") as log:
        for name, (args, env, request) in kinds.items():
            runs = [
                cold_start_once(
                    args, env, request, log, launcher=init.launcher, when_ready=invoke.admit
                )["first_token_ms"]
                for _ in range(repetitions)
            ]
            medians[name] = statistics.median(runs)
    return medians


def lambda_shaped(
    servers: Servers,
    loadgen: LoadGenerator,
    offline: Server,
    moto_url: str,
    log_dir: Path,
    *,
    sizes: Sequence[int],
    rounds: int,
    duration_s: float,
    cold_repetitions: int,
    first_token_delay_s: float,
    chunk_interval_s: float,
) -> dict[str, Any]:
    if not cgroup_available():
        print("lambda-shaped CPU skipped: no cgroup v1", flush=True)
        return {"status": "skipped: no cgroup v1"}
    configure_offline(
        offline,
        first_token_delay_s=first_token_delay_s,
        chunk_interval_s=chunk_interval_s,
        reply_tokens=REPLY_TOKENS,
    )
    measured = [
        one_size(
            servers,
            loadgen,
            offline,
            moto_url,
            log_dir,
            memory_mb=size,
            rounds=rounds,
            duration_s=duration_s,
            cold_repetitions=cold_repetitions,
        )
        for size in sizes
    ]
    return {
        "status": "measured",
        "reply_chunks": REPLY_TOKENS,
        "rounds": rounds,
        "duration_s": duration_s,
        "sizes": measured,
    }
