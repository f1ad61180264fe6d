"""A mailbox double: an aiosmtpd sink on an ephemeral port that records what it receives.

Plays the smarthost the bridge sends bounces and ``reply_to_email`` answers through.
"""

from __future__ import annotations

import asyncio
import email
from dataclasses import dataclass
from email.message import Message
from typing import Any

from aiosmtpd.smtp import SMTP


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes

    @property
    def message(self) -> Message:
        return email.message_from_bytes(self.content)


class _Sink:
    def __init__(self, box: MailboxDouble) -> None:
        self.box = box

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.box.reject_next > 0:
            self.box.reject_next -= 1
            return "451 4.3.0 Try again later"
        self.box.mails.append(
            ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        async with self.box._changed:
            self.box._changed.notify_all()
        return "250 OK"


class MailboxDouble:
    def __init__(self) -> None:
        self.mails: list[ReceivedMail] = []
        self.reject_next = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Condition()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(_Sink(self), hostname="mailbox.test", loop=loop), "127.0.0.1", 0
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedMail]:
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(lambda: len(self.mails) >= count)
        except TimeoutError:
            raise AssertionError(f"mailbox got {len(self.mails)} mails, expected {count}") from None
        return list(self.mails)

    async def __aenter__(self) -> MailboxDouble:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
