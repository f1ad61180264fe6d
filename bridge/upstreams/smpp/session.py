"""One bound SMPP session: a TCP or TLS connection, its window of outstanding requests, its
enquire_link timer and its dead-link watchdog.

002 (tests/specs/002_e7d2ff51d5c777f0.txt, line 1379): "Enquire_links обязательны" — the
provider expects them from a transmitter and breaks a link silent for two minutes; to a
receiver it sends one every 30 seconds and expects the resp; over a transceiver both sides
send them. So this side sends one every ``enquire_link_interval`` whatever else is going on,
answers the SMSC's, and drops a link from which nothing at all arrived for
``link_dead_after`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from bridge.upstreams.smpp.pdu import (
    ALERT_NOTIFICATION,
    DELIVER_SM,
    ENQUIRE_LINK,
    ESME_RINVCMDID,
    ESME_ROK,
    ESME_RX_T_APPN,
    GENERIC_NACK,
    OUTBIND,
    RESPONSE,
    UNBIND,
    FramingError,
    Pdu,
    bind_body,
    bind_resp_system_id,
    deliver_sm_resp_body,
    read_pdu,
    status_name,
)

log = logging.getLogger(__name__)

# A deliver_sm handler: the PDU body in, the deliver_sm_resp's command_status out.
DeliverHandler = Callable[[bytes], Awaitable[int]]


class LinkLost(Exception):
    """The link ended. ``written``: the request had been written to it, so the SMSC may have
    acted on it (its outcome is unknown)."""

    def __init__(self, reason: str, *, written: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.written = written


class ResponseTimeout(Exception):
    """No response within the response timeout to a request that was written."""


class BindRefused(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status_name(status))
        self.status = status


class SmppSession:
    """A connection after ``open``: ``bind`` once, then ``serve`` until the link ends while
    other tasks call ``request``. At most ``window`` windowed requests are outstanding."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                 label: str, window: int, response_timeout: float,
                 enquire_link_interval: float, link_dead_after: float,
                 on_deliver: DeliverHandler | None = None, handler_limit: int = 64) -> None:
        self.reader = reader
        self.writer = writer
        self.label = label
        self.response_timeout = response_timeout
        self.enquire_link_interval = enquire_link_interval
        self.link_dead_after = link_dead_after
        self.on_deliver = on_deliver
        self.window = asyncio.Semaphore(window)
        self.closed = asyncio.Event()
        self.close_reason = ""
        self.last_received = time.monotonic()
        self.started = time.monotonic()
        self._sequence = itertools.cycle(range(1, 0x7FFFFFFF + 1))
        self._pending: dict[int, tuple[int, asyncio.Future[Pdu]]] = {}
        self._enquiries: set[int] = set()
        self.peak_outstanding = 0  # the most requests awaiting their response at once
        self._idle = asyncio.Event()
        self._idle.set()
        # deliver_sm being handled (committed, then answered); bounded so that an SMSC
        # pushing faster than the store commits is slowed down by TCP, not by memory.
        self._handlers: set[asyncio.Task[None]] = set()
        self._handler_slots = asyncio.Semaphore(handler_limit)

    # -- writing ---------------------------------------------------------------------------

    def _next_sequence(self) -> int:
        return next(self._sequence)

    async def _write(self, pdu: Pdu) -> None:
        """Write one PDU. Raises ``LinkLost(written=False)`` if the link is already closed,
        ``LinkLost(written=True)`` if it broke while the PDU was going out."""
        if self.closed.is_set() or self.writer.is_closing():
            raise LinkLost(self.close_reason or "link closed", written=False)
        self.writer.write(pdu.encode())
        try:
            await self.writer.drain()
        except (ConnectionError, OSError) as exc:
            self._teardown(f"write failed: {type(exc).__name__}")
            raise LinkLost(self.close_reason, written=True) from None

    async def request(self, command_id: int, body: bytes = b"", *,
                      windowed: bool = True) -> Pdu:
        """Send a request and wait for its response (or the generic_nack naming it)."""
        async with self.window if windowed else contextlib.nullcontext():
            sequence = self._next_sequence()
            future: asyncio.Future[Pdu] = asyncio.get_running_loop().create_future()
            self._pending[sequence] = (command_id | RESPONSE, future)
            self._idle.clear()
            self.peak_outstanding = max(self.peak_outstanding, len(self._pending))
            try:
                await self._write(Pdu(command_id, ESME_ROK, sequence, body))
                try:
                    async with asyncio.timeout(self.response_timeout):
                        return await future
                except TimeoutError:
                    raise ResponseTimeout(
                        f"no response to sequence {sequence} within "
                        f"{self.response_timeout}s") from None
            finally:
                self._pending.pop(sequence, None)
                if not self._pending:
                    self._idle.set()

    @property
    def outstanding(self) -> int:
        return len(self._pending)

    # -- bind and unbind ---------------------------------------------------------------------

    async def bind(self, command_id: int, system_id: str, password: str) -> str:
        """Bind before ``serve`` runs: the bind_*_resp is read here. Returns the SMSC's
        system_id; raises :class:`BindRefused`, or ``LinkLost`` if the link ends first."""
        sequence = self._next_sequence()
        await self._write(Pdu(command_id, ESME_ROK, sequence,
                              bind_body(system_id, password)))
        try:
            async with asyncio.timeout(self.response_timeout):
                while True:
                    pdu = await read_pdu(self.reader)
                    if pdu.sequence != sequence:
                        continue  # nothing else is expected before the bind completes
                    if pdu.command_id not in (command_id | RESPONSE, GENERIC_NACK):
                        continue
                    if pdu.status != ESME_ROK or pdu.command_id == GENERIC_NACK:
                        raise BindRefused(pdu.status)
                    self.last_received = time.monotonic()
                    return bind_resp_system_id(pdu.body)
        except TimeoutError:
            self._teardown("no bind response")
            raise LinkLost(self.close_reason, written=True) from None
        except (asyncio.IncompleteReadError, ConnectionError, OSError, FramingError) as exc:
            self._teardown(f"link lost while binding: {type(exc).__name__}")
            raise LinkLost(self.close_reason, written=True) from None

    async def unbind(self, timeout: float = 2.0, reason: str = "unbound") -> None:
        """End the session politely (SMPP 3.4 §4.2), then close the connection."""
        if self.closed.is_set():
            return
        self.close_reason = reason  # what serve() reports, whoever closes the link
        with contextlib.suppress(LinkLost, ResponseTimeout, TimeoutError):
            async with asyncio.timeout(timeout):
                await self.request(UNBIND, windowed=False)
        self._teardown(reason)

    async def wait_idle(self, timeout: float) -> None:
        """Until no request awaits its response (or ``timeout`` passes)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()

    def _teardown(self, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_reason = self.close_reason or reason
        self.closed.set()
        for _, future in self._pending.values():
            if not future.done():
                future.set_exception(LinkLost(reason, written=True))
        with contextlib.suppress(Exception):
            self.writer.close()

    async def drain_handlers(self, timeout: float) -> None:
        """Let deliver_sm being committed finish, so that their resps go out."""
        if self._handlers:
            await asyncio.wait(set(self._handlers), timeout=timeout)

    # -- reading -----------------------------------------------------------------------------

    async def serve(self) -> str:
        """Read and answer until the link ends; returns why it ended."""
        keeper = asyncio.create_task(self._keep_alive(), name=f"{self.label}-enquire-link")
        try:
            await self._read_loop()
        finally:
            keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await keeper
            self._teardown(self.close_reason or "link closed")
        return self.close_reason

    async def _read_loop(self) -> None:
        while not self.closed.is_set():
            try:
                pdu = await read_pdu(self.reader)
            except FramingError as exc:
                log.error("smpp: unframeable PDU, dropping the link",
                          extra={"session": self.label, "error": str(exc)})
                self._teardown(f"malformed PDU: {exc}")
                return
            except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
                self._teardown(f"connection closed by peer ({type(exc).__name__})")
                return
            self.last_received = time.monotonic()
            if pdu.is_response:
                self._response(pdu)
            else:
                await self._request(pdu)

    def _response(self, pdu: Pdu) -> None:
        if pdu.sequence in self._enquiries:
            self._enquiries.discard(pdu.sequence)
            return
        entry = self._pending.get(pdu.sequence)
        if entry is None or (pdu.command_id != entry[0] and pdu.command_id != GENERIC_NACK):
            log.warning("smpp: response matching no request",
                        extra={"session": self.label, "command": pdu.name,
                               "status": status_name(pdu.status), "sequence": pdu.sequence})
            return
        if not entry[1].done():
            entry[1].set_result(pdu)

    async def _request(self, pdu: Pdu) -> None:
        command = pdu.command_id
        if command == ENQUIRE_LINK:
            await self._answer(Pdu(ENQUIRE_LINK | RESPONSE, ESME_ROK, pdu.sequence))
        elif command == DELIVER_SM and self.on_deliver is not None:
            await self._handler_slots.acquire()
            task = asyncio.create_task(self._deliver(pdu))
            self._handlers.add(task)
            task.add_done_callback(self._handlers.discard)
        elif command == UNBIND:
            await self._answer(Pdu(UNBIND | RESPONSE, ESME_ROK, pdu.sequence))
            self._teardown("unbound by the SMSC")
        elif command in (ALERT_NOTIFICATION, OUTBIND):
            pass  # no response is defined for these (SMPP 3.4 §4.12, §4.1.7)
        else:
            # An unknown command, or one an ESME does not take (SMPP 3.4 §4.3: a generic_nack
            # with ESME_RINVCMDID); a deliver_sm on a transmitter bind is one of these.
            log.warning("smpp: request not supported, answered generic_nack",
                        extra={"session": self.label, "command": pdu.name,
                               "sequence": pdu.sequence})
            await self._answer(Pdu(GENERIC_NACK, ESME_RINVCMDID, pdu.sequence))

    async def _deliver(self, pdu: Pdu) -> None:
        assert self.on_deliver is not None
        try:
            try:
                status = await self.on_deliver(pdu.body)
            except Exception:  # a bug must not leave the SMSC without an answer
                log.exception("smpp: deliver_sm handler failed", extra={"session": self.label})
                status = ESME_RX_T_APPN
            await self._answer(Pdu(DELIVER_SM | RESPONSE, status, pdu.sequence,
                                   deliver_sm_resp_body()))
        finally:
            self._handler_slots.release()

    async def _answer(self, pdu: Pdu) -> None:
        with contextlib.suppress(LinkLost):
            await self._write(pdu)

    async def _keep_alive(self) -> None:
        """enquire_link every interval; the link is dead when nothing at all came for
        ``link_dead_after`` seconds (an answered enquire_link is something)."""
        next_enquiry = time.monotonic() + self.enquire_link_interval
        while not self.closed.is_set():
            now = time.monotonic()
            dead_at = self.last_received + self.link_dead_after
            if now >= dead_at:
                log.warning("smpp: link silent, dropping it",
                            extra={"session": self.label, "silent_for": self.link_dead_after})
                self._teardown(f"link silent for {self.link_dead_after}s")
                return
            if now >= next_enquiry:
                sequence = self._next_sequence()
                self._enquiries.add(sequence)
                if len(self._enquiries) > 1000:  # never answered: do not grow without end
                    self._enquiries = {sequence}
                with contextlib.suppress(LinkLost):
                    await self._write(Pdu(ENQUIRE_LINK, ESME_ROK, sequence))
                next_enquiry = now + self.enquire_link_interval
            await asyncio.sleep(max(0.0, min(next_enquiry, dead_at) - time.monotonic()))
