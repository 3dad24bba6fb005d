"""The chat page in headless Chromium against the real gateway (tests/browser/chat_page.mjs)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.gateway_fixture import make_token

BROWSER_DIR = Path(__file__).resolve().parent
REPO = BROWSER_DIR.parents[1]
SCRIPT = BROWSER_DIR / "chat_page.mjs"
# docs/chat-page.png is refreshed on request only (UPDATE_SCREENSHOT=1), so that a test
# run leaves the tree clean.
DOCS_SCREENSHOT = REPO / "docs" / "chat-page.png"
CHROMIUM = os.environ.get("CHROMIUM_PATH") or shutil.which("chromium") or "/usr/bin/chromium"
NODE = shutil.which("node")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(NODE is None, reason="node (Node.js 20+) is not installed"),
    pytest.mark.skipif(
        not Path(CHROMIUM).exists(),
        reason=f"no Chromium at {CHROMIUM}: apt-get install chromium (or set CHROMIUM_PATH)",
    ),
    pytest.mark.skipif(
        not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(),
        reason="playwright-core is not installed: npm ci --prefix tests/browser",
    ),
]


def test_chat_page_streams_renders_markdown_safely_and_stops(
    gateway_factory, offline_model, tmp_path
) -> None:
    """Two real turns through the gateway (one completed, one stopped) around a Markdown turn
    whose /chat response the page test serves itself: a reply carrying <script>, an <img>
    with onerror, a javascript: link and a fenced code block."""
    offline_model.set_config(chunk_interval_s=0.05, reply_tokens=40)
    update_docs = os.environ.get("UPDATE_SCREENSHOT") == "1"
    screenshot = DOCS_SCREENSHOT if update_docs else tmp_path / "chat-page.png"
    assert NODE is not None

    with gateway_factory(daily_cost_limit_usd=0.5) as gateway:
        result = subprocess.run(
            [NODE, str(SCRIPT), gateway.url, make_token("page-user"), str(screenshot)],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
            env={**os.environ, "CHROMIUM_PATH": CHROMIUM},
        )
        assert result.returncode == 0, result.stderr or result.stdout
        records = {record["request_id"]: record for record in gateway.wait_for_records(2)}
        conversation_id = next(iter(records.values()))["conversation_id"]
        stored = gateway.http.get(
            f"/conversations/{conversation_id}", headers=gateway.headers("page-user")
        ).json()

    page = json.loads(result.stdout)
    assert records[page["firstRequestId"]]["outcome"] == "completed"
    assert records[page["stoppedRequestId"]]["outcome"] == "cancelled"
    assert records[page["stoppedRequestId"]]["output_tokens"] < 40
    assert stored["turns"][0]["assistant"] == page["firstReply"]
    assert f"{stored['turns'][0]['cost_usd']:.6f}" in page["firstMeta"]
    assert "left" in page["budgetDetail"]
    assert page["markdown"]["ran"] == 0
    assert page["markdown"]["images"] == 0
    assert page["markdown"]["code"] == "def toll(cars):\n    return cars * 2  # <b>not bold</b>"
    assert "<script>window.__scriptRan = true</script>" in page["markdown"]["text"]
    assert screenshot.stat().st_size > 10_000
