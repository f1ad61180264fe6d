"""The forwarding jobs of the in-memory store (:class:`bridge.store.base.ForwardQueue`), with
the engines' semantics (bridge/store/sql/forward_queue.sql): only the lease holder's outcome
counts, and each one it records adds an attempt to the job's kept history."""

from __future__ import annotations

import time
from collections.abc import Sequence

from bridge.models import ClaimedForward
from bridge.redact import redact_text
from bridge.store.console import MAX_ATTEMPT_DETAIL, MAX_ATTEMPTS_KEPT
from bridge.store.memory._state import MemoryState
from bridge.store.rows import ForwardJobListing


class MemoryForwardQueue(MemoryState):
    async def claim_forward_jobs(
        self, owner: str, now: float, limit: int, lease_seconds: float,
        kinds: Sequence[str] = ("email", "webhook"),
        exclude_targets: Sequence[tuple[str, str]] = (),
    ) -> list[ClaimedForward]:
        self._check()
        excluded = set(exclude_targets)
        due = sorted(
            ((j.next_attempt_at if j.status == "queued" else j.lease_until or 0.0), j.id)
            for j in self._jobs.values()
            if (j.kind, j.target) not in excluded
            and ((j.status == "queued" and j.kind in kinds and j.next_attempt_at <= now)
                 or (j.status == "sending" and (j.lease_until or 0.0) <= now)))[:limit]
        claimed = []
        for _, job_id in sorted(due, key=lambda d: d[1]):
            j = self._jobs[job_id]
            if j.kind not in kinds:
                continue
            j.status, j.lease_owner, j.lease_until = "sending", owner, now + lease_seconds
            j.attempts += 1
            claimed.append(ClaimedForward(j.id, j.inbound_id, j.kind, j.target, j.payload,
                                          j.attempts, j.deadline))
        return claimed

    def _forward_outcome(self, job_id: int, owner: str, at: float, outcome: str, detail: str,
                         error: str | None = None,
                         next_attempt_at: float | None = None) -> None:
        j = self._jobs.get(job_id)
        if j is None or j.status != "sending" or j.lease_owner != owner:
            return
        j.status = {"delivered": "delivered", "retry": "queued"}.get(outcome, "dead")
        if next_attempt_at is not None:
            j.next_attempt_at = next_attempt_at
        j.last_error, j.lease_until = error, None
        kept = self._attempts.setdefault(job_id, [])
        kept.append((self._id(), at, outcome, redact_text(detail)[:MAX_ATTEMPT_DETAIL]))
        del kept[:-MAX_ATTEMPTS_KEPT]

    async def forward_done(self, job_id: int, owner: str, now: float, *,
                           detail: str = "") -> None:
        self._check()
        self._forward_outcome(job_id, owner, now, "delivered", detail)

    async def forward_retry(
        self, job_id: int, owner: str, error: str, next_attempt_at: float, *,
        now: float | None = None, detail: str | None = None,
    ) -> None:
        self._check()
        error = redact_text(error)
        self._forward_outcome(job_id, owner, time.time() if now is None else now, "retry",
                              error if detail is None else detail, error, next_attempt_at)

    async def forward_dead(self, job_id: int, owner: str, error: str, *,
                           now: float | None = None, detail: str | None = None) -> None:
        self._check()
        error = redact_text(error)
        self._forward_outcome(job_id, owner, time.time() if now is None else now, "dead",
                              error if detail is None else detail, error)

    async def assign_thread(self, job_id: int, thread_key: str, message_id: str, at: float,
                            idle: float) -> str:
        self._check()
        job = self._jobs.get(job_id)
        if job is not None and job.thread_root is not None:
            return job.thread_root
        root, last = self._threads.get(thread_key, (message_id, at))
        if at - last >= idle:
            root = message_id
        self._threads[thread_key] = (root, max(last, at))
        if job is not None:
            job.thread_root = root
        return root

    async def list_forward_jobs(self, *, status: str | None = None,
                                limit: int = 100) -> list[ForwardJobListing]:
        self._check()
        return [ForwardJobListing(id=j.id, inbound_id=j.inbound_id, kind=j.kind,
                                  target=j.target, status=j.status, attempts=j.attempts,
                                  last_error=j.last_error, created_at=j.created_at)
                for j in sorted(self._jobs.values(), key=lambda j: -j.id)
                if not status or j.status == status][:limit]

    async def redeliver(self, job_ids: Sequence[int] | None, now: float,
                        deadline: float) -> int:
        self._check()
        again = [j for j in self._jobs.values()
                 if j.status == "dead" and (job_ids is None or j.id in job_ids)]
        for j in again:
            j.status, j.next_attempt_at, j.deadline, j.attempts = "queued", now, deadline, 0
        return len(again)
