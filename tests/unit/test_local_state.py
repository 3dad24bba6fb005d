"""The local run's state file and how `make aggregate` resolves endpoints from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollgate.local.aggregate import local_environment
from tollgate.local.state import clear_state, read_state, write_state


@pytest.fixture(autouse=True)
def state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "nested" / "endpoints.json"
    monkeypatch.setenv("TOLLGATE_LOCAL_STATE", str(path))
    return path


def test_state_round_trips_and_clears(state_file: Path) -> None:
    # Given no state yet
    assert read_state() == {}
    # When the local run writes its endpoints
    write_state({"aws_endpoint": "http://127.0.0.1:5000", "tables": {"UsageTable": "u"}})
    # Then a reader sees them, until they are cleared
    assert read_state()["tables"] == {"UsageTable": "u"}
    clear_state()
    assert not state_file.exists()
    assert read_state() == {}


def test_a_corrupt_state_file_reads_as_empty(state_file: Path) -> None:
    state_file.parent.mkdir(parents=True)
    state_file.write_text("{half")
    assert read_state() == {}


def test_explicit_environment_wins_over_the_state_file() -> None:
    # Given a state file and an explicit logs endpoint
    state = {
        "aws_endpoint": "http://127.0.0.1:5000",
        "cost_log_group": "/local/chat",
        "tables": {"UsageTable": "usage-local"},
    }
    env = {"AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": "http://127.0.0.1:6000"}
    # When the local environment is resolved
    resolved = local_environment(env, state)
    # Then the explicit endpoint is kept and the rest comes from the state file
    assert resolved["AWS_ENDPOINT_URL_CLOUDWATCH_LOGS"] == "http://127.0.0.1:6000"
    assert resolved["AWS_ENDPOINT_URL_DYNAMODB"] == "http://127.0.0.1:5000"
    assert resolved["AWS_ENDPOINT_URL_CLOUDWATCH"] == "http://127.0.0.1:5000"
    assert (resolved["COST_LOG_GROUP"], resolved["USAGE_TABLE"]) == ("/local/chat", "usage-local")


def test_without_a_local_logs_server_it_refuses_to_run() -> None:
    with pytest.raises(SystemExit, match="make run"):
        local_environment({}, {})


def test_metrics_never_go_to_a_real_account_by_default() -> None:
    resolved = local_environment(
        {"AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": "http://127.0.0.1:6000", "USAGE_TABLE": "u"}, {}
    )
    assert resolved["AWS_ENDPOINT_URL_CLOUDWATCH"] == "http://127.0.0.1:6000"
