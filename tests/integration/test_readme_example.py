"""The README's agent example (a tool loop on both OpenAI APIs) runs against the gateway."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from tests.integration.test_openai_tools import upstream_total

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    text = README.read_text()
    block = text.split("<!-- readme-example -->\n```python\n", 1)[1]
    return block.split("\n```\n", 1)[0]


def test_the_readme_tool_loop_runs_on_both_apis(gateway, offline_model) -> None:
    code = readme_example().replace("http://127.0.0.1:8080/v1", gateway.url + "/v1")
    token = gateway.headers()["Authorization"].removeprefix("Bearer ")
    printed = io.StringIO()

    with contextlib.redirect_stdout(printed):
        exec(compile(code, "README.md", "exec"), {"TOKEN": token, "__name__": "readme"})

    answers = printed.getvalue().splitlines()
    assert len(answers) == 2
    assert all(answers)
    requests = offline_model.ended_requests()
    # each API: a tool call, then the answer after the tool's result
    assert [r["body"]["messages"][-1]["role"] for r in requests] == ["user", "tool"] * 2
    assert requests[3]["body"]["store"] is False
    assert gateway.usage()["tokens_used"] == upstream_total(offline_model)
