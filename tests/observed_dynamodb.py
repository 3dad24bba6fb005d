"""The gateway's DynamoDB client with its calls counted and chosen operations made to fail."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

from botocore.exceptions import EndpointConnectionError

from tollgate.adapters.dynamodb_http import AsyncDynamoDB


class ObservedDynamoDB(AsyncDynamoDB):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: Counter[str] = Counter()
        self.failing: set[str] = set()  # operations that fail as if the network were down

    async def call(self, operation: str, params: Mapping[str, Any]) -> dict[str, Any]:
        self.calls[operation] += 1
        if operation in self.failing:
            raise EndpointConnectionError(endpoint_url=self.endpoint.url)
        return await super().call(operation, params)
