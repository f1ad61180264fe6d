"""Forwarding jobs (:class:`bridge.store.base.ForwardQueue`): their listing, redelivery and
mail threads; claims and outcomes stay in the engines (PostgreSQL combines an outcome and
its attempt in one statement)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridge.store.queries import Array, Op, SqlRoles, count, row, rows, value

FORWARD_JOB_KEYS = ("id", "inbound_id", "kind", "target", "status", "attempts", "last_error",
                    "created_at")


def list_jobs(status: str | None, limit: int) -> Op[list[dict[str, Any]]]:
    if status:
        found = yield rows("list_forward_jobs_by_status", status, limit)
    else:
        found = yield rows("list_forward_jobs", limit)
    return [dict(zip(FORWARD_JOB_KEYS, tuple(r), strict=True)) for r in found]


def redeliver(job_ids: Sequence[int] | None, now: float, deadline: float) -> Op[int]:
    if job_ids is None:
        return int((yield count("redeliver_all", now, deadline)))
    return int((yield count("redeliver", now, deadline, Array(job_ids))))


def assign_thread(job_id: int, thread_key: str, message_id: str, at: float,
                  idle: float) -> Op[str]:
    decided = yield row("job_thread", job_id)
    if decided is not None and decided[0] is not None:
        return str(decided[0])
    root = yield value("join_thread", thread_key, message_id, at, idle)
    yield count("set_thread_root", root, job_id)
    return str(root)


class ForwardQueueMethods(SqlRoles):
    async def list_forward_jobs(
        self, *, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        return await self._read_op(lambda: list_jobs(status, limit))

    async def redeliver(self, job_ids: Sequence[int] | None, now: float, deadline: float) -> int:
        """Queue dead letters again (all of them when ``job_ids`` is None)."""
        return await self._lock_op(lambda: redeliver(job_ids, now, deadline))

    async def assign_thread(
        self, job_id: int, thread_key: str, message_id: str, at: float, idle: float
    ) -> str:
        return await self._lock_op(
            lambda: assign_thread(job_id, thread_key, message_id, at, idle))
