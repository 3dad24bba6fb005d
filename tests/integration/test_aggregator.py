"""The aggregator handler against moto server: logs in, rollups, metrics and reconciliation out."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import boto3
import pytest

from tollgate.aggregation.handler import handler
from tollgate.local.aggregate import LocalContext
from tollgate.local.tables import create_tables

if TYPE_CHECKING:
    from mypy_boto3_cloudwatch import CloudWatchClient
    from mypy_boto3_dynamodb import DynamoDBClient
    from mypy_boto3_logs import CloudWatchLogsClient

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)
TODAY = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
_day_offsets = itertools.count(2)
# Set per test: metrics live in one moto server for the session, so each test gets its own
# day, recent enough for CloudWatch to accept datapoints at the windows' own timestamps.
DAY = TODAY
DAY_KEY = DAY.date().isoformat()


@pytest.fixture(autouse=True)
def _own_day() -> None:
    global DAY, DAY_KEY
    offset = next(_day_offsets)
    assert offset < 14, "too many tests for distinct recent days"
    DAY = TODAY - timedelta(days=offset)
    DAY_KEY = DAY.date().isoformat()


def at(hours: float, *, day: datetime | None = None) -> datetime:
    return (day or DAY) + timedelta(hours=hours)


def ms(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def cost_line(
    user: str,
    cost: float,
    *,
    model: str = "gpt-4o-mini",
    outcome: str = "completed",
    started: datetime | None = None,
    tokens: tuple[int, int] = (100, 20),
    team: str | None = None,
) -> str:
    return json.dumps(
        {
            "level": "INFO",
            "location": "observability:cost_record:1",
            "message": "cost_record",
            "timestamp": "2026-01-01 00:00:00,000+0000",
            "service": "tollgate",
            "request_id": uuid.uuid4().hex,
            "user_id": user,
            "conversation_id": "c",
            "model": model,
            "models_tried": [model],
            "input_tokens": tokens[0],
            "cached_input_tokens": 0,
            "output_tokens": tokens[1],
            "cost_usd": cost,
            "usage_source": "upstream",
            "ttft_ms": 100,
            "latency_ms": 500,
            "outcome": outcome,
            "kind": "chat",
            "prompt": "default",
            "upstream_model": model,
            "started_at": iso(started) if started else None,
            "plan": "default",
            "team": team,
        }
    )


@pytest.fixture
def logs(moto_endpoint: str) -> CloudWatchLogsClient:
    return boto3.client("logs", endpoint_url=moto_endpoint)


@pytest.fixture
def cloudwatch(moto_endpoint: str) -> CloudWatchClient:
    return boto3.client("cloudwatch", endpoint_url=moto_endpoint)


@pytest.fixture
def env(
    moto_endpoint: str,
    monkeypatch: pytest.MonkeyPatch,
    dynamodb: DynamoDBClient,
    table_names: dict[str, str],
    logs: CloudWatchLogsClient,
) -> dict[str, str]:
    """A fresh log group and rollups table, and the handler's environment pointing at them."""
    suffix = uuid.uuid4().hex[:8]
    group = f"/aws/lambda/chat-{suffix}"
    logs.create_log_group(logGroupName=group)
    logs.create_log_stream(logGroupName=group, logStreamName="s")
    rollups = f"rollups-{suffix}"
    create_tables(dynamodb, {"RollupsTable": rollups})
    values = {
        "COST_LOG_GROUP": group,
        "ROLLUPS_TABLE": rollups,
        "USAGE_TABLE": table_names["UsageTable"],
        "AWS_ENDPOINT_URL_CLOUDWATCH_LOGS": moto_endpoint,
        "AWS_ENDPOINT_URL_DYNAMODB": moto_endpoint,
        "AWS_ENDPOINT_URL_CLOUDWATCH": moto_endpoint,
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def seed(logs: CloudWatchLogsClient, group: str, events: list[tuple[datetime, str]]) -> None:
    ordered = sorted(events, key=lambda e: e[0])
    logs.put_log_events(
        logGroupName=group,
        logStreamName="s",
        logEvents=[{"timestamp": ms(moment), "message": line} for moment, line in ordered],
    )


def scheduled(time: datetime) -> dict[str, Any]:
    return {
        "version": "0",
        "id": str(uuid.uuid4()),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "123456789012",
        "time": iso(time),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:123456789012:rule/schedule"],
        "detail": {},
    }


def invoke(event: dict[str, Any]) -> dict[str, Any]:
    return handler(event, LocalContext(aws_request_id=str(uuid.uuid4())))  # type: ignore[arg-type]


def scan(dynamodb: DynamoDBClient, table: str) -> list[dict[str, Any]]:
    items = dynamodb.scan(TableName=table, ConsistentRead=True)["Items"]
    return sorted(items, key=lambda item: (item["pk"]["S"], item["sk"]["S"]))


def set_budget(
    dynamodb: DynamoDBClient,
    table: str,
    owner: str,
    cost: int,
    reserved: int,
    *,
    scope: str = "USER",
) -> None:
    dynamodb.put_item(
        TableName=table,
        Item={
            "pk": {"S": f"{scope}#{owner}"},
            "sk": {"S": f"DAY#{DAY_KEY}"},
            "day": {"S": DAY_KEY},
            "tokens": {"N": "1000"},
            "cost_micros": {"N": str(cost)},
            "reserved_tokens": {"N": "0"},
            "reserved_micros": {"N": str(reserved)},
            "requests": {"N": "3"},
        },
    )


def metric_max(
    cloudwatch: CloudWatchClient, name: str, start: datetime, dimensions: list[Any] | None = None
) -> float | None:
    points = cloudwatch.get_metric_statistics(
        Namespace="Tollgate",
        MetricName=name,
        Dimensions=dimensions or [],
        StartTime=start - timedelta(minutes=1),
        EndTime=start + timedelta(minutes=1),
        Period=60,
        Statistics=["Maximum"],
    )["Datapoints"]
    return max((p["Maximum"] for p in points), default=None)


class TestScheduledRun:
    def test_rolls_up_the_last_complete_hour_and_the_one_before_exactly(
        self, env: dict[str, str], logs: CloudWatchLogsClient, dynamodb: DynamoDBClient,
        cloudwatch: CloudWatchClient,
    ) -> None:  # fmt: skip
        # Given records in two hours, at both edges of a window, plus malformed and other lines
        seed(
            logs,
            env["COST_LOG_GROUP"],
            [
                (at(11.5), cost_line("alice", 0.1)),
                (at(12), cost_line("alice", 0.2, model="gpt-4o", tokens=(10, 5))),
                (
                    at(13) - timedelta(milliseconds=1),
                    cost_line("bob", 0.3, outcome="cancelled", team="acme"),
                ),
                (at(12.5), "cost_record: not json"),
                (at(12.6), cost_line("bob", 0.3)[:-30]),  # truncated
                (at(12.7), json.dumps({"message": "cost_record write retried"})),
                (at(13), cost_line("carol", 9.0)),  # the current, incomplete hour
            ],
        )
        # When the scheduled event fires just after 13:00
        summary = invoke(scheduled(at(13) + timedelta(seconds=7)))
        # Then it returns both windows with exact totals
        previous, last = summary["windows"]
        assert (previous["start"], previous["end"]) == (iso(at(11)), iso(at(12)))
        assert (previous["requests"], previous["cost_usd"]) == (1, 0.1)
        assert last == {
            "start": iso(at(12)),
            "end": iso(at(13)),
            "requests": 2,
            "input_tokens": 110,
            "output_tokens": 25,
            "reasoning_tokens": 0,
            "cost_usd": 0.5,
            "by_model": {
                "gpt-4o": {
                    "requests": 1, "input_tokens": 10, "output_tokens": 5,
                    "reasoning_tokens": 0, "cost_usd": 0.2,
                },
                "gpt-4o-mini": {
                    "requests": 1, "input_tokens": 100, "output_tokens": 20,
                    "reasoning_tokens": 0, "cost_usd": 0.3,
                },
            },
            "by_outcome": {"cancelled": 1, "completed": 1},
            "cache_hits": 0,
            "saved_usd": 0.0,
            "by_prompt": {
                "default": {
                    "requests": 2, "input_tokens": 110, "output_tokens": 25,
                    "reasoning_tokens": 0, "cost_usd": 0.5,
                },
            },
            "top_users": [
                {"user_id": "bob", "cost_usd": 0.3, "tokens": 120},
                {"user_id": "alice", "cost_usd": 0.2, "tokens": 15},
            ],
            "by_team": {
                "acme": {
                    "requests": 1, "input_tokens": 100, "output_tokens": 20,
                    "reasoning_tokens": 0, "cost_usd": 0.3,
                },
            },
            "skipped_lines": 2,
        }  # fmt: skip
        # And it stored both hour rollups and the day's rollup made of them
        items = {item["pk"]["S"]: item for item in scan(dynamodb, env["ROLLUPS_TABLE"])}
        assert set(items) == {f"HOUR#{iso(at(11))}", f"HOUR#{iso(at(12))}", f"DAY#{DAY_KEY}"}
        day = items[f"DAY#{DAY_KEY}"]
        assert (day["cost_micros"]["N"], day["requests"]["N"]) == ("600000", "3")
        assert (day["windows_present"]["N"], day["windows_expected"]["N"]) == ("2", "24")
        assert day["top_users"]["L"][0]["M"]["user_id"]["S"] == "alice"
        # And it published per-window metrics at the window's own start
        assert metric_max(cloudwatch, "WindowCostUSD", at(12)) == pytest.approx(0.5)
        model = [{"Name": "Model", "Value": "gpt-4o"}]
        assert metric_max(cloudwatch, "WindowCostUSD", at(12), model) == pytest.approx(0.2)
        assert metric_max(cloudwatch, "DailyCostUSD", at(12)) == pytest.approx(0.6)
        # And spend by budget scope: everything is the stack's, bob's 0.3 also his team's
        team, stack = ([{"Name": "Scope", "Value": v}] for v in ("team", "global"))
        assert metric_max(cloudwatch, "ScopeCostUSD", at(12), team) == pytest.approx(0.3)
        assert metric_max(cloudwatch, "ScopeCostUSD", at(12), stack) == pytest.approx(0.5)
        # And the day's item keeps the team's total for tollgate-admin
        by_team = day["by_team"]["M"]
        assert by_team["acme"]["M"]["cost_micros"]["N"] == "300000"

    def test_running_twice_writes_identical_items(
        self, env: dict[str, str], logs: CloudWatchLogsClient, dynamodb: DynamoDBClient
    ) -> None:
        # Given a window with records
        seed(
            logs,
            env["COST_LOG_GROUP"],
            [(at(12.25), cost_line(f"u{i}", 0.01 * i)) for i in range(5)],
        )
        event = scheduled(at(13) + timedelta(minutes=1))
        # When the same run happens twice
        first_summary = invoke(event)
        first_items = scan(dynamodb, env["ROLLUPS_TABLE"])
        second_summary = invoke(event)
        # Then the summary and every stored item are identical
        assert second_summary == first_summary
        assert scan(dynamodb, env["ROLLUPS_TABLE"]) == first_items

    def test_an_empty_window_is_rolled_up_as_zeros(
        self, env: dict[str, str], dynamodb: DynamoDBClient
    ) -> None:
        # Given a log group with no records at all
        # When the scheduled run fires
        summary = invoke(scheduled(at(5)))
        # Then both windows are zeros and stored
        assert [w["requests"] for w in summary["windows"]] == [0, 0]
        assert [w["cost_usd"] for w in summary["windows"]] == [0.0, 0.0]
        assert len(scan(dynamodb, env["ROLLUPS_TABLE"])) == 3


class TestBackfill:
    def test_a_backfill_rolls_up_exactly_the_windows_asked_for(
        self, env: dict[str, str], logs: CloudWatchLogsClient, dynamodb: DynamoDBClient
    ) -> None:
        # Given records over several hours
        seed(logs, env["COST_LOG_GROUP"], [(at(h + 0.5), cost_line("a", 0.001)) for h in range(8)])
        # When a backfill asks for 02:00-05:00
        summary = invoke({"start": iso(at(2)), "end": iso(at(5))})
        # Then exactly those three hours are rolled up
        assert [w["start"] for w in summary["windows"]] == [iso(at(h)) for h in (2, 3, 4)]
        assert [w["requests"] for w in summary["windows"]] == [1, 1, 1]
        hours = [i["pk"]["S"] for i in scan(dynamodb, env["ROLLUPS_TABLE"])]
        assert hours == [f"DAY#{DAY_KEY}"] + [f"HOUR#{iso(at(h))}" for h in (2, 3, 4)]

    def test_a_malformed_backfill_fails_loudly(self, env: dict[str, str]) -> None:
        with pytest.raises(ValueError, match="start"):
            invoke({"start": "not a time", "end": iso(at(1))})


class TestReconciliation:
    def seed_day(self, logs: CloudWatchLogsClient, group: str) -> None:
        next_day = DAY + timedelta(days=1)
        seed(
            logs,
            group,
            [
                (at(3), cost_line("alice", 0.25)),
                (at(20), cost_line("bob", 0.5)),
                # Started before midnight, logged after it: still the day's spend
                (at(0.01, day=next_day), cost_line("bob", 0.125, started=at(23.99))),
                (at(0.5, day=next_day), cost_line("bob", 7.0, started=at(0.4, day=next_day))),
            ],
        )

    def test_matching_counters_reconcile_to_zero(
        self, env: dict[str, str], logs: CloudWatchLogsClient, dynamodb: DynamoDBClient,
        cloudwatch: CloudWatchClient,
    ) -> None:  # fmt: skip
        # Given a day of records and budget counters that settled exactly that much
        self.seed_day(logs, env["COST_LOG_GROUP"])
        set_budget(dynamodb, env["USAGE_TABLE"], "alice", cost=250_000, reserved=0)
        set_budget(dynamodb, env["USAGE_TABLE"], "bob", cost=700_000, reserved=75_000)
        # When the day and the next day's first hour are rolled up
        invoke({"start": iso(DAY), "end": iso(at(25))})
        # Then the difference metric is published as zero at the next midnight
        assert metric_max(cloudwatch, "ReconciliationDifferenceUSD", at(24)) == 0.0

    def test_a_disagreeing_counter_is_reported_and_published(
        self, env: dict[str, str], logs: CloudWatchLogsClient, dynamodb: DynamoDBClient,
        cloudwatch: CloudWatchClient, caplog: pytest.LogCaptureFixture,
    ) -> None:  # fmt: skip
        # Given a day of records (0.875 USD) and counters that settled only 0.5 USD
        self.seed_day(logs, env["COST_LOG_GROUP"])
        set_budget(dynamodb, env["USAGE_TABLE"], "alice", cost=250_000, reserved=0)
        set_budget(dynamodb, env["USAGE_TABLE"], "bob", cost=400_000, reserved=150_000)
        # When the scheduled run closes the day
        invoke({"start": iso(DAY), "end": iso(at(23))})
        caplog.clear()
        invoke(scheduled(at(25) + timedelta(minutes=2)))
        # Then a warning names the difference and the metric carries it
        warnings = [
            (getattr(r, "day", None), getattr(r, "difference_usd", None))
            for r in caplog.records
            if r.levelname == "WARNING" and "disagree" in r.getMessage()
        ]
        assert warnings == [(DAY_KEY, 0.375)]
        assert metric_max(cloudwatch, "ReconciliationDifferenceUSD", at(24)) == 0.375

    def test_the_global_shards_are_reconciled_too(
        self, env: dict[str, str], logs: CloudWatchLogsClient, dynamodb: DynamoDBClient
    ) -> None:
        # Given a day of records (0.875 USD), users' counters that agree, and the global
        # day's shards (two of the possible 32 written) that settled 0.8 USD
        self.seed_day(logs, env["COST_LOG_GROUP"])
        set_budget(dynamodb, env["USAGE_TABLE"], "alice", cost=250_000, reserved=0)
        set_budget(dynamodb, env["USAGE_TABLE"], "bob", cost=625_000, reserved=0)
        set_budget(dynamodb, env["USAGE_TABLE"], "0", cost=500_000, reserved=0, scope="GLOBAL")
        set_budget(
            dynamodb, env["USAGE_TABLE"], "31", cost=400_000, reserved=100_000, scope="GLOBAL"
        )
        # When the day is closed
        summary = invoke({"start": iso(DAY), "end": iso(at(25))})
        # Then the summary reports both differences
        (result,) = summary["reconciliations"]
        assert result["day"] == DAY_KEY
        assert result["difference_usd"] == 0.0
        assert result["global_counters_cost_usd"] == 0.8
        assert result["global_difference_usd"] == 0.075
        assert result["within_tolerance"] is False

    def test_a_stack_without_a_global_limit_has_no_global_figure(
        self, env: dict[str, str], logs: CloudWatchLogsClient, dynamodb: DynamoDBClient
    ) -> None:
        self.seed_day(logs, env["COST_LOG_GROUP"])
        set_budget(dynamodb, env["USAGE_TABLE"], "alice", cost=250_000, reserved=0)
        set_budget(dynamodb, env["USAGE_TABLE"], "bob", cost=625_000, reserved=0)
        (result,) = invoke({"start": iso(DAY), "end": iso(at(25))})["reconciliations"]
        assert (result["global_difference_usd"], result["within_tolerance"]) == (None, True)

    def test_a_day_with_missing_windows_is_not_reconciled(
        self, env: dict[str, str], cloudwatch: CloudWatchClient
    ) -> None:
        # Given only the closing hour is rolled up (the day itself never was)
        invoke(scheduled(at(25) + timedelta(minutes=2)))
        # Then no difference is claimed
        assert metric_max(cloudwatch, "ReconciliationDifferenceUSD", at(24)) is None


class TestLocalEntryPoint:
    def test_make_aggregate_finds_the_local_run_through_its_state_file(
        self, env: dict[str, str], logs: CloudWatchLogsClient, moto_endpoint: str,
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    ) -> None:  # fmt: skip
        from tollgate.local.aggregate import main
        from tollgate.local.state import write_state

        # Given the local run's state file and no endpoint variables
        monkeypatch.setenv("TOLLGATE_LOCAL_STATE", str(tmp_path / "endpoints.json"))
        for name in env:
            monkeypatch.delenv(name)
        # main() sets POWERTOOLS_LOG_LEVEL; setenv first so the teardown removes it again.
        monkeypatch.setenv("POWERTOOLS_LOG_LEVEL", "WARNING")
        monkeypatch.delenv("POWERTOOLS_LOG_LEVEL")
        write_state(
            {
                "aws_endpoint": moto_endpoint,
                "cost_log_group": env["COST_LOG_GROUP"],
                "tables": {"UsageTable": env["USAGE_TABLE"], "RollupsTable": env["ROLLUPS_TABLE"]},
            }
        )
        seed(logs, env["COST_LOG_GROUP"], [(at(12.5), cost_line("alice", 0.5))])
        event_file = tmp_path / "event.json"
        event_file.write_text(json.dumps({"start": iso(at(12)), "end": iso(at(13))}))
        # When `make aggregate` runs
        assert main(["--event", str(event_file)]) == 0
        # Then it prints the summary of that window (after any log lines)
        out = capsys.readouterr().out
        printed = json.loads(out[out.index('{\n  "windows"') :])
        assert printed["windows"][0]["cost_usd"] == 0.5
