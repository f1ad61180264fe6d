"""What Devino's two interfaces share: dates as the service writes them, and the inbound
cursor (``GetIncomingMessages`` of ``001_600c633d74a81c97.txt``, ``Sms/In`` of
``003_2ae1dc9e2c3c1732.txt``)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

#: Both interfaces' limit, over every request of one account: "Количество запросов 10
#: запросов/1 сек." (001 line 34).
REQUESTS_PER_SECOND = 10.0
# Inbound windows overlap by this much: a message may become visible up to 30 minutes after
# its CreateDateUtc and still be fetched, with 5 minutes to spare for a skew between our
# clock and the provider's.
INBOUND_OVERLAP = timedelta(minutes=35)
# An inbound cursor remembers at most this many ids (it is stored after every poll).
MAX_SEEN_INBOUND = 5000


def soap_datetime(moment: datetime) -> str:
    """``xsd:dateTime`` in UTC without a zone suffix, as the spec's examples write it
    (``2012-01-18T23:59:00``, Табл. 8 and 10)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def parse_datetime(value: str) -> datetime | None:
    """A dateTime as .NET serialises it (``…T…``, optional fraction, optional ``Z``/offset);
    a value without a zone is UTC (the fields are all ``…Utc``)."""
    text = value.strip()
    if not text:
        return None
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # .NET writes up to 7 fractional digits; fromisoformat takes at most 6.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


@dataclass(frozen=True)
class InboundCursor:
    """Where the next inbound window starts, and the ids already handed out from there on:
    successive windows overlap, and what was handed out is not handed out again. Used by both
    Devino interfaces (``GetIncomingMessages`` here, ``Sms/In`` in ``devino_rest``)."""

    since: datetime
    seen: frozenset[str]

    def dump(self) -> str:
        return json.dumps({"v": 1, "since": soap_datetime(self.since), "seen": sorted(self.seen)},
                          separators=(",", ":"))

    @classmethod
    def load(cls, text: str | None) -> InboundCursor | None:
        if not text:
            return None
        try:
            data = json.loads(text)
            since = parse_datetime(str(data["since"]))
            seen = frozenset(str(item) for item in data.get("seen", []))
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(since, seen) if since is not None else None

    @classmethod
    def after_poll(cls, window_start: datetime, now: datetime, overlap: timedelta,
                   records: Sequence[tuple[datetime | None, str]], limit: int) -> InboundCursor:
        """The cursor after a poll at ``now`` whose window began at ``window_start`` and
        answered ``records`` (creation time, id).

        The next window starts ``overlap`` before ``now`` (never before this one), on a whole
        second as the requests carry it, and the ids of the records from there on are
        remembered. A record without a readable time is remembered while it is answered.

        At most ``limit`` ids are kept: with more, the next window starts just after the
        second of the ``limit``-th newest record, so that what is forgotten is no longer
        asked for (never handed out twice, nor again and again); only for such a burst the
        overlap is shorter than ``overlap``."""
        since = max(window_start, now - overlap).replace(microsecond=0)
        kept = [(created or now, sms_id) for created, sms_id in records
                if created is None or created >= since]
        if len(kept) > limit:
            kept.sort(reverse=True)
            since = kept[max(limit, 1) - 1][0].replace(microsecond=0) + timedelta(seconds=1)
            kept = [(created, sms_id) for created, sms_id in kept if created >= since]
        return cls(since, frozenset(sms_id for _, sms_id in kept))
