"""The seed-style client (only `data:` lines, `JSON.parse(...).delta`) works unchanged."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway_fixture import make_token

pytestmark = pytest.mark.integration

SEED_CLIENT = Path(__file__).resolve().parents[1] / "node" / "seed_client.mjs"
NODE = shutil.which("node")


@pytest.mark.skipif(NODE is None, reason="node (Node.js 20+) is not installed")
def test_the_naive_seed_client_reads_exactly_the_deltas(gateway, offline_model) -> None:
    assert NODE is not None
    offline_model.set_config(chunk_interval_s=0.01)
    token = make_token("seed-user")
    result = subprocess.run(
        [NODE, str(SEED_CLIENT), gateway.url, token, "Hello there"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    [record] = gateway.wait_for_records(1)
    stored = gateway.http.get(
        f"/conversations/{record['conversation_id']}", headers=gateway.headers("seed-user")
    ).json()
    assert result.stdout == stored["turns"][0]["assistant"]
    assert result.stdout
