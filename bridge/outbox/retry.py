"""Retry decisions for outbox messages: pure, so they can be tested without time passing."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum

from bridge.errors import PermanentUpstreamError, UpstreamError


class Action(StrEnum):
    RETRY = "retry"
    FALLBACK = "fallback"  # try the account's next upstream now
    FAIL = "fail"


@dataclass(frozen=True)
class RetryDecision:
    action: Action
    delay: float = 0.0
    reason: str = ""


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter, capped; give up after ``give_up_after`` seconds."""

    base: float = 2.0
    cap: float = 600.0
    give_up_after: float = 86400.0

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        ceiling = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        # Full jitter spreads the retries of many messages failed at once (one outage).
        return (rng or random).uniform(ceiling / 2, ceiling)

    def decide(
        self,
        error: UpstreamError,
        *,
        attempt: int,
        age: float,
        has_fallback: bool,
        rng: random.Random | None = None,
    ) -> RetryDecision:
        if isinstance(error, PermanentUpstreamError):
            return RetryDecision(Action.FAIL, reason=str(error))
        if has_fallback and not error.ambiguous:
            # Only a failure that surely did not send may move on to another provider:
            # after an ambiguous one the first provider may still deliver it.
            return RetryDecision(Action.FALLBACK, reason=str(error))
        delay = self.backoff(attempt, rng)
        if error.retry_after is not None:
            delay = max(delay, min(error.retry_after, self.cap))
        if age + delay > self.give_up_after:
            return RetryDecision(Action.FAIL, reason=f"gave up after {int(age)}s: {error}")
        return RetryDecision(Action.RETRY, delay=delay, reason=str(error))
