"""DynamoDB: the response cache, as items of the conversations table.

    CACHE#<sha256 of the key>  REPLY  text, model, cost_micros, expires_at (TTL)

One GetItem per lookup, one PutItem per stored reply (a repeat of a put is the same
item: idempotent). TTL deletes lazily, so a read checks `expires_at` itself.
"""

from __future__ import annotations

from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from tollgate.adapters.aws import as_unavailable
from tollgate.adapters.dynamodb_http import AsyncDynamoDB, shared_dynamodb
from tollgate.ports import CachedReply

SORT_KEY = "REPLY"


def cache_key(key: str) -> dict[str, Any]:
    return {"pk": {"S": f"CACHE#{key}"}, "sk": {"S": SORT_KEY}}


class DynamoReplyCache:
    def __init__(self, table_name: str, db: AsyncDynamoDB | None = None) -> None:
        self._table = table_name
        self._db = db or shared_dynamodb()

    async def _call(self, operation: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._db.call(operation, {"TableName": self._table, **kwargs})
        except (ClientError, BotoCoreError) as exc:
            unavailable = as_unavailable(exc)
            if unavailable is not None:
                raise unavailable from exc
            raise
        return response

    async def get(self, key: str, now: int) -> CachedReply | None:
        # Eventually consistent: a reply stored a moment ago may be missed once, never wrong.
        response = await self._call("GetItem", Key=cache_key(key))
        item = response.get("Item")
        if item is None or int(item["expires_at"]["N"]) <= now:
            return None
        return CachedReply(
            text=item["text"]["S"],
            model=item["model"]["S"],
            cost_micros=int(item["cost_micros"]["N"]),
            expires_at=int(item["expires_at"]["N"]),
        )

    async def put(self, key: str, reply: CachedReply) -> None:
        await self._call(
            "PutItem",
            Item={
                **cache_key(key),
                "text": {"S": reply.text},
                "model": {"S": reply.model},
                "cost_micros": {"N": str(reply.cost_micros)},
                "expires_at": {"N": str(reply.expires_at)},
            },
        )
