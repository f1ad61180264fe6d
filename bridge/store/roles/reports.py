"""Delivery reports (:class:`bridge.store.base.DeliveryReports`), and how a stored report
settles its message's status (also run by the engines when a send finds reports that came
before it)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import cast

from bridge.models import DeliveryReport
from bridge.store.common import (
    FINAL_STATUSES,
    REPORT_KEYS,
    PartReport,
    report_time,
    settle_delivery,
)
from bridge.store.queries import Array, Op, SqlRoles, count, row, rows, value
from bridge.store.rows import ReportListing


def apply_report(message_id: int, report_id: int, provider_id: str, status: str,
                 raw_status: str, error_code: int | None, at: float) -> Op[None]:
    """A stored delivery report (``report_id``, already attached to the message) into the
    message's history and status. The status is settled from all the message's reports by
    :func:`bridge.store.common.settle_delivery` (repeats and late arrivals never take a
    final status back); a final one ends status polling for the message. Every report
    goes into the history, the detail follows the reports that stand."""
    detail = f"{raw_status} ({provider_id})"
    if error_code:
        detail += f" error {error_code}"
    found = yield row("report_message", message_id)
    ids_json, current = (found[0], found[1]) if found is not None else (None, None)
    reports = [PartReport(int(r[0]), r[1], r[2], r[3])
               for r in (yield rows("message_reports", message_id))]
    parts = (json.loads(ids_json) if ids_json is not None else []) or [provider_id]
    overall, standing = settle_delivery(parts, reports, current)
    stands = provider_id in standing and standing[provider_id].id == report_id
    yield count("settle_message", overall, stands, detail, overall in FINAL_STATUSES,
                message_id)
    yield count("insert_event", message_id, at, status, detail)


def record_reports(source: str, reports: Sequence[DeliveryReport], now: float) -> Op[int]:
    yield value("lock_provider_ids", Array(sorted({r.provider_id for r in reports})))
    matched = 0
    for report in reports:
        message_id = yield value("provider_message", report.provider_id)
        report_id = yield value(
            "insert_report", source, report.provider_id, message_id, report.status,
            report.raw_status, report.error_code, now, report_time(report.at))
        if message_id is None:
            continue
        matched += 1
        yield from apply_report(int(message_id), int(report_id), report.provider_id,
                                report.status, report.raw_status, report.error_code, now)
    return matched


def list_reports(unmatched: bool, limit: int) -> Op[list[ReportListing]]:
    found = yield rows("list_unmatched_reports" if unmatched else "list_reports", limit)
    return [cast(ReportListing, dict(zip(REPORT_KEYS, tuple(r), strict=True))) for r in found]


class DeliveryReportMethods(SqlRoles):
    async def record_delivery_reports(
        self, source: str, reports: Sequence[DeliveryReport], now: float
    ) -> int:
        """Attach reports to their messages' status history; return how many matched.
        Unmatched reports are kept too (``delivery_reports.message_id`` is NULL)."""
        return await self._lock_op(lambda: record_reports(source, reports, now))

    async def list_delivery_reports(
        self, *, unmatched: bool = False, limit: int = 100
    ) -> list[ReportListing]:
        return await self._read_op(lambda: list_reports(unmatched, limit))
