"""tollgate-admin against DynamoDB on the moto server: counters written by the real ledger and
usage store, rollups by the real rollup store, read back by the CLI's main()."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pytest

from tollgate.adapters.rollup_store import DayRollup, RollupStore
from tollgate.adapters.usage_store import DynamoUsageStore
from tollgate.aggregation.rollups import Counts, Rollup, UserTotal
from tollgate.aggregation.windows import Window
from tollgate.budget import BudgetPolicy, Budgets, Payer
from tollgate.cli.admin import main
from tollgate.ledger import Ledger
from tollgate.local.tables import create_tables
from tollgate.observability import CostRecorder, build_logger
from tollgate.ports import Amount, Limits

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

pytestmark = pytest.mark.integration

AT = datetime(2026, 3, 10, 12, tzinfo=UTC)
BUDGETS = {
    "plans": {"default": {"day": {"tokens": 10_000}}, "pro": {"month": {"usd": 40}}},
    "team": {"day": {"tokens": 5_000, "usd": 1}},
    "global": {"day": {"tokens": 1_000_000}},
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.fixture
def spent(table_names: dict[str, str]) -> str:
    """Three requests through the real ledger: two of team acme settled, one still open."""
    budgets = Budgets.parse(json.dumps(BUDGETS), Limits(50_000, None))
    # A small typical hold spreads the global day over all 32 shards.
    policy = BudgetPolicy(budgets, typical_hold=Amount(100, 100))
    assert policy.global_shards(Limits(1_000_000, None)) == 32
    stream = io.StringIO()
    ledger = Ledger(
        DynamoUsageStore(table_names["UsageTable"]),
        policy,
        CostRecorder(logger=build_logger(stream), stream=stream),
        rate_limit_per_minute=60,
    )

    async def spend() -> None:
        for payer, settled in (
            (Payer("alice", team="acme"), Amount(200, 2_000)),
            (Payer("bob", team="acme"), Amount(250, 3_000)),
            (Payer("carol"), None),
        ):
            hold = await ledger.admit(payer, uuid.uuid4().hex, Amount(300, 5_000), AT)
            if settled is not None:
                await ledger.settle(hold, settled)

    asyncio.run(spend())
    return table_names["UsageTable"]


def test_usage_of_a_team_reads_its_counters_and_limits(
    spent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(
        capsys, "usage", "--team", "acme", "--day", "2026-03-10", "--usage-table", spent,
        "--budgets", json.dumps(BUDGETS), "--json",
    )  # fmt: skip
    assert code == 0
    assert json.loads(out) == {
        "scope": "team",
        "owner": "acme",
        "window": "day",
        "period": "2026-03-10",
        "tokens_settled": 450,
        "tokens_reserved": 0,
        "token_limit": 5_000,
        "cost_settled_usd": 0.005,
        "cost_reserved_usd": 0.0,
        "cost_limit_usd": 1.0,
        "requests": 2,
    }


def test_usage_of_the_stack_sums_every_global_shard(
    spent: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given BUDGETS in the environment, as the operator's shell may have it
    monkeypatch.setenv("BUDGETS", json.dumps(BUDGETS))
    monkeypatch.setenv("USAGE_TABLE", spent)
    # When the stack's day is asked for
    code, out = run(capsys, "usage", "--global", "--day", "2026-03-10", "--json")
    # Then the shards (each request picked one at random) add up to every charge
    usage = json.loads(out)
    assert code == 0
    assert (usage["owner"], usage["tokens_settled"], usage["tokens_reserved"]) == ("all", 450, 300)
    assert (usage["requests"], usage["token_limit"], usage["cost_limit_usd"]) == (
        2,
        1_000_000,
        None,
    )


def test_usage_of_a_user_prints_a_table(spent: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(
        capsys, "usage", "--user", "carol", "--day", "2026-03-10", "--usage-table", spent
    )
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "user carol - day 2026-03-10"
    assert lines[1].split() == ["unit", "settled", "reserved", "limit"]
    assert lines[2].split() == ["tokens", "0", "300", "-"]  # no BUDGETS given: no limit shown
    assert lines[-1] == "requests: 0"


def test_usage_of_a_window_never_written_is_zero(
    spent: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run(
        capsys, "usage", "--user", "alice", "--plan", "pro", "--month", "2026-02",
        "--usage-table", spent, "--budgets", json.dumps(BUDGETS), "--json",
    )  # fmt: skip
    usage = json.loads(out)
    assert code == 0
    assert (usage["tokens_settled"], usage["requests"], usage["cost_limit_usd"]) == (0, 0, 40.0)


@pytest.fixture
def rollups_table(dynamodb: DynamoDBClient) -> str:
    name = f"rollups-{uuid.uuid4().hex[:8]}"
    create_tables(dynamodb, {"RollupsTable": name})
    return name


def test_top_reads_the_days_rollup(
    dynamodb: DynamoDBClient, rollups_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the aggregator's rollup of a day with three users and two teams
    rollup = Rollup(Window(AT.replace(hour=0), AT.replace(hour=0) + timedelta(days=1)))
    rollup.totals = Counts(requests=6, input_tokens=600, output_tokens=60, cost_micros=900_000)
    rollup.users = {
        "alice": UserTotal(cost_micros=500_000, tokens=300),
        "bob": UserTotal(cost_micros=100_000, tokens=100),
        "carol": UserTotal(cost_micros=300_000, tokens=260),
    }
    rollup.teams = {
        "acme": Counts(requests=3, input_tokens=300, output_tokens=30, cost_micros=600_000),
        "zeta": Counts(requests=1, input_tokens=50, output_tokens=5, cost_micros=700_000),
    }
    RollupStore(dynamodb, rollups_table).put_day(DayRollup(rollup, 20, 24))
    # When the operator asks for the day's top two
    code, out = run(
        capsys, "top", "--day", "2026-03-10", "--limit", "2", "--rollups-table", rollups_table,
        "--json",
    )  # fmt: skip
    top: dict[str, Any] = json.loads(out)
    # Then the biggest spenders come first, users and teams
    assert code == 0
    assert (top["cost_usd"], top["windows_present"], top["windows_expected"]) == (0.9, 20, 24)
    assert [u["user_id"] for u in top["top_users"]] == ["alice", "carol"]
    assert top["top_teams"] == [
        {"team": "zeta", "cost_usd": 0.7, "tokens": 55, "requests": 1},
        {"team": "acme", "cost_usd": 0.6, "tokens": 330, "requests": 3},
    ]
    # And the readable form shows the same
    code, out = run(capsys, "top", "--day", "2026-03-10", "--rollups-table", rollups_table)
    assert code == 0
    assert out.splitlines()[0] == "day 2026-03-10: 0.9 USD, 6 requests (20/24 hours aggregated)"
    assert "zeta" in out


def test_top_of_a_day_never_aggregated_says_so(
    rollups_table: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["top", "--day", "2026-01-01", "--rollups-table", rollups_table]) == 1
    assert "no rollup for 2026-01-01" in capsys.readouterr().err
