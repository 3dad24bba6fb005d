"""Load generator: a process of its own, so its CPU never counts as the servers'.

Reads one JSON run spec per stdin line, writes one JSON result per stdout line. Each run
opens `concurrency` keep-alive HTTP/1.1 connections (a minimal client on asyncio streams
and uvloop, so the generator stays cheap next to the servers it measures) and sends
streaming chat requests back to back on each until `duration_s` has passed.

Per request it records the time to the first delta (the first content chunk of an OpenAI
stream, the first `data: {"delta": ...}` event of Tollgate's) and the total time to the
end of the response. Around the run it reads the servers' CPU time (utime + stime of the
process and all its threads, /proc/<pid>/stat) so CPU per request excludes start-up.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import jwt
import uvloop

OPENAI_MARKER = b'"delta":{"content":"'
TOLLGATE_MARKER = b'data: {"delta": '
DONE = b"data: [DONE]"
CONVERSATION_ID = re.compile(rb'"conversation_id": "([0-9a-f]{32})"')
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (its threads included), in seconds."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


class HttpError(Exception):
    pass


@dataclass
class Sample:
    ttft_s: float | None
    total_s: float
    deltas: int
    conversation_id: str | None


@dataclass
class Spec:
    port: int
    path: str
    mode: str  # "openai" | "tollgate"
    body: dict[str, Any]
    concurrency: int
    duration_s: float
    pids: list[int] = field(default_factory=list)
    jwt_secret: str | None = None
    user_prefix: str = "bench"
    continue_turns: int = 0  # 0: a new conversation per request; N: N turns per conversation


class Connection:
    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def post(self, path: str, body: bytes, headers: str, marker: bytes) -> Sample:
        if self.writer is None:
            await self.open()
        assert self.reader is not None
        assert self.writer is not None
        reader = self.reader
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n{headers}\r\n"
        )
        started = time.perf_counter()
        self.writer.write(head.encode() + body)
        status_line = await reader.readline()
        if not status_line:
            self.close()
            raise HttpError("connection closed before the status line")
        status = int(status_line.split()[1])
        chunked, length, keep_alive = False, None, True
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip().lower()
            if name == "transfer-encoding" and "chunked" in value:
                chunked = True
            elif name == "content-length":
                length = int(value)
            elif name == "connection" and value == "close":
                keep_alive = False
        received = bytearray()
        first_at: float | None = None
        if chunked:
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                if size == 0:
                    await reader.readline()
                    break
                data = await reader.readexactly(size + 2)
                if first_at is None:
                    tail = received[-len(marker) :]
                    received += data[:-2]
                    if marker in tail + data:
                        first_at = time.perf_counter()
                else:
                    received += data[:-2]
        elif length is not None:
            received += await reader.readexactly(length)
        else:
            received += await reader.read()
            keep_alive = False
        ended = time.perf_counter()
        if not keep_alive:
            self.close()
        if status != 200:
            raise HttpError(f"HTTP {status}: {bytes(received[:300])!r}")
        if DONE not in received:
            raise HttpError(f"stream without [DONE]: {bytes(received[-300:])!r}")
        match = CONVERSATION_ID.search(received)
        return Sample(
            ttft_s=None if first_at is None else first_at - started,
            total_s=ended - started,
            deltas=received.count(marker),
            conversation_id=match.group(1).decode() if match else None,
        )


async def worker(spec: Spec, number: int, deadline: float, results: dict[str, Any]) -> None:
    marker = TOLLGATE_MARKER if spec.mode == "tollgate" else OPENAI_MARKER
    headers = ""
    if spec.jwt_secret:
        claims = {"sub": f"{spec.user_prefix}-{number}", "exp": int(time.time()) + 3600}
        token = jwt.encode(claims, spec.jwt_secret, algorithm="HS256")
        headers = f"Authorization: Bearer {token}\r\n"
    plain_body = json.dumps(spec.body).encode()
    connection = Connection(spec.port)
    await connection.open()
    conversation_id: str | None = None
    turns = 0
    try:
        while time.perf_counter() < deadline:
            body = plain_body
            if spec.continue_turns and conversation_id is not None:
                body = json.dumps({**spec.body, "conversation_id": conversation_id}).encode()
            try:
                sample = await connection.post(spec.path, body, headers, marker)
            except (HttpError, OSError, asyncio.IncompleteReadError, ValueError) as exc:
                results["errors"] += 1
                if len(results["error_samples"]) < 5:
                    results["error_samples"].append(repr(exc)[:400])
                connection.close()
                conversation_id = None
                await asyncio.sleep(0.01)
                continue
            results["samples"].append(sample)
            turns += 1
            if spec.continue_turns and turns < spec.continue_turns:
                conversation_id = sample.conversation_id
            else:
                conversation_id, turns = None, 0
    finally:
        connection.close()


async def run(spec: Spec) -> dict[str, Any]:
    results: dict[str, Any] = {"samples": [], "errors": 0, "error_samples": []}
    cpu_before = {pid: cpu_seconds(pid) for pid in spec.pids}
    started = time.perf_counter()
    deadline = started + spec.duration_s
    await asyncio.gather(*(worker(spec, n, deadline, results) for n in range(spec.concurrency)))
    elapsed = time.perf_counter() - started
    cpu_after = {pid: cpu_seconds(pid) for pid in spec.pids}
    samples: list[Sample] = results["samples"]
    return {
        "completed": len(samples),
        "errors": results["errors"],
        "error_samples": results["error_samples"],
        "elapsed_s": elapsed,
        "ttft_ms": [s.ttft_s * 1000 for s in samples if s.ttft_s is not None],
        "total_ms": [s.total_s * 1000 for s in samples],
        "deltas": [s.deltas for s in samples],
        "cpu_s": {str(pid): cpu_after[pid] - cpu_before[pid] for pid in spec.pids},
    }


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        spec = Spec(**json.loads(line))
        result = uvloop.run(run(spec))
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
