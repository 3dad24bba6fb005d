"""The gateway under uvicorn on 127.0.0.1, with DynamoDB on moto and the offline model server."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import httpx
import jwt
import pytest

from tests.offline_fixture import OfflineModelClient
from tests.servers import serve
from tollgate.settings import Settings

JWT_SECRET = "test-secret-for-the-gateway-tests-only"


def make_token(
    user_id: str, *, secret: str = JWT_SECRET, expires_in_s: int = 3600, **claims: Any
) -> str:
    return jwt.encode(
        {"sub": user_id, "exp": int(time.time()) + expires_in_s, **claims},
        secret,
        algorithm="HS256",
    )


# Powertools keys its logger by service name, so one log stream serves the whole session;
# each gateway reads what was written after it started.
SESSION_LOG = io.StringIO()


class Gateway:
    def __init__(self, url: str, settings: Settings, app: Any) -> None:
        self.url = url
        self.settings = settings
        self._log_offset = len(SESSION_LOG.getvalue())
        self.app = app
        self.http = httpx.Client(base_url=url, timeout=30.0)

    @property
    def service(self) -> Any:
        return self.app.state.deps.service

    def headers(self, user_id: str = "alice", **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {make_token(user_id, **claims)}"}

    def chat(
        self,
        message: str = "Hello there",
        user_id: str = "alice",
        claims: dict[str, Any] | None = None,
        **fields: Any,
    ) -> httpx.Response:
        return self.http.post(
            "/chat",
            json={"message": message, **fields},
            headers=self.headers(user_id, **(claims or {})),
        )

    def usage(self, user_id: str = "alice", **claims: Any) -> dict[str, Any]:
        response = self.http.get("/usage", headers=self.headers(user_id, **claims))
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        return body

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in SESSION_LOG.getvalue()[self._log_offset :].splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                continue
        return lines

    def cost_records(self) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if line.get("message") == "cost_record"]

    def wait_for_records(self, count: int, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        while len(records := self.cost_records()) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} cost records, got {records}")
            time.sleep(0.02)
        return records

    def emf_blobs(self) -> list[dict[str, Any]]:
        return [line for line in self.log_lines() if "_aws" in line]


def parse_sse(text: str) -> list[tuple[str | None, str]]:
    """(event name or None, data) per event; asserts LF-only framing."""
    assert "\r" not in text
    events = []
    for block in text.split("\n\n"):
        if not block:
            continue
        name = None
        data = None
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data = line[len("data: ") :]
        assert data is not None, block
        events.append((name, data))
    return events


GatewayFactory = Callable[..., Gateway]


@pytest.fixture
def gateway_factory(
    moto_endpoint: str, table_names: dict[str, str], offline_model: OfflineModelClient
) -> Callable[..., Any]:
    from tollgate.app import create_app
    from tollgate.dependencies import build_dependencies
    from tollgate.observability import CostRecorder, build_logger

    @contextmanager
    def start(clock: Callable[[], datetime] | None = None, **overrides: Any) -> Iterator[Gateway]:
        values: dict[str, Any] = {
            "usage_table": table_names["UsageTable"],
            "conversations_table": table_names["ConversationsTable"],
            "openai_base_url": offline_model.openai_base_url,
            "openai_api_key": "offline",
            "jwt_secret": JWT_SECRET,
            "cancel_poll_s": 0.2,
        }
        values.update(overrides)
        settings = Settings(**values)
        recorder = CostRecorder(logger=build_logger(SESSION_LOG), stream=SESSION_LOG)
        dependencies = build_dependencies(settings, recorder=recorder, clock=clock)
        app = create_app(settings, dependencies=dependencies)
        with serve(app) as url:
            gateway = Gateway(url, settings, app)
            try:
                yield gateway
            finally:
                gateway.http.close()

    return start


@pytest.fixture
def gateway(gateway_factory: Callable[..., Any]) -> Iterator[Gateway]:
    with gateway_factory() as started:
        yield started
