"""Domain errors. Each knows its HTTP status and snake_case code; the web layer maps them once."""

from __future__ import annotations

from collections.abc import Sequence


class GatewayError(Exception):
    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        if self.retry_after is None:
            return {}
        return {"Retry-After": str(max(0, int(self.retry_after)))}

    def details(self) -> dict[str, str]:
        """Fields the error body carries beside `code` and `message`."""
        return {}


class BadRequest(GatewayError):
    status, code = 400, "bad_request"


class InvalidParameter(BadRequest):
    """A 400 in OpenAI's style: it names the parameter at fault."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = "invalid_request"


class Unauthenticated(GatewayError):
    status, code = 401, "unauthenticated"


class UnknownPlan(GatewayError):
    """The caller's plan claim names a plan that BUDGETS does not define."""

    status, code = 403, "unknown_plan"


class NotFound(GatewayError):
    status, code = 404, "not_found"


class UnknownModel(NotFound):
    """A /v1 request named a model that is not in MODEL_CHAIN."""

    code = "model_not_found"
    param = "model"


class ConversationLimit(GatewayError):
    status, code = 403, "conversation_limit"


class TurnConflict(GatewayError):
    status, code = 409, "turn_conflict"


class TooLarge(GatewayError):
    status, code = 413, "too_large"


class InvalidRequest(GatewayError):
    status, code = 422, "invalid_request"


class BudgetExceeded(GatewayError):
    status, code = 429, "budget_exceeded"

    def __init__(
        self, message: str, *, retry_after: int, scope: str = "user", window: str = "day"
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.scope = scope
        self.window = window

    def details(self) -> dict[str, str]:
        return {"scope": self.scope, "window": self.window}

    def headers(self) -> dict[str, str]:
        # OpenAI SDKs obey this instead of retrying a refusal that lasts until midnight.
        return {**super().headers(), "x-should-retry": "false"}


class RateLimited(GatewayError):
    status, code = 429, "rate_limited"


class UpstreamError(GatewayError):
    """The upstream call failed before streaming; `models_tried` in the order tried."""

    def __init__(
        self,
        message: str,
        *,
        models_tried: Sequence[str] = (),
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.models_tried = list(models_tried)


class UpstreamRejected(UpstreamError):
    status, code = 422, "upstream_rejected"


class UpstreamMisconfigured(UpstreamError):
    status, code = 502, "upstream_misconfigured"


class UpstreamUnavailable(UpstreamError):
    status, code = 503, "upstream_unavailable"


class DependencyUnavailable(GatewayError):
    """DynamoDB (or another AWS dependency) is down or throttling: fail closed."""

    status, code = 503, "dependency_unavailable"
