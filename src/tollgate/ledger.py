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
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from tollgate.budget import BudgetLine, BudgetPolicy, Payer, expires_at, seconds_to_reset
from tollgate.errors import BudgetExceeded, RateLimited
from tollgate.observability import CostRecord, CostRecorder
from tollgate.ports import (
    Account,
    Amount,
    BudgetAlerts,
    BudgetCounters,
    RateWindow,
    RateWindowFull,
    UsageStore,
)

SETTLE_ATTEMPTS = 4
RELEASE_RETRIES = 6
RELEASE_RETRY_FIRST_S = 0.5
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
    # Writes whose answer never came (a timeout): they may have landed, so a give-back
    # releases them too (a release only matches the hold it names).
    unconfirmed: dict[Account, Amount] = field(default_factory=dict)
    # Holds answered only after a retry: an earlier try may land late, so closing bars it.
    retried: set[Account] = field(default_factory=set)


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
        alerts: BudgetAlerts | None = None,
    ) -> None:
        self._usage = usage
        self.policy = policy
        self._recorder = recorder
        self._rate_limit = rate_limit_per_minute
        self._alerts = alerts
        self._background: set[asyncio.Task[None]] = set()

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
        if failure is None and refused and all(line.account.scope == "global" for line in refused):
            refused = await self._other_shards(hold, refused)
        if failure is None and not refused:
            return hold
        await self.give_back(hold)
        if isinstance(failure, RateWindowFull):
            raise self._rate_limited(started_at) from failure
        if failure is not None:
            raise failure
        raise self._refusal(refused[0], started_at)

    async def _other_shards(self, hold: Hold, refused: list[BudgetLine]) -> list[BudgetLine]:
        """A global shard without room: try the window's other shards, one at a time.

        Only on this refusal path, so an admitted request still takes one round trip; a
        request is refused only when no shard has room for it (see BudgetPolicy).
        """
        still_refused = []
        for line in refused:
            for other in self.policy.other_shards(line):
                if await self._reserve(hold, other, hold.amount, None) is not None:
                    hold.lines = tuple(other if held is line else held for held in hold.lines)
                    break
            else:
                still_refused.append(line)
        return still_refused

    def user_day(self, payer: Payer, at: datetime) -> BudgetLine:
        """The user's day account: it keeps the rate window and the `usage` event's figures."""
        return self.policy.lines(payer, at)[0]

    async def count_request(self, payer: Payer, request_id: str, started_at: datetime) -> None:
        """Count a request that holds no budget (a cached reply) in the per-minute rate window;
        RateLimited when the minute is full."""
        account = self.user_day(payer, started_at).account
        rate = rate_window(started_at, self._rate_limit)
        try:
            await self._usage.count_rate(account, request_id, rate, expires_at(account))
        except RateWindowFull as exc:
            raise self._rate_limited(started_at) from exc

    async def count_refused_hit(
        self, payer: Payer, request_id: str, started_at: datetime, refusal: object
    ) -> None:
        """A cache hit whose budget hold was refused: the rate limit still counts it."""
        if not isinstance(refusal, BudgetExceeded):
            assert isinstance(refusal, BaseException)
            raise refusal  # rate limited, or the budget store is unavailable
        if refusal.scope == "user" and refusal.window == "day":
            # The user's day account refused, and with it the write that counts the rate.
            await self.count_request(payer, request_id, started_at)
        # Otherwise the user's day account (every hold's first line) counted it before the
        # refusing account gave the holds back.

    def _rate_limited(self, at: datetime) -> RateLimited:
        return RateLimited(
            f"more than {self._rate_limit} requests in a minute", retry_after=60 - at.second
        )

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
        account = line.account
        hold.unconfirmed[account] = amount
        counters = await self._usage.reserve(
            account,
            hold.request_id,
            amount,
            line.limits,
            expires_at(account),
            previous=hold.held.get(account),
            rate=rate,
        )
        del hold.unconfirmed[account]
        if counters is not None:
            hold.held[account] = amount
            if counters.retried:
                hold.retried.add(account)
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
        """Release every hold of a request that was refused or never reached upstream.

        A release that fails (DynamoDB slow or down) is retried in the background for a
        while: a refusal must not leave a phantom hold for the rest of the day.
        """
        # A hold whose write was never answered, or answered only after a retry, may still
        # land late: its release bars that.
        held = [(account, amount, account in hold.retried) for account, amount in hold.held.items()]
        held += [(account, amount, True) for account, amount in hold.unconfirmed.items()]
        hold.held, hold.unconfirmed = {}, {}
        results = await asyncio.shield(
            asyncio.gather(
                *(
                    self._usage.release(account, hold.request_id, amount, bar_late_writes=bar)
                    for account, amount, bar in held
                ),
                return_exceptions=True,
            )
        )
        for (account, amount, _), result in zip(held, results, strict=True):
            if isinstance(result, BaseException):
                self._later(self._release_eventually(hold.request_id, account, amount))

    async def _release_eventually(self, request_id: str, account: Account, amount: Amount) -> None:
        delay = RELEASE_RETRY_FIRST_S
        for attempt in range(RELEASE_RETRIES):
            await asyncio.sleep(delay)
            try:
                await self._usage.release(account, request_id, amount, bar_late_writes=True)
                return
            except Exception as exc:
                if attempt == RELEASE_RETRIES - 1:
                    self._recorder.error(
                        "release_failed",
                        request_id=request_id,
                        scope=account.scope,
                        window=account.window,
                        held_tokens=amount.tokens,
                        held_micros=amount.micros,
                        error=repr(exc),
                    )
            delay *= 2

    def _later(self, work: Coroutine[Any, Any, None]) -> None:
        """Run `work` off the request's path, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

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
                counters = await self._usage.settle(
                    line.account,
                    hold.request_id,
                    held,
                    actual,
                    bar_late_writes=line.account in hold.retried,
                )
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
            balance = Balance(line, counters)
            if self._alerts is not None and line.account.scope != "user":
                self._observe(self._alerts, balance)
            return balance
        return None

    def _observe(self, alerts: BudgetAlerts, balance: Balance) -> None:
        """Team and global utilisation, watched off the request's path."""
        line = balance.line
        self._later(alerts.observe(line.account, line.limits, balance.counters))

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
