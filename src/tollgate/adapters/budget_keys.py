"""Where a budget account lives in the usage table: one home for the key format that the
chat function writes and the aggregator and `tollgate-admin` read.

`USER#<user id>`, `TEAM#<team id>` or `GLOBAL#<shard>` × `DAY#<yyyy-mm-dd>` or `MONTH#<yyyy-mm>`.
"""

from __future__ import annotations

from typing import Any

from tollgate.budget import MAX_GLOBAL_SHARDS
from tollgate.ports import Account, Window

SCOPE_PREFIX = {"user": "USER", "team": "TEAM", "global": "GLOBAL"}
WINDOW_PREFIX = {"day": "DAY", "month": "MONTH"}


def budget_key(account: Account) -> dict[str, Any]:
    return {
        "pk": {"S": f"{SCOPE_PREFIX[account.scope]}#{account.owner}"},
        "sk": {"S": f"{WINDOW_PREFIX[account.window]}#{account.period}"},
    }


def global_shard_accounts(window: Window, period: str) -> list[Account]:
    """Every shard a global window may have written (the shard count follows the limit and
    is at most MAX_GLOBAL_SHARDS; a shard never written has no item and counts zero)."""
    return [Account("global", str(shard), window, period) for shard in range(MAX_GLOBAL_SHARDS)]
