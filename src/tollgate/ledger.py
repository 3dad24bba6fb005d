"""The ledger: every charge to a budget goes through here, and every cost record.

A request is admitted by holding its upper-bound charge on each budget account that
applies to it (one conditional write per account, all at once); it is settled to its
actual charge however it ends; a refused or failed request gives its holds back. Every
write is idempotent (a retried write that had landed changes nothing), so a slow
DynamoDB cannot multiply a charge.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from tollgate.budget import BudgetLine, BudgetPolicy, Payer, expires_at, seconds_to_reset
from tollgate.errors import BudgetExceeded, RateLimited
from tollgate.observability import CostRecord, CostRecorder
from tollgate.ports import Account, Amount, BudgetCounters, RateWindow, RateWindowFull, UsageStore

SETTLE_ATTEMPTS = 4
RATE_WINDOW_FORMAT = "%Y-%m-%dT%H:%M"


@dataclass(slots=True)
class Hold:
    """What one request holds: per account, the amount its write put in place."""

    request_id: str
    payer: Payer
    started_at: datetime
    lines: tuple[BudgetLine, ...]
    amount: Amount
    held: dict[Account, Amount] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's counters after a write, with the limits they are measured against."""

    line: BudgetLine
    counters: BudgetCounters


def rate_window(started_at: datetime, limit: int) -> RateWindow:
    minute = started_at.astimezone(UTC).replace(second=0, microsecond=0)
    return RateWindow(
        window=minute.strftime(RATE_WINDOW_FORMAT),
        previous=(minute - timedelta(minutes=1)).strftime(RATE_WINDOW_FORMAT),
        limit=limit,
    )


class Ledger:
    def __init__(
        self,
        usage: UsageStore,
        policy: BudgetPolicy,
        recorder: CostRecorder,
        *,
        rate_limit_per_minute: int,
    ) -> None:
        self._usage = usage
        self.policy = policy
        self._recorder = recorder
        self._rate_limit = rate_limit_per_minute

    # ------------------------------------------------------------ admission

    async def admit(
        self,
        payer: Payer,
        request_id: str,
        amount: Amount,
        started_at: datetime,
        *,
        count_rate: bool = True,
    ) -> Hold:
        """Hold `amount` on every account of the payer, or refuse having held nothing.

        The user's day account also counts the request in its per-minute rate window.
        Raises BudgetExceeded (naming the refusing scope and window) or RateLimited.
        """
        hold = Hold(request_id, payer, started_at, self.policy.lines(payer, started_at), amount)
        rate = rate_window(started_at, self._rate_limit) if count_rate else None
        results = await asyncio.gather(
            *(
                self._reserve(hold, line, amount, rate if line.counts_rate else None)
                for line in hold.lines
            ),
            return_exceptions=True,
        )
        refused = [line for line, result in zip(hold.lines, results, strict=True) if result is None]
        failure = next((r for r in results if isinstance(r, BaseException)), None)
        if failure is None and not refused:
            return hold
        await self.give_back(hold)
        if isinstance(failure, RateWindowFull):
            raise RateLimited(
                f"more than {self._rate_limit} requests in a minute",
                retry_after=60 - started_at.second,
            )
        if failure is not None:
            raise failure
        raise self._refusal(refused[0], started_at)

    async def top_up(self, hold: Hold, extra: Amount) -> None:
        """Grow every account's hold by `extra`; BudgetExceeded if one has no room."""
        new = hold.amount + extra
        results = await asyncio.gather(
            *(self._reserve(hold, line, new, None) for line in hold.lines),
            return_exceptions=True,
        )
        for line, result in zip(hold.lines, results, strict=True):
            if isinstance(result, BaseException):
                raise result
            if result is None:
                raise self._refusal(line, hold.started_at)
        hold.amount = new

    async def _reserve(
        self, hold: Hold, line: BudgetLine, amount: Amount, rate: RateWindow | None
    ) -> BudgetCounters | None:
        counters = await self._usage.reserve(
            line.account,
            hold.request_id,
            amount,
            line.limits,
            expires_at(line.account),
            previous=hold.held.get(line.account),
            rate=rate,
        )
        if counters is not None:
            hold.held[line.account] = amount
        return counters

    def _refusal(self, line: BudgetLine, at: datetime) -> BudgetExceeded:
        account = line.account
        return BudgetExceeded(
            f"{account.scope} {'daily' if account.window == 'day' else 'monthly'} budget exhausted",
            retry_after=seconds_to_reset(at, account.window),
            scope=account.scope,
            window=account.window,
        )

    async def give_back(self, hold: Hold) -> None:
        """Release every hold of a request that was refused or never reached upstream."""
        held = list(hold.held.items())
        results = await asyncio.shield(
            asyncio.gather(
                *(
                    self._usage.release(account, hold.request_id, amount)
                    for account, amount in held
                ),
                return_exceptions=True,
            )
        )
        for (account, _), result in zip(held, results, strict=True):
            if isinstance(result, BaseException):
                self._recorder.error(
                    "release_failed",
                    request_id=hold.request_id,
                    scope=account.scope,
                    error=repr(result),
                )
            else:
                hold.held.pop(account, None)

    # ------------------------------------------------------------ settlement

    async def settle(self, hold: Hold, actual: Amount) -> list[Balance | None]:
        """Replace every hold by the actual charge (retried; if a write never lands, the
        hold stands and an error record says so). One balance per line, None if unknown."""
        return list(
            await asyncio.gather(*(self._settle_line(hold, line, actual) for line in hold.lines))
        )

    async def _settle_line(self, hold: Hold, line: BudgetLine, actual: Amount) -> Balance | None:
        held = hold.held.get(line.account)
        if held is None:
            return None
        delay = 0.1
        for attempt in range(SETTLE_ATTEMPTS):
            try:
                counters = await self._usage.settle(line.account, hold.request_id, held, actual)
            except Exception as exc:
                if attempt == SETTLE_ATTEMPTS - 1:
                    self._recorder.error(
                        "settlement_failed",
                        request_id=hold.request_id,
                        user_id=hold.payer.user_id,
                        scope=line.account.scope,
                        window=line.account.window,
                        reserved_tokens=held.tokens,
                        reserved_micros=held.micros,
                        actual_tokens=actual.tokens,
                        actual_micros=actual.micros,
                        error=repr(exc),
                    )
                    return None
                await asyncio.sleep(delay)
                delay *= 2
                continue
            hold.held.pop(line.account, None)
            if counters is None:  # settled by an earlier attempt whose answer was lost
                return await self.balance_of(line)
            return Balance(line, counters)
        return None

    async def balance_of(self, line: BudgetLine) -> Balance | None:
        try:
            return Balance(line, await self._usage.counters(line.account))
        except Exception:
            return None

    async def balances(self, payer: Payer, at: datetime) -> list[Balance]:
        """The payer's own accounts (the user scope), for GET /usage."""
        lines = [line for line in self.policy.lines(payer, at) if line.account.scope == "user"]
        counters = await asyncio.gather(*(self._usage.counters(line.account) for line in lines))
        return [Balance(line, value) for line, value in zip(lines, counters, strict=True)]

    # ------------------------------------------------------------ records

    def record(self, record: CostRecord, clock_start: float) -> None:
        """Write one cost record; `clock_start` is the request's time.monotonic() start."""
        record.latency_ms = round((time.monotonic() - clock_start) * 1000, 1)
        self._recorder.emit(record)

    def error(self, message: str, **fields: object) -> None:
        self._recorder.error(message, **fields)

    def warning(self, message: str, **fields: object) -> None:
        self._recorder.warning(message, **fields)
