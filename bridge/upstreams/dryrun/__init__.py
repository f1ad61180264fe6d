"""``dryrun``: accepts every SMS, assigns an id and logs it. Needs no credentials."""

from __future__ import annotations

import logging
from typing import ClassVar

import httpx

from bridge.upstreams.base import OutboundSms, SendReceipt
from bridge.upstreams.config import UpstreamSettings

log = logging.getLogger(__name__)


class DryRunUpstream:
    kind: ClassVar[str] = "dryrun"
    idempotent: ClassVar[bool] = True

    def __init__(self, name: str, settings: UpstreamSettings, client: httpx.AsyncClient) -> None:
        self.name = name
        self.settings = settings

    @classmethod
    def validate(cls, name: str, settings: UpstreamSettings) -> None:
        return None

    async def send(self, sms: OutboundSms) -> SendReceipt:
        provider_id = f"dry-{sms.idempotency_key}"
        log.info(
            "dryrun send",
            extra={"message_id": sms.message_id, "phone": sms.phone, "provider_id": provider_id,
                   "chars": len(sms.text), "upstream": self.name},
        )
        return SendReceipt((provider_id,))  # a dry run: nothing was sent

    async def aclose(self) -> None:
        return None
