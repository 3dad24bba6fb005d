"""Fixtures for the offline model server: one server per session, reset before each test."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from openai import AsyncOpenAI

from tests.servers import serve


class OfflineModelClient:
    """Steers the offline model server over HTTP: faults, defaults, the request log."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.openai_base_url = url + "/v1"
        self._http = httpx.Client(base_url=url, timeout=5.0)

    def reset(self) -> None:
        from tollgate.local.offline_model import OfflineModelConfig

        for path in ("/_offline/faults", "/_offline/requests"):
            self._http.delete(path).raise_for_status()
        self.set_config(**OfflineModelConfig().model_dump())

    def add_fault(self, **rule: Any) -> None:
        self._http.post("/_offline/faults", json=rule).raise_for_status()

    def set_config(self, **config: Any) -> None:
        self._http.post("/_offline/config", json=config).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        response = self._http.get("/_offline/requests")
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    def ended_requests(self, timeout_s: float = 2.0) -> list[dict[str, Any]]:
        """The request log once no request is in progress (failing after `timeout_s`)."""
        deadline = time.monotonic() + timeout_s
        while True:
            records = self.requests()
            if all(record["outcome"] != "in_progress" for record in records):
                return records
            if time.monotonic() > deadline:
                raise AssertionError(f"requests still in progress after {timeout_s} s: {records}")
            time.sleep(0.01)

    def close(self) -> None:
        self._http.close()


@pytest.fixture(scope="session")
def offline_model_url() -> Iterator[str]:
    from tollgate.local.offline_model import create_app

    with serve(create_app()) as url:
        yield url


@pytest.fixture
def offline_model(offline_model_url: str) -> Iterator[OfflineModelClient]:
    client = OfflineModelClient(offline_model_url)
    client.reset()
    try:
        yield client
    finally:
        client.close()


# An SDK client and a raw HTTP client of the offline model server (no retries: each test
# sees exactly what the server answered).
@pytest.fixture
async def client(offline_model: OfflineModelClient) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(
        base_url=offline_model.openai_base_url, api_key="x", max_retries=0
    ) as openai_client:
        yield openai_client


@pytest.fixture
async def http(offline_model: OfflineModelClient) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=offline_model.url, timeout=5.0) as http_client:
        yield http_client
