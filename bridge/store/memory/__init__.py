"""A store in memory, for unit tests of the code that uses these roles: no file, no server,
no thread. It keeps the contract of every role but the console's (the same contract tests
run on it and on both engines: tests/test_store_contract.py) — :class:`bridge.store.base.Lifecycle`,
:class:`~bridge.store.base.Outbox`, :class:`~bridge.store.base.MailQueue`,
:class:`~bridge.store.base.InboundLog`, :class:`~bridge.store.base.ForwardQueue`,
:class:`~bridge.store.base.DeliveryReports`, :class:`~bridge.store.base.ScriptRegistry` and
:class:`~bridge.store.base.Coordination` — and nothing is durable. The tables and rows are
in :mod:`bridge.store.memory._state`, the outbox and reports in
:mod:`~bridge.store.memory.outbox`, the forwarding jobs in :mod:`~bridge.store.memory.forwards`."""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any, cast

from bridge.models import (
    ForwardJob,
    InboundMessage,
    InboundRecord,
    OutboundMail,
    StoredResponse,
)
from bridge.redact import redact_text
from bridge.store.base import (
    Coordination,
    DeliveryReports,
    ForwardQueue,
    InboundLog,
    Lifecycle,
    MailQueue,
    Outbox,
    ScriptRegistry,
)
from bridge.store.common import inbound_content_hash
from bridge.store.memory._state import Inbound, Job, Mail, Message
from bridge.store.memory.forwards import MemoryForwardQueue
from bridge.store.memory.outbox import MemoryOutbox
from bridge.store.roles.scripts import SCRIPT_KEYS
from bridge.store.rows import (
    ClaimedMail,
    InboundListing,
    MailListing,
    ReplyScript,
)


class MemoryStore(MemoryOutbox, MemoryForwardQueue):
    """Every role but the console's, on dictionaries."""

    # -- lifecycle ------------------------------------------------------------------------

    async def open(self, *, migrate: bool = True) -> None:
        self._open = True
        self.schema_change = (0, 0)

    async def close(self) -> None:
        self._open = False

    async def ping(self) -> None:
        self._check()

    # -- mails the bridge sends -----------------------------------------------------------

    async def queue_mail(self, mail: OutboundMail, now: float) -> None:
        self._check()
        self._insert_mail(mail, now)

    async def claim_mails(self, owner: str, now: float, limit: int,
                          lease_seconds: float) -> list[ClaimedMail]:
        self._check()
        due = sorted((m for m in self._mails.values()
                      if (m.status == "queued" and m.next_attempt_at <= now)
                      or (m.status == "sending" and (m.lease_until or 0.0) <= now)),
                     key=lambda m: (m.next_attempt_at, m.id))[:limit]
        claimed = []
        for m in due:
            taken = replace(m, status="sending", lease_owner=owner,
                            lease_until=now + lease_seconds, attempts=m.attempts + 1)
            self._mails[m.id] = taken
            claimed.append(ClaimedMail(m.id, m.mail, taken.attempts))
        return claimed

    def _held(self, mail_id: int, owner: str) -> Mail | None:
        found = self._mails.get(mail_id)
        if found is None or found.status != "sending" or found.lease_owner != owner:
            return None
        return found

    async def mail_done(self, mail_id: int, owner: str, now: float) -> None:
        self._check()
        if (found := self._held(mail_id, owner)) is not None:
            self._mails[mail_id] = replace(found, status="sent", lease_until=None,
                                           last_error=None)

    async def mail_retry(self, mail_id: int, owner: str, error: str,
                         next_attempt_at: float | None) -> None:
        self._check()
        if (found := self._held(mail_id, owner)) is None:
            return
        error = redact_text(error)
        if next_attempt_at is None:
            self._mails[mail_id] = replace(found, status="failed", last_error=error,
                                           lease_until=None)
        else:
            self._mails[mail_id] = replace(found, status="queued", last_error=error,
                                           lease_until=None, next_attempt_at=next_attempt_at)

    async def list_mails(self, *, limit: int = 50) -> list[MailListing]:
        self._check()
        return [MailListing(id=m.id, kind=m.mail.kind, mail_to=m.mail.mail_to, status=m.status,
                            attempts=m.attempts, last_error=m.last_error,
                            created_at=m.created_at, content=m.mail.content)
                for m in sorted(self._mails.values(), key=lambda m: -m.id)[:limit]]

    # -- inbound SMS ----------------------------------------------------------------------

    async def record_inbound(self, message: InboundMessage, *, now: float, dedup_window: float,
                             state: str, response: StoredResponse | None,
                             jobs: Sequence[ForwardJob], forward_deadline: float
                             ) -> InboundRecord:
        self._check()
        content_hash = inbound_content_hash(message)
        for found in sorted(self._inbound.values(), key=lambda i: -i.id):
            if found.source != message.source:
                continue
            if message.sms_id is not None and found.message.sms_id == message.sms_id:
                return found.record(duplicate=True)
            if (message.sms_id is None and found.message.sms_id is None
                    and found.content_hash == content_hash
                    and found.received_at >= now - dedup_window):
                return found.record(duplicate=True)
        added = Inbound(self._id(), message.source, message, content_hash, state, response,
                         now)
        self._inbound[added.id] = added
        for job in jobs:
            job_id = self._id()
            self._jobs[job_id] = Job(job_id, added.id, job.kind, job.target, job.payload, now,
                                     now, forward_deadline)
        return added.record(duplicate=False)

    async def get_inbound(self, source: str, sms_id: str) -> InboundRecord | None:
        self._check()
        for found in self._inbound.values():
            if found.source == source and found.message.sms_id == sms_id:
                return found.record(duplicate=True)
        return None

    async def complete_inbound(self, inbound_id: int, response: StoredResponse,
                               script_error: str | None) -> StoredResponse:
        self._check()
        found = self._inbound.get(inbound_id)
        if found is None:
            raise LookupError(f"no inbound message {inbound_id}")
        if found.state == "pending":
            found = replace(found, state="answered", response=response,
                            script_error=redact_text(script_error) if script_error else None)
            self._inbound[inbound_id] = found
        assert found.response is not None
        return found.response

    async def inbound_answer(self, inbound_id: int) -> StoredResponse | None:
        self._check()
        found = self._inbound.get(inbound_id)
        return None if found is None else found.response

    async def claim_inbound_answer(self, inbound_id: int, now: float, lease: float) -> bool:
        self._check()
        found = self._inbound.get(inbound_id)
        if found is None or found.state != "pending":
            return False
        held_until = found.answer_until if found.answer_until is not None \
            else found.received_at + lease
        if held_until > now:
            return False
        self._inbound[inbound_id] = replace(found, answer_until=now + lease)
        return True

    async def list_inbound(self, *, limit: int = 50) -> list[InboundListing]:
        self._check()
        listed = []
        for i in sorted(self._inbound.values(), key=lambda i: -i.id)[:limit]:
            jobs = [j for j in self._jobs.values() if j.inbound_id == i.id]
            m = i.message
            listed.append(InboundListing(
                id=i.id, source=i.source, kind=m.kind, sms_id=m.sms_id, phone=m.phone,
                recipient=m.recipient, text=m.text, charset_error=int(m.charset_error),
                state=i.state, script_error=i.script_error, received_at=i.received_at,
                forwards=len(jobs), delivered=sum(j.status == "delivered" for j in jobs)))
        return listed

    # -- reply scripts --------------------------------------------------------------------

    async def list_reply_scripts(self) -> list[ReplyScript]:
        self._check()
        return [ReplyScript(**self._scripts[k]) for k in sorted(self._scripts)]

    async def save_reply_script(self, script: dict[str, Any], now: float,
                                script_id: int | None = None) -> ReplyScript | None:
        self._check()
        if script_id is not None and script_id not in self._scripts:
            return None
        created = now if script_id is None else self._scripts[script_id]["created_at"]
        new_id = self._id() if script_id is None else script_id
        values = (new_id, script["shortcode"], script.get("keyword"), script["url"],
                  script["method"], float(script["timeout"]), script.get("secret"), created,
                  now)
        self._scripts[new_id] = cast(ReplyScript, dict(zip(SCRIPT_KEYS, values, strict=True)))
        return ReplyScript(**self._scripts[new_id])

    async def delete_reply_script(self, script_id: int) -> bool:
        self._check()
        return self._scripts.pop(script_id, None) is not None

    # -- coordination ---------------------------------------------------------------------

    async def acquire_lease(self, name: str, owner: str, now: float, ttl: float) -> bool:
        self._check()
        held = self._leases.get(name)
        if held is not None and held[0] != owner and held[1] > now:
            return False
        self._leases[name] = (owner, now + ttl)
        return True

    async def release_lease(self, name: str, owner: str) -> None:
        self._check()
        if self._leases.get(name, ("", 0.0))[0] == owner:
            del self._leases[name]

    async def heartbeat(self, owner: str, now: float, ttl: float) -> int:
        self._check()
        self._processes[owner] = now
        self._processes = {o: at for o, at in self._processes.items() if at >= now - ttl}
        return len(self._processes)

    async def expire_leases(self, is_dead: Callable[[str], bool]) -> int:
        self._check()
        released = 0
        leased: list[Mail | Message | Job] = [*self._messages.values(), *self._jobs.values(),
                                              *self._mails.values()]
        for row in leased:
            if row.status == "sending" and row.lease_owner and is_dead(row.lease_owner):
                row.lease_until = 0.0
                released += 1
        return released

    async def bridge_id(self) -> str:
        self._check()
        return self._meta.setdefault("bridge_id", secrets.token_hex(6))

    async def get_meta(self, key: str) -> str | None:
        self._check()
        return self._meta.get(key)

    async def set_meta(self, key: str, value: str) -> None:
        self._check()
        self._meta[key] = value


def as_roles(store: MemoryStore) -> tuple[Lifecycle, Outbox, MailQueue, InboundLog,
                                          ForwardQueue, DeliveryReports, ScriptRegistry,
                                          Coordination]:
    """The store as each role it implements (mypy checks that it does)."""
    return store, store, store, store, store, store, store, store
