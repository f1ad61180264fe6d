"""A mailbox double: an aiosmtpd sink on an ephemeral port that records what it receives.

Plays the smarthost the bridge sends bounces, ``reply_to_email`` answers and forwarded SMS
through. It can misbehave the ways a real MTA does (RFC 5321): refuse at MAIL, RCPT or DATA
with a scripted reply (4yz transient, 5yz permanent, §4.2.1), accept the data but answer
late (the reply to the end of DATA may take up to 10 minutes, §4.5.3.2.6), or drop the
connection after the data arrived without replying (§4.1.1.4: the client cannot know
whether the mail was taken, so it sends again).
"""

from __future__ import annotations

import asyncio
import email
from collections import deque
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

    async def handle_MAIL(self, server: Any, session: Any, envelope: Any, address: str,
                          mail_options: list[str]) -> str:
        self.box.commands["MAIL"] += 1
        if self.box.replies["MAIL"]:
            return self.box.replies["MAIL"].popleft()
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        self.box.commands["RCPT"] += 1
        if self.box.replies["RCPT"]:
            return self.box.replies["RCPT"].popleft()
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        box = self.box
        box.commands["DATA"] += 1
        if box.reject_next > 0:
            box.reject_next -= 1
            return "451 4.3.0 Try again later"
        if box.replies["DATA"]:
            return box.replies["DATA"].popleft()
        box.mails.append(
            ReceivedMail(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content)
        )
        async with box._changed:
            box._changed.notify_all()
        if box.drop_next > 0:
            # The data is taken, the reply never comes: the client sees a dropped connection.
            box.drop_next -= 1
            server.transport.close()
        elif box.late_next > 0:
            box.late_next -= 1
            await asyncio.sleep(box.late_delay)
        return "250 OK"


class MailboxDouble:
    def __init__(self) -> None:
        self.mails: list[ReceivedMail] = []
        self.reject_next = 0
        # Scripted replies, used up one per command: refuse("RCPT", "550 5.1.1 ...").
        self.replies: dict[str, deque[str]] = {"MAIL": deque(), "RCPT": deque(),
                                               "DATA": deque()}
        self.commands = {"MAIL": 0, "RCPT": 0, "DATA": 0}
        self.late_next = 0  # mails whose 250 comes only after late_delay seconds
        self.late_delay = 0.0
        self.drop_next = 0  # mails taken whose connection is then closed without a reply
        self.port = 0
        self._server: asyncio.Server | None = None
        self._changed = asyncio.Condition()

    def refuse(self, command: str, *replies: str) -> None:
        """Answer the next ``MAIL``, ``RCPT`` or ``DATA`` commands with ``replies``."""
        self.replies[command].extend(replies)

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
