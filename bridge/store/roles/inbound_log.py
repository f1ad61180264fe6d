"""Inbound SMS and short-code answers (:class:`bridge.store.base.InboundLog`); recording a
message stays in the engines (PostgreSQL inserts many in one statement)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from bridge.models import ForwardJob, InboundMessage, InboundRecord, StoredResponse
from bridge.redact import redact_text
from bridge.store.common import row_to_inbound
from bridge.store.queries import Exact, Op, SqlRoles, count, row, rows
from bridge.store.rows import InboundListing

INBOUND_LIST_KEYS = ("id", "source", "kind", "sms_id", "phone", "recipient", "text",
                     "charset_error", "state", "script_error", "received_at", "forwards",
                     "delivered")


@dataclass(frozen=True)
class NewInbound:
    """An inbound SMS to record (see :meth:`bridge.store.base.InboundLog.record_inbound`)."""

    message: InboundMessage
    now: float
    dedup_window: float
    state: str
    response: StoredResponse | None
    jobs: Sequence[ForwardJob]
    forward_deadline: float


def get_inbound(source: str, sms_id: str) -> Op[InboundRecord | None]:
    found = yield row("inbound_by_key", source, Exact(f"id:{sms_id}"))
    return None if found is None else row_to_inbound(tuple(found), duplicate=True)


def complete_inbound(inbound_id: int, response: StoredResponse,
                     script_error: str | None) -> Op[StoredResponse]:
    script_error = redact_text(script_error) if script_error else script_error
    yield count("answer_inbound", response.status, response.body, response.content_type,
                script_error, inbound_id)
    found = yield row("inbound_answer", inbound_id)
    if found is None:
        raise LookupError(f"no inbound message {inbound_id}")
    return StoredResponse(int(found[0]), bytes(found[1] or b""), str(found[2]))


def inbound_answer(inbound_id: int) -> Op[StoredResponse | None]:
    found = yield row("inbound_answer", inbound_id)
    if found is None or found[0] is None:
        return None
    return StoredResponse(int(found[0]), bytes(found[1] or b""), str(found[2]))


def claim_inbound_answer(inbound_id: int, now: float, lease: float) -> Op[bool]:
    return bool((yield count("claim_inbound_answer", now + lease, inbound_id, lease, now)) == 1)


def list_inbound(limit: int) -> Op[list[InboundListing]]:
    return [cast(InboundListing, dict(zip(INBOUND_LIST_KEYS, tuple(r), strict=True)))
            for r in (yield rows("list_inbound", limit))]


class InboundLogMethods(SqlRoles):
    async def record_inbound(
        self,
        message: InboundMessage,
        *,
        now: float,
        dedup_window: float,
        state: str,
        response: StoredResponse | None,
        jobs: Sequence[ForwardJob],
        forward_deadline: float,
    ) -> InboundRecord:
        return await self._record_inbound(NewInbound(
            message, now, dedup_window, state, response, jobs, forward_deadline))

    async def _record_inbound(self, new: NewInbound) -> InboundRecord:
        raise NotImplementedError

    async def get_inbound(self, source: str, sms_id: str) -> InboundRecord | None:
        return await self._read_op(lambda: get_inbound(source, sms_id))

    async def complete_inbound(
        self, inbound_id: int, response: StoredResponse, script_error: str | None
    ) -> StoredResponse:
        """Store the answer of a short-code hit, unless one was stored first; return the
        answer that stands."""
        return await self._lock_op(lambda: complete_inbound(inbound_id, response,
                                                            script_error))

    async def inbound_answer(self, inbound_id: int) -> StoredResponse | None:
        """The stored answer of a short-code hit, None while it is pending."""
        return await self._read_op(lambda: inbound_answer(inbound_id))

    async def claim_inbound_answer(self, inbound_id: int, now: float, lease: float) -> bool:
        """Take over the script call of a pending short-code hit whose caller's hold ran
        out (``lease`` seconds from the hit, or from the last take-over); True for the one
        caller that got it (a concurrent claimer waits for the row lock, then finds the
        hold renewed)."""
        return await self._lock_op(lambda: claim_inbound_answer(inbound_id, now, lease))

    async def list_inbound(self, *, limit: int = 50) -> list[InboundListing]:
        return await self._read_op(lambda: list_inbound(limit))
