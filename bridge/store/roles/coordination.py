"""Coordination of a cluster's processes (:class:`bridge.store.base.Coordination`)."""

from __future__ import annotations

import secrets
from collections.abc import Callable

from bridge.store.queries import Op, SqlRoles, count, rows, single, value

# The tables whose rows are leased: the blocks that list their holders and end leases.
_LEASED_TABLES = (
    ("lease_owners_messages", "end_leases_messages"),
    ("lease_owners_forward_jobs", "end_leases_forward_jobs"),
    ("lease_owners_outgoing_mail", "end_leases_outgoing_mail"),
)


def acquire_lease(name: str, owner: str, now: float, ttl: float) -> Op[bool]:
    return bool((yield count("acquire_lease", name, owner, now + ttl, now)))


def heartbeat(owner: str, now: float, ttl: float) -> Op[int]:
    yield count("mark_alive", owner, now)
    yield count("forget_silent", now - ttl)
    return int((yield value("count_alive")))


def expire_leases(is_dead: Callable[[str], bool]) -> Op[int]:
    released = 0
    for holders, end in _LEASED_TABLES:
        for (owner,) in (yield rows(holders)):
            if owner and is_dead(owner):
                released += yield count(end, owner)
    return released


def bridge_id() -> Op[str]:
    yield count("make_bridge_id", secrets.token_hex(6))
    return str((yield value("get_meta", "bridge_id")))


def get_meta(key: str) -> Op[str | None]:
    found = yield value("get_meta", key)
    return None if found is None else str(found)


class CoordinationMethods(SqlRoles):
    async def acquire_lease(self, name: str, owner: str, now: float, ttl: float) -> bool:
        """Hold a named lease (e.g. "poll inbound from upstream X") for ``ttl`` seconds: True
        if it was free, expired, or already ours. One process of a cluster does the job."""
        return await self._lock_op(lambda: acquire_lease(name, owner, now, ttl))

    async def release_lease(self, name: str, owner: str) -> None:
        """Give a named lease up (on a clean stop), if we hold it."""
        await self._lock_op(lambda: single(count("release_lease", name, owner)))

    async def heartbeat(self, owner: str, now: float, ttl: float) -> int:
        """Record that ``owner`` is alive; return how many processes are (the cluster's
        size, which divides rate limits so that they hold for the cluster as a whole)."""
        return await self._lock_op(lambda: heartbeat(owner, now, ttl))

    async def expire_leases(self, is_dead: Callable[[str], bool]) -> int:
        return await self._lock_op(lambda: expire_leases(is_dead))

    async def bridge_id(self) -> str:
        """A random id of this store, made once: prefixes idempotency keys sent upstream."""
        return await self._lock_op(bridge_id)

    async def get_meta(self, key: str) -> str | None:
        return await self._read_op(lambda: get_meta(key))

    async def set_meta(self, key: str, value: str) -> None:
        await self._lock_op(lambda: single(count("set_meta", key, value)))
