"""Team and global budget alerts over real HTTP: DynamoDB, SNS and SQS on the moto server.

The alarm topic's notifications are read from an SQS queue subscribed to it, as an
operator's own subscriber would receive them.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from dataclasses import dataclass
from typing import Any

import boto3
import httpx
import jwt
import pytest

from tests.gateway_fixture import JWT_SECRET
from tollgate.adapters.budget_alerts import AlertLatch, BudgetAlertNotifier, SnsNotifier
from tollgate.adapters.dynamodb_http import AsyncDynamoDB
from tollgate.observability import CostRecorder, build_logger
from tollgate.ports import Account, BudgetCounters, Limits

pytestmark = pytest.mark.integration


@dataclass
class AlarmTopic:
    arn: str
    queue_url: str
    sqs: Any

    def notifications(self, expected: int = 0, timeout_s: float = 5.0) -> list[dict[str, Any]]:
        """Every notification delivered so far (waiting until `expected` arrived)."""
        found: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout_s
        while True:
            response = self.sqs.receive_message(
                QueueUrl=self.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0
            )
            messages = response.get("Messages", [])
            for message in messages:
                envelope = json.loads(message["Body"])
                found.append({"subject": envelope["Subject"], **json.loads(envelope["Message"])})
                self.sqs.delete_message(
                    QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"]
                )
            if not messages and (len(found) >= expected or time.monotonic() > deadline):
                return found
            if not messages:
                time.sleep(0.1)


@pytest.fixture
def alarm_topic(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> AlarmTopic:
    # The gateway's own SNS client finds the local server the way boto3 always does.
    monkeypatch.setenv("AWS_ENDPOINT_URL_SNS", moto_endpoint)
    sns = boto3.client("sns", endpoint_url=moto_endpoint)
    sqs = boto3.client("sqs", endpoint_url=moto_endpoint)
    suffix = uuid.uuid4().hex[:8]
    topic_arn = sns.create_topic(Name=f"alarms-{suffix}")["TopicArn"]
    queue_url = sqs.create_queue(QueueName=f"alarm-reader-{suffix}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])[
        "Attributes"
    ]["QueueArn"]
    sns.subscribe(TopicArn=topic_arn, Protocol="sqs", Endpoint=queue_arn)
    return AlarmTopic(topic_arn, queue_url, sqs)


def notifier(
    moto_endpoint: str, table: str, topic: AlarmTopic, stream: io.StringIO
) -> BudgetAlertNotifier:
    """One chat instance's alerts (each instance has its own clients and memory)."""
    dynamodb = AsyncDynamoDB.from_environment(endpoint_url=moto_endpoint)
    sns = boto3.client("sns", endpoint_url=moto_endpoint)
    recorder = CostRecorder(logger=build_logger(stream), stream=stream)
    return BudgetAlertNotifier(AlertLatch(table, dynamodb), SnsNotifier(topic.arn, sns), recorder)


def percent_of(blob: dict[str, Any]) -> float:
    value = blob["BudgetUtilizationPercent"]  # a one-value list in Powertools' EMF
    return float(value[0] if isinstance(value, list) else value)


def utilization_lines(stream: io.StringIO) -> list[tuple[str, float]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if '"_aws"' in line]
    return [
        (line["Scope"], percent_of(line)) for line in lines if "BudgetUtilizationPercent" in line
    ]


def test_a_team_window_notifies_once_per_threshold_across_instances(
    moto_endpoint: str, table_names: dict[str, str], alarm_topic: AlarmTopic
) -> None:
    # Given two instances watching the same team's day, limited to 1,000 tokens or $1
    stream = io.StringIO()
    first = notifier(moto_endpoint, table_names["UsageTable"], alarm_topic, stream)
    second = notifier(moto_endpoint, table_names["UsageTable"], alarm_topic, io.StringIO())
    account = Account("team", "acme", "day", "2026-03-10")
    limits = Limits(tokens=1000, cost_micros=1_000_000)

    async def observe(alerts: BudgetAlertNotifier, tokens: int, micros: int = 0) -> None:
        await alerts.observe(account, limits, BudgetCounters(account.period, tokens, micros))

    async def scenario() -> None:
        await observe(first, 500)  # 50 %: nothing
        await observe(first, 850)  # passes 80 %
        await observe(second, 900)  # another instance, still past 80 %
        await observe(first, 100, micros=1_000_000)  # the dollar limit reached: 100 %
        await observe(second, 1200)  # past 100 % again, on the other instance
        await observe(first, 1300)

    # When the window passes each threshold more than once
    asyncio.run(scenario())

    # Then exactly one notification per threshold reached the topic
    notes = alarm_topic.notifications(expected=2)
    assert sorted(n["threshold_percent"] for n in notes) == [80, 100]
    eighty = next(n for n in notes if n["threshold_percent"] == 80)
    assert eighty["scope"] == "team"
    assert eighty["owner"] == "acme"
    assert eighty["window"] == "day"
    assert eighty["period"] == "2026-03-10"
    assert eighty["utilization_percent"] == 85.0
    assert eighty["token_limit"] == 1000
    assert eighty["cost_limit_usd"] == 1.0
    assert eighty["subject"] == "Tollgate budget: team day 2026-03-10 passed 80%"
    # And every observation emitted the utilisation metric by scope (the larger unit's share)
    assert utilization_lines(stream) == [
        ("team", 50.0),
        ("team", 85.0),
        ("team", 100.0),
        ("team", 130.0),
    ]


def test_a_new_window_notifies_again(
    moto_endpoint: str, table_names: dict[str, str], alarm_topic: AlarmTopic
) -> None:
    alerts = notifier(moto_endpoint, table_names["UsageTable"], alarm_topic, io.StringIO())
    limits = Limits(tokens=100, cost_micros=None)
    for period in ("2026-03", "2026-04"):
        account = Account("team", "acme", "month", period)
        asyncio.run(alerts.observe(account, limits, BudgetCounters(period, tokens=90)))

    notes = alarm_topic.notifications(expected=2)
    assert sorted((n["period"], n["threshold_percent"]) for n in notes) == [
        ("2026-03", 80),
        ("2026-04", 80),
    ]


def test_global_shards_share_one_notification_per_threshold(
    moto_endpoint: str, table_names: dict[str, str], alarm_topic: AlarmTopic
) -> None:
    # Given the global day split over shards, each with its share of the limit
    stream = io.StringIO()
    alerts = notifier(moto_endpoint, table_names["UsageTable"], alarm_topic, stream)
    share = Limits(tokens=250, cost_micros=None)

    async def scenario() -> None:
        for shard in ("0", "1", "2", "3"):
            account = Account("global", shard, "day", "2026-03-10")
            await alerts.observe(account, share, BudgetCounters(account.period, tokens=210))

    # When every shard passes 80 % of its share
    asyncio.run(scenario())

    # Then the window notifies once, for the whole stack
    notes = alarm_topic.notifications(expected=1)
    assert [(n["scope"], n["owner"], n["threshold_percent"]) for n in notes] == [
        ("global", "all", 80)
    ]
    assert notes[0]["shard"] == "0"
    assert utilization_lines(stream) == [("global", 84.0)] * 4


def test_a_failed_publish_is_retried_by_the_next_observation(
    moto_endpoint: str, table_names: dict[str, str], alarm_topic: AlarmTopic
) -> None:
    # Given an instance whose topic does not exist (the publish fails), and a healthy one
    healthy = notifier(moto_endpoint, table_names["UsageTable"], alarm_topic, io.StringIO())
    dynamodb = AsyncDynamoDB.from_environment(endpoint_url=moto_endpoint)
    sns = boto3.client("sns", endpoint_url=moto_endpoint)
    stream = io.StringIO()
    recorder = CostRecorder(logger=build_logger(stream), stream=stream)
    missing = alarm_topic.arn + "-missing"
    broken = BudgetAlertNotifier(
        AlertLatch(table_names["UsageTable"], dynamodb), SnsNotifier(missing, sns), recorder
    )
    account = Account("team", "acme", "day", "2026-03-10")
    limits = Limits(tokens=100, cost_micros=None)
    counters = BudgetCounters(account.period, tokens=90)

    # When the failing instance observes first, then a healthy one
    asyncio.run(broken.observe(account, limits, counters))  # does not raise
    asyncio.run(healthy.observe(account, limits, counters))

    # Then the failure was logged, and the notification still went out once
    assert "budget_alert_failed" in stream.getvalue()
    assert [n["threshold_percent"] for n in alarm_topic.notifications(expected=1)] == [80]


def team_token(user_id: str, team: str) -> str:
    claims = {"sub": user_id, "team": team, "exp": int(time.time()) + 3600}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def test_the_gateway_notifies_when_a_team_passes_its_limit(
    gateway_factory, offline_model, alarm_topic: AlarmTopic
) -> None:
    # Given a gateway whose completions hold exactly what they are charged (the reply fills
    # the cap), and a team day limit worth five of them
    offline_model.set_config(reply_tokens=20)
    body = {
        "model": "gpt-4o-mini",
        "max_tokens": 20,
        "messages": [{"role": "user", "content": "Hi"}],
    }

    def complete(client: httpx.Client, token: str) -> httpx.Response:
        return client.post(
            "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
        )

    with gateway_factory() as probe:
        charge = complete(probe.http, team_token("probe", "none")).json()["usage"]["total_tokens"]
    budgets = {"team": {"day": {"tokens": 5 * charge}}}
    with gateway_factory(budgets=json.dumps(budgets), alert_topic_arn=alarm_topic.arn) as gateway:
        assert complete(gateway.http, team_token("warmup", "other")).status_code == 200
        # When the team spends its whole day, then is refused twice
        statuses = [
            complete(gateway.http, team_token(f"member-{i}", "acme")).status_code for i in range(7)
        ]
        notes = alarm_topic.notifications(expected=2)
        blobs = gateway.emf_blobs()

    # Then the topic got exactly one 80 % and one 100 % notification for that team's day
    assert statuses == [200] * 5 + [429] * 2
    assert sorted((n["scope"], n["owner"], n["window"], n["threshold_percent"]) for n in notes) == [
        ("team", "acme", "day", 80),
        ("team", "acme", "day", 100),
    ]
    # And the utilisation metric reached 100 % for the team scope
    utilization = [b for b in blobs if "BudgetUtilizationPercent" in b]
    assert {b["Scope"] for b in utilization} == {"team"}
    assert max(percent_of(b) for b in utilization) == 100.0
