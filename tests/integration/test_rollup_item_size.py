"""A window's rollup item stays under DynamoDB's 400 KB item limit whatever its users' ids.

User ids may be 128 characters in any script: 2,000 of them in four-byte characters are a
megabyte, so the per-user totals are capped by their size in bytes, not by their count.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import pytest

from tollgate.adapters.rollup_store import (
    MAX_ITEM_BYTES,
    RollupStore,
    item_size,
    rollup_attributes,
)
from tollgate.aggregation.rollups import Counts, Rollup, UserTotal
from tollgate.aggregation.windows import Window
from tollgate.local.tables import create_tables

if TYPE_CHECKING:
    from mypy_boto3_dynamodb import DynamoDBClient

pytestmark = pytest.mark.integration

START = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=3)
WINDOW = Window(START, START + timedelta(hours=1))


def crowded_rollup(users: int = 2000) -> Rollup:
    """`users` spenders with 128-character ids of four-byte characters, biggest first."""
    rollup = Rollup(WINDOW)
    for n in range(users):
        user_id = f"{n:05d}" + "\N{GRINNING FACE}" * 123
        assert len(user_id) == 128
        rollup.users[user_id] = UserTotal(cost_micros=10_000_000 - n, tokens=1000 + n)
    return rollup


def test_the_users_kept_fit_in_the_item_and_are_the_biggest_spenders() -> None:
    rollup = crowded_rollup()
    attributes = rollup_attributes(rollup, keep_users=True)
    assert item_size(attributes) < MAX_ITEM_BYTES
    kept = attributes["users"]
    assert 0 < len(kept) < len(rollup.users)
    assert set(kept) == {user_id for user_id, _ in rollup.top_users(len(kept))}
    assert attributes["users_complete"] is False
    assert [entry["user_id"] for entry in attributes["top_users"]] == [
        user_id for user_id, _ in rollup.top_users(10)
    ]


def test_a_small_window_keeps_every_user() -> None:
    attributes = rollup_attributes(crowded_rollup(users=50), keep_users=True)
    assert len(attributes["users"]) == 50
    assert attributes["users_complete"] is True


def test_dynamodb_accepts_the_crowded_window_item(dynamodb: DynamoDBClient) -> None:
    # Given a rollups table (as the template defines it) on the DynamoDB server
    table = f"rollups-size-{START:%H%M%S%f}"
    create_tables(dynamodb, {"RollupsTable": table})
    store = RollupStore(dynamodb, table)
    # When the crowded window is stored and read back
    store.put_window(crowded_rollup())
    (stored,) = store.get_windows([WINDOW]).values()
    # Then it holds the biggest spenders and says that smaller ones were dropped
    assert not stored.users_complete
    assert stored.top_users(1)[0][0].startswith("00000")


def test_crowded_users_and_teams_together_fit_in_the_item() -> None:
    # Given a window with the crowded users and 2,000 teams with equally long ids
    rollup = crowded_rollup()
    for n in range(2000):
        team = f"{n:05d}" + "\N{GRINNING FACE}" * 123
        rollup.teams[team] = Counts(requests=1, cost_micros=5_000_000 - n)
    # When its item is built
    attributes = rollup_attributes(rollup, keep_users=True)
    # Then it fits, keeping the biggest team spenders and saying that some were dropped
    assert item_size(attributes) < MAX_ITEM_BYTES
    kept = attributes["by_team"]
    assert 0 < len(kept) < len(rollup.teams)
    assert set(kept) == {team for team, _ in rollup.top_teams(len(kept))}
    assert attributes["teams_complete"] is False
