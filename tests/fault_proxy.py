"""A fault-injecting HTTP proxy in front of the moto server: a slow, paused or lossy DynamoDB.

- `proxy.delay_s = 0.5`: every request waits this long before it is sent on.
- `proxy.pause(3.0)`: requests arriving in the next 3 s are held, then sent on, even when
  their client gave up meanwhile (a paused DynamoDB still applies what it received).
- `proxy.drop_responses("TransactWriteItems")`: the next such request reaches moto, its
  answer is thrown away and the connection closed, so the client retries a write that landed.
- `proxy.forwarded("TransactWriteItems")`: how many such requests reached moto.

Operations are DynamoDB's `X-Amz-Target` names. Each request goes to moto on a connection
of its own (`Connection: close`), and every client connection is served by its own task,
so requests held or slowed do not hold up the others.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

from tollgate.adapters.dynamodb_http import AsyncDynamoDB

if TYPE_CHECKING:
    pass

TARGET_HEADER = b"x-amz-target"


@dataclass(slots=True)
class _Request:
    head: list[bytes]  # request line and header lines, without line ends
    body: bytes

    @property
    def operation(self) -> str:
        for line in self.head[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == TARGET_HEADER:
                return value.strip().decode().rpartition(".")[2]
        return ""

    def to_upstream(self) -> bytes:
        lines = [line for line in self.head if not line.lower().startswith(b"connection:")]
        return b"\r\n".join([*lines, b"Connection: close", b"", b""]) + self.body


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = head[:-4].split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        if name.strip().lower() == b"transfer-encoding":
            raise ValueError("chunked request bodies are not supported")
    return _Request(lines, await reader.readexactly(length))


@dataclass
class FaultProxy:
    upstream_host: str
    upstream_port: int
    delay_s: float = 0.0
    _paused_until: float = 0.0
    _drops: Counter[str] = field(default_factory=Counter)
    _forwarded: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _in_flight: int = 0
    max_in_flight: int = 0  # the most requests held, slowed or forwarded at one time
    url: str = ""

    def pause(self, seconds: float) -> None:
        """Hold every request that arrives in the next `seconds`, then send each one on."""
        self._paused_until = time.monotonic() + seconds

    def drop_responses(self, operation: str, count: int = 1) -> None:
        """Let the next `count` requests of `operation` land, and answer none of them."""
        with self._lock:
            self._drops[operation] += count

    def forwarded(self, operation: str) -> int:
        """Requests of `operation` that reached the server."""
        with self._lock:
            return self._forwarded[operation]

    def _take_drop(self, operation: str) -> bool:
        with self._lock:
            if self._drops[operation] <= 0:
                return False
            self._drops[operation] -= 1
            return True

    async def _forward(self, request: _Request) -> bytes:
        reader, writer = await asyncio.open_connection(self.upstream_host, self.upstream_port)
        try:
            writer.write(request.to_upstream())
            await writer.drain()
            response = await reader.read()  # the server closes: Connection: close
        finally:
            writer.close()
        with self._lock:
            self._forwarded[request.operation] += 1
        return response

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while (request := await _read_request(reader)) is not None:
                self._in_flight += 1  # only touched on the proxy's event loop
                self.max_in_flight = max(self.max_in_flight, self._in_flight)
                try:
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    held = self._paused_until - time.monotonic()
                    if held > 0:
                        await asyncio.sleep(held)
                    # shielded: a request that reached the server is applied if its client left
                    response = await asyncio.shield(self._forward(request))
                finally:
                    self._in_flight -= 1
                if self._take_drop(request.operation):
                    return  # the write landed; its client sees the connection close unanswered
                writer.write(response)
                await writer.drain()
                return  # the server's answer said Connection: close
        except ConnectionError:
            pass
        finally:
            writer.close()


@contextmanager
def running_fault_proxy(endpoint: str) -> Iterator[FaultProxy]:
    """A FaultProxy in front of `endpoint` (http://host:port), served from a background thread."""
    host, _, port = endpoint.removeprefix("http://").partition(":")
    proxy = FaultProxy(host, int(port))
    loop = asyncio.new_event_loop()
    started = threading.Event()

    async def start() -> asyncio.Server:
        server = await asyncio.start_server(proxy._serve, "127.0.0.1", 0)
        proxy.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        return server

    server = loop.run_until_complete(start())
    thread = threading.Thread(
        target=lambda: (started.set(), loop.run_forever()), name="fault-proxy", daemon=True
    )
    thread.start()
    started.wait()
    try:
        yield proxy
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@pytest.fixture
def fault_proxy(moto_endpoint: str) -> Iterator[FaultProxy]:
    """A fresh FaultProxy in front of the session's moto server."""
    with running_fault_proxy(moto_endpoint) as proxy:
        yield proxy


@pytest.fixture
def faulty_dynamodb(fault_proxy: FaultProxy) -> AsyncDynamoDB:
    """The gateway's DynamoDB client through the proxy, with its own timeouts and retries."""
    return AsyncDynamoDB.from_environment(endpoint_url=fault_proxy.url)
