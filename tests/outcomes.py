"""Outcomes of sends written the way the dispatcher writes them (``record_intent`` before the
request, ``record_outcomes`` after it), for tests of the store that need messages sent,
retried or failed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bridge.models import OutboundMail, SendOutcome
from bridge.store import OutboxStore


async def finish(store: OutboxStore, message_id: int, owner: str, status: str, now: float,
                 **fields: Any) -> bool:
    """One request of ``owner`` for the message and its outcome, under the message's current
    claim; False when ``owner`` does not hold it (nothing is recorded then)."""
    (epoch,) = [m.lease_epoch for m in await store.list_messages(limit=1_000_000)
                if m.id == message_id]
    intent = await store.record_intent(owner, fields.get("upstream") or "up",
                                       [(message_id, epoch)], "test", now)
    outcome = SendOutcome(message_id, epoch, status, **fields)
    return bool(await store.record_outcomes(owner, intent.id if intent else None, [outcome],
                                            now))


async def mark_sent(store: OutboxStore, message_id: int, owner: str, upstream: str,
                    provider_ids: Sequence[str], now: float,
                    poll_at: float | None = None) -> bool:
    return await finish(store, message_id, owner, "sent", now, upstream=upstream,
                        provider_ids=tuple(provider_ids), poll_at=poll_at)


async def schedule_retry(store: OutboxStore, message_id: int, owner: str, error: str,
                         next_attempt_at: float, now: float) -> bool:
    return await finish(store, message_id, owner, "queued", now, error=error,
                        next_attempt_at=next_attempt_at)


async def mark_failed(store: OutboxStore, message_id: int, owner: str, error: str, now: float,
                      bounce: OutboundMail | None) -> bool:
    return await finish(store, message_id, owner, "failed", now, error=error, mail=bounce)
