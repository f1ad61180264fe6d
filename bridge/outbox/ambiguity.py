"""Sends of unknown fate: whether one may go again, and how a request is known.

A message's ``maybe_sent`` counts its earlier requests whose fate is unknown (an intent left
without an outcome by a crash, or a request answered by an ambiguous failure). Pure: the
dispatcher applies it, tests call it directly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Literal

from bridge.upstreams.base import OutboundSms

Policy = Literal["resend", "hold"]

#: Under "resend", the copies of unknown fate a message may have before one more is risked:
#: one extra copy at most.
RESEND_LIMIT = 1


def resend_allowed(maybe_sent: int, *, idempotent: bool, looks_up: bool,
                   policy: str) -> bool:
    """Whether a message with ``maybe_sent`` earlier requests of unknown fate may be sent
    again.

    An idempotency key within its window (``idempotent``) or a lookup by client id before
    the send (``looks_up``) keeps a resend from making a copy: always. Otherwise the
    account's policy: ``resend`` risks one extra copy (allowed while ``maybe_sent`` is at
    most :data:`RESEND_LIMIT`), ``hold`` none (at most once)."""
    if maybe_sent <= 0 or idempotent or looks_up:
        return True
    return policy == "resend" and maybe_sent <= RESEND_LIMIT


def request_fingerprint(upstream: str, batch: Sequence[OutboundSms]) -> str:
    """What a request carries, as a digest kept with its intent: the upstream and, per SMS,
    its idempotency key, phone, text and sender. Two requests with the same fingerprint
    would be the same request to the provider."""
    digest = hashlib.sha256(upstream.encode("utf-8", "surrogatepass") + b"\0")
    for sms in batch:
        for part in (sms.idempotency_key, sms.phone, sms.text, sms.options.originator or ""):
            digest.update(part.encode("utf-8", "surrogatepass") + b"\0")
    return digest.hexdigest()[:32]
