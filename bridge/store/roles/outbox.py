"""The outbox's methods that both engines run alike (:class:`bridge.store.base.Outbox`);
claims and the sent-once records stay in the engines (PostgreSQL combines them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bridge.models import EnqueueResult, MailEnvelope, ReplyRequest, SendRequest, StoredMessage
from bridge.store.common import DELIVERY_STATUSES, row_to_message
from bridge.store.queries import Array, Op, SqlRoles, count, many, row, rows, single, value
from bridge.store.rows import DuePoll, MessageEvent


@dataclass(frozen=True)
class NewMail:
    """A mail's sends to commit (see :meth:`bridge.store.base.Outbox.enqueue`)."""

    envelope: MailEnvelope
    batches: Sequence[tuple[str | None, Sequence[SendRequest]]]
    now: float
    dedup_window: float
    reply: ReplyRequest | None


def resolve_ambiguous(message_id: int, sent: bool, now: float) -> Op[bool]:
    if sent:
        changed = yield count("resolve_sent", now, message_id)
        detail = "sent (by the operator)"
    else:
        changed = yield count("resolve_resend", now, now, message_id)
        detail = "to be sent again (by the operator)"
    if not changed:
        return False
    yield count("insert_event", message_id, now, "resolved", detail)
    return True


def next_due_at() -> Op[float | None]:
    due = yield value("next_due_at")
    return None if due is None else float(due)


def list_messages(limit: int, status: str | None) -> Op[list[StoredMessage]]:
    delivery = status if status in DELIVERY_STATUSES else None
    outbox = status or None if delivery is None else None
    found = yield rows("list_messages", outbox, outbox, delivery, delivery, limit)
    return [row_to_message(tuple(r)) for r in found]


def message_events(message_id: int) -> Op[list[MessageEvent]]:
    return [MessageEvent(at=r[0], status=r[1], detail=r[2])
            for r in (yield rows("message_events", message_id))]


def message_events_of(message_ids: Sequence[int]) -> Op[dict[int, list[MessageEvent]]]:
    events: dict[int, list[MessageEvent]] = {}
    for r in (yield rows("message_events_of", Array(message_ids))):
        events.setdefault(int(r[0]), []).append(
            MessageEvent(at=r[1], status=r[2], detail=r[3]))
    return events


def reschedule_status_polls(schedule: Sequence[tuple[int, float | None]]) -> Op[None]:
    if schedule:
        yield many("reschedule_status_poll", [(at, message_id) for message_id, at in schedule])


def queue_stats(now: float) -> Op[dict[str, float]]:
    queued, oldest, forwards, dead = tuple((yield row("queue_stats")))
    return {
        "messages_queued": float(queued),
        "oldest_queued_age": float(now - oldest) if oldest is not None else 0.0,
        "forwards_queued": float(forwards or 0),
        "dead_letters": float(dead or 0),
    }


class OutboxMethods(SqlRoles):
    async def enqueue(
        self,
        envelope: MailEnvelope,
        batches: Sequence[tuple[str | None, Sequence[SendRequest]]],
        *,
        now: float,
        dedup_window: float,
        reply: ReplyRequest | None = None,
    ) -> EnqueueResult:
        return await self._enqueue(NewMail(envelope, batches, now, dedup_window, reply))

    async def _enqueue(self, mail: NewMail) -> EnqueueResult:
        raise NotImplementedError

    async def due_status_polls(
        self, upstream: str, now: float, limit: int, lease_seconds: float = 60.0
    ) -> list[DuePoll]:
        """Claim sent messages of ``upstream`` whose status is due to be asked for:
        ``(message id, provider ids, polls so far)``. Their next poll moves ``lease_seconds``
        ahead, so another process does not poll them too; ``reschedule_status_polls`` then
        sets the real next time (after a crash, the lease ends and anyone polls them)."""
        return await self._due_status_polls(upstream, now, limit, lease_seconds)

    async def _due_status_polls(self, upstream: str, now: float, limit: int,
                                lease_seconds: float) -> list[DuePoll]:
        raise NotImplementedError

    async def renew_leases(self, owner: str, now: float, lease_seconds: float) -> int:
        # Not in a group commit: it may wait for a row lock of a claim.
        return int(await self._lock_op(
            lambda: single(count("renew_leases", now + lease_seconds, owner))))

    async def resolve_ambiguous(self, message_id: int, *, sent: bool, now: float) -> bool:
        return await self._lock_op(lambda: resolve_ambiguous(message_id, sent, now))

    async def next_due_at(self) -> float | None:
        return await self._read_op(next_due_at)

    async def list_messages(
        self, *, limit: int = 50, status: str | None = None
    ) -> list[StoredMessage]:
        return await self._read_op(lambda: list_messages(limit, status))

    async def message_events(self, message_id: int) -> list[MessageEvent]:
        return await self._read_op(lambda: message_events(message_id))

    async def message_events_of(
        self, message_ids: Sequence[int]
    ) -> dict[int, list[MessageEvent]]:
        return await self._read_op(lambda: message_events_of(message_ids))

    async def reschedule_status_polls(
        self, schedule: Sequence[tuple[int, float | None]]
    ) -> None:
        """Next poll time per message (None: stop polling it)."""
        await self._lock_op(lambda: reschedule_status_polls(schedule))

    async def purge(self, now: float, dedup_window: float) -> None:
        await self._lock_op(lambda: single(count("purge_dedup", now - dedup_window)))

    async def queue_stats(self, now: float) -> dict[str, float]:
        return await self._read_op(lambda: queue_stats(now))
