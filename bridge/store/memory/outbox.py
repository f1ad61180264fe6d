"""The outbox and delivery reports of the in-memory store (:class:`bridge.store.base.Outbox`,
:class:`~bridge.store.base.DeliveryReports`), with the engines' semantics (the named blocks
of bridge/store/sql/outbox*.sql and reports.sql): claims raise the fencing epoch, an intent
or an outcome counts only while its claim holds, a final delivery status never goes back."""

from __future__ import annotations

from collections.abc import Sequence

from bridge.models import (
    V2_ANSWER_KIND,
    DeliveryReport,
    EnqueueResult,
    MailEnvelope,
    MessageStatus,
    OutboundMail,
    ReplyRequest,
    SendIntent,
    SendOutcome,
    SendRequest,
    StoredMessage,
)
from bridge.store.common import (
    DELIVERY_STATUSES,
    FINAL_STATUSES,
    PartReport,
    intent_summary,
    outcome_error,
    outcome_event,
    report_time,
    settle_delivery,
)
from bridge.store.memory._state import MemoryState, Message
from bridge.store.rows import DuePoll, MessageEvent, ReportListing


class MemoryOutbox(MemoryState):
    async def enqueue(
        self,
        envelope: MailEnvelope,
        batches: Sequence[tuple[str | None, Sequence[SendRequest]]],
        *,
        now: float,
        dedup_window: float,
        reply: ReplyRequest | None = None,
    ) -> EnqueueResult:
        self._check()
        fresh = [(key, requests) for key, requests in batches
                 if key is None or key not in self._dedup
                 or self._dedup[key][1] < now - dedup_window]
        if not fresh:
            return EnqueueResult((), duplicate=True)
        mail_id = self._id()
        self._received[mail_id] = (envelope, now)
        ids: list[int] = []
        for key, requests in fresh:
            if key is not None:
                self._dedup[key] = (mail_id, now)
            for req in requests:
                message = Message(
                    self._id(), mail_id, req.account, req.upstream, req.phone, req.text,
                    req.parts, req.encoding, req.options, now,
                    max(now, req.options.not_before or now))
                self._messages[message.id] = message
                self._event(message.id, now, MessageStatus.QUEUED.value, None)
                ids.append(message.id)
        if reply is not None:  # the v2 answer, as data, with the messages (as the engines)
            self._insert_mail(OutboundMail(V2_ANSWER_KIND, reply.mail_to, reply.payload(ids)),
                              now)
        return EnqueueResult(tuple(ids))

    def _stored(self, message: Message, *, headers: bool = False) -> StoredMessage:
        found = self._received.get(message.mail_id)
        return message.stored(found[0] if found else None, headers=headers)

    async def claim_due(self, owner: str, now: float, limit: int,
                        lease_seconds: float) -> list[StoredMessage]:
        self._check()
        due = sorted(
            (m.next_attempt_at if m.status == "queued" else m.lease_until or 0.0, m.id)
             for m in self._messages.values()
             if (m.status == "queued" and m.next_attempt_at <= now)
             or (m.status == "sending" and (m.lease_until or 0.0) <= now
                 and m.lease_owner != owner))[:limit]
        claimed = []
        for _, message_id in sorted(due, key=lambda d: d[1]):
            m = self._messages[message_id]
            m.status, m.lease_owner, m.lease_until = "sending", owner, now + lease_seconds
            m.lease_epoch += 1
            claimed.append(self._stored(m, headers=True))
        return claimed

    async def renew_leases(self, owner: str, now: float, lease_seconds: float) -> int:
        self._check()
        renewed = 0
        for m in self._messages.values():
            if m.status == "sending" and m.lease_owner == owner:
                m.lease_until = now + lease_seconds
                renewed += 1
        return renewed

    async def record_intent(self, owner: str, upstream: str, leases: Sequence[tuple[int, int]],
                            fingerprint: str, now: float) -> SendIntent | None:
        self._check()
        held = [(message_id, epoch) for message_id, epoch in leases
                if (m := self._messages.get(message_id)) is not None and m.holds(owner, epoch)]
        if not held:
            return None
        for message_id, _ in held:
            self._messages[message_id].maybe_sent += 1
        intent_id = self._id()
        self._intents[intent_id] = {"upstream": upstream, "owner": owner,
                                    "fingerprint": fingerprint, "messages": held,
                                    "created_at": now}
        return SendIntent(intent_id, tuple(message_id for message_id, _ in held))

    async def record_outcomes(self, owner: str, intent_id: int | None,
                              outcomes: Sequence[SendOutcome], now: float) -> list[int]:
        self._check()
        recorded = [o.message_id for o in outcomes
                    if self._record_outcome(owner, o, now, intent_id is not None)]
        if intent_id is not None and intent_id in self._intents:
            self._intents[intent_id].update(finished_at=now,
                                            outcome=intent_summary(outcomes, recorded))
        return recorded

    def _record_outcome(self, owner: str, outcome: SendOutcome, now: float,
                        requested: bool) -> bool:
        m = self._messages.get(outcome.message_id)
        if m is None or not m.holds(owner, outcome.lease_epoch):
            return False
        event, detail = outcome_event(outcome)
        error = outcome_error(outcome)
        m.attempts += int(requested)
        m.maybe_sent = max(0, m.maybe_sent - int(requested and not outcome.unknown))
        if outcome.status == "sending":
            m.last_error = error
        else:
            m.status, m.lease_owner, m.lease_until = outcome.status, None, None
            m.last_error = None if outcome.status == "sent" else error
        if outcome.status == "sent":
            m.upstream_used, m.upstream_ids = outcome.upstream, list(outcome.provider_ids)
            m.next_poll_at = outcome.poll_at if outcome.provider_ids else None
        elif outcome.status == "queued":
            assert outcome.next_attempt_at is not None
            m.next_attempt_at = outcome.next_attempt_at
        self._event(m.id, now, event, detail)
        if outcome.mail is not None:
            self._insert_mail(outcome.mail, now)
        if outcome.status == "sent" and outcome.provider_ids:
            self._index_provider_ids(m.id, outcome.provider_ids)
        return True

    def _index_provider_ids(self, message_id: int, provider_ids: Sequence[str]) -> None:
        for provider_id in provider_ids:
            self._provider_ids[provider_id] = message_id
        # Reports that came before the send was recorded, applied in the order they came.
        for report in sorted(self._reports.values(), key=lambda r: r["id"]):
            if report["message_id"] is None and report["provider_id"] in provider_ids:
                report["message_id"] = message_id
                self._apply_report(message_id, report, report["received_at"])

    async def resolve_ambiguous(self, message_id: int, *, sent: bool, now: float) -> bool:
        self._check()
        m = self._messages.get(message_id)
        if m is None or m.status != "ambiguous":
            return False
        if sent:
            m.status = "sent"
            detail = "sent (by the operator)"
        else:
            m.status, m.next_attempt_at, m.maybe_sent = "queued", now, 0
            detail = "to be sent again (by the operator)"
        self._event(message_id, now, "resolved", detail)
        return True

    async def next_due_at(self) -> float | None:
        self._check()
        due = [m.next_attempt_at for m in self._messages.values() if m.status == "queued"]
        due += [m.lease_until for m in self._messages.values()
                if m.status == "sending" and m.lease_until is not None]
        return min(due, default=None)

    async def list_messages(self, *, limit: int = 50,
                            status: str | None = None) -> list[StoredMessage]:
        self._check()
        delivery = status in DELIVERY_STATUSES
        return [self._stored(m) for m in sorted(self._messages.values(), key=lambda m: -m.id)
                if not status or (m.delivery_status if delivery else m.status) == status
                ][:limit]

    async def message_events(self, message_id: int) -> list[MessageEvent]:
        self._check()
        return [dict(e) for _, e in self._events.get(message_id, [])]  # type: ignore[misc]

    async def message_events_of(self, message_ids: Sequence[int]
                                ) -> dict[int, list[MessageEvent]]:
        self._check()
        return {i: await self.message_events(i) for i in sorted(set(message_ids))
                if self._events.get(i)}

    async def due_status_polls(self, upstream: str, now: float, limit: int,
                               lease_seconds: float = 60.0) -> list[DuePoll]:
        self._check()
        due = sorted((m for m in self._messages.values()
                      if m.upstream_used == upstream and m.next_poll_at is not None
                      and m.next_poll_at <= now),
                     key=lambda m: (m.next_poll_at or 0.0, m.id))[:limit]
        for m in due:
            m.next_poll_at = now + lease_seconds
        return [DuePoll(m.id, list(m.upstream_ids), m.poll_count) for m in due]

    async def reschedule_status_polls(self, schedule: Sequence[tuple[int, float | None]]
                                      ) -> None:
        self._check()
        for message_id, at in schedule:
            m = self._messages.get(message_id)
            if m is not None and m.next_poll_at is not None:
                m.next_poll_at, m.poll_count = at, m.poll_count + 1

    async def purge(self, now: float, dedup_window: float) -> None:
        self._check()
        self._dedup = {k: v for k, v in self._dedup.items() if v[1] >= now - dedup_window}

    async def queue_stats(self, now: float) -> dict[str, float]:
        self._check()
        waiting = [m.created_at for m in self._messages.values()
                   if m.status in ("queued", "sending")]
        return {
            "messages_queued": float(len(waiting)),
            "oldest_queued_age": float(now - min(waiting)) if waiting else 0.0,
            "forwards_queued": float(sum(j.status in ("queued", "sending")
                                         for j in self._jobs.values())),
            "dead_letters": float(sum(j.status == "dead" for j in self._jobs.values())),
        }

    # -- delivery reports -------------------------------------------------------------------

    def _apply_report(self, message_id: int, report: ReportListing, at: float) -> None:
        """As :func:`bridge.store.roles.reports.apply_report`: the status settled from all
        the message's reports (a final one never goes back), the report into the history."""
        m = self._messages[message_id]
        detail = f"{report['raw_status']} ({report['provider_id']})"
        if report["error_code"]:
            detail += f" error {report['error_code']}"
        reports = [PartReport(r["id"], r["provider_id"], r["status"], r["reported_at"])
                   for r in sorted(self._reports.values(), key=lambda r: r["id"])
                   if r["message_id"] == message_id]
        parts = m.upstream_ids or [report["provider_id"]]
        overall, standing = settle_delivery(parts, reports, m.delivery_status)
        m.delivery_status = overall
        if (stands := standing.get(report["provider_id"])) and stands.id == report["id"]:
            m.delivery_detail = detail
        if overall in FINAL_STATUSES:
            m.next_poll_at = None
        self._event(message_id, at, report["status"], detail)

    async def record_delivery_reports(self, source: str, reports: Sequence[DeliveryReport],
                                      now: float) -> int:
        self._check()
        matched = 0
        for r in reports:
            message_id = self._provider_ids.get(r.provider_id)
            stored = ReportListing(
                id=self._id(), source=source, provider_id=r.provider_id, message_id=message_id,
                status=r.status, raw_status=r.raw_status, error_code=r.error_code,
                received_at=now, reported_at=report_time(r.at))
            self._reports[stored["id"]] = stored
            if message_id is not None:
                matched += 1
                self._apply_report(message_id, stored, now)
        return matched

    async def list_delivery_reports(self, *, unmatched: bool = False,
                                    limit: int = 100) -> list[ReportListing]:
        self._check()
        return [ReportListing(**r) for _, r in sorted(self._reports.items(), reverse=True)
                if not unmatched or r["message_id"] is None][:limit]
