"""Forwarding jobs (:class:`bridge.store.base.ForwardQueue`): their listing, redelivery and
mail threads; claims and outcomes stay in the engines (PostgreSQL combines an outcome and
its attempt in one statement)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from bridge.models import ClaimedForward
from bridge.redact import redact_text
from bridge.store.console import MAX_ATTEMPT_DETAIL, MAX_ATTEMPTS_KEPT
from bridge.store.queries import Array, Op, SqlRoles, count, row, rows, value
from bridge.store.rows import ForwardJobListing

FORWARD_JOB_KEYS = ("id", "inbound_id", "kind", "target", "status", "attempts", "last_error",
                    "created_at")


def list_jobs(status: str | None, limit: int) -> Op[list[ForwardJobListing]]:
    if status:
        found = yield rows("list_forward_jobs_by_status", status, limit)
    else:
        found = yield rows("list_forward_jobs", limit)
    return [cast(ForwardJobListing, dict(zip(FORWARD_JOB_KEYS, tuple(r), strict=True)))
            for r in found]


def redeliver(job_ids: Sequence[int] | None, now: float, deadline: float) -> Op[int]:
    if job_ids is None:
        return int((yield count("redeliver_all", now, deadline)))
    return int((yield count("redeliver", now, deadline, Array(job_ids))))


@dataclass(frozen=True)
class ForwardClaim:
    """Which due jobs to claim (see :meth:`bridge.store.base.ForwardQueue.claim_forward_jobs`)."""

    owner: str
    now: float
    limit: int
    lease_seconds: float
    kinds: Sequence[str]
    exclude_targets: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class ForwardOutcome:
    """One attempt's outcome for a forwarding job, as its lease holder reports it: the
    detail (the target's answer, or the error) goes into the job's attempts, redacted and
    cut at MAX_ATTEMPT_DETAIL."""

    job_id: int
    owner: str
    at: float
    outcome: Literal["delivered", "retry", "dead"]
    detail: str
    error: str | None = None
    next_attempt_at: float | None = None

    def kept_detail(self) -> str:
        return redact_text(self.detail)[:MAX_ATTEMPT_DETAIL]

    def changes(self) -> tuple[Any, ...]:
        """What the outcome sets besides the status: the next attempt (a retry's) and the
        error (none for a delivery)."""
        return (self.next_attempt_at if self.outcome == "retry" else None,
                None if self.outcome == "delivered" else self.error)


def record_forward_outcome(o: ForwardOutcome) -> Op[None]:
    """The job's outcome and, in the same transaction, its attempt in the history (only
    when the caller holds the lease: an outcome ignored leaves no attempt either); the job
    keeps its last MAX_ATTEMPTS_KEPT attempts."""
    if not (yield count("forward_outcome", o.outcome, *o.changes(), o.job_id, o.owner)):
        return
    yield count("insert_attempt", o.job_id, o.at, o.outcome, o.kept_detail())
    yield count("prune_job_attempts", o.job_id, o.job_id, MAX_ATTEMPTS_KEPT)


def assign_thread(job_id: int, thread_key: str, message_id: str, at: float,
                  idle: float) -> Op[str]:
    decided = yield row("job_thread", job_id)
    if decided is not None and decided[0] is not None:
        return str(decided[0])
    root = yield value("join_thread", thread_key, message_id, at, idle)
    yield count("set_thread_root", root, job_id)
    return str(root)


class ForwardQueueMethods(SqlRoles):
    async def claim_forward_jobs(
        self, owner: str, now: float, limit: int, lease_seconds: float,
        kinds: Sequence[str] = ("email", "webhook"),
        exclude_targets: Sequence[tuple[str, str]] = (),
    ) -> list[ClaimedForward]:
        return await self._claim_forward_jobs(ForwardClaim(
            owner, now, limit, lease_seconds, kinds, exclude_targets))

    async def _claim_forward_jobs(self, claim: ForwardClaim) -> list[ClaimedForward]:
        raise NotImplementedError

    async def forward_done(self, job_id: int, owner: str, now: float, *,
                           detail: str = "") -> None:
        await self._forward_outcome(ForwardOutcome(job_id, owner, now, "delivered", detail))

    async def forward_retry(
        self, job_id: int, owner: str, error: str, next_attempt_at: float, *,
        now: float | None = None, detail: str | None = None,
    ) -> None:
        error = redact_text(error)
        await self._forward_outcome(ForwardOutcome(
            job_id, owner, time.time() if now is None else now, "retry",
            error if detail is None else detail, error, next_attempt_at))

    async def forward_dead(self, job_id: int, owner: str, error: str, *,
                           now: float | None = None, detail: str | None = None) -> None:
        error = redact_text(error)
        await self._forward_outcome(ForwardOutcome(
            job_id, owner, time.time() if now is None else now, "dead",
            error if detail is None else detail, error))

    async def _forward_outcome(self, outcome: ForwardOutcome) -> None:
        await self._write_op(lambda: record_forward_outcome(outcome))

    async def list_forward_jobs(
        self, *, status: str | None = None, limit: int = 100
    ) -> list[ForwardJobListing]:
        return await self._read_op(lambda: list_jobs(status, limit))

    async def redeliver(self, job_ids: Sequence[int] | None, now: float, deadline: float) -> int:
        """Queue dead letters again (all of them when ``job_ids`` is None)."""
        return await self._lock_op(lambda: redeliver(job_ids, now, deadline))

    async def assign_thread(
        self, job_id: int, thread_key: str, message_id: str, at: float, idle: float
    ) -> str:
        return await self._lock_op(
            lambda: assign_thread(job_id, thread_key, message_id, at, idle))
