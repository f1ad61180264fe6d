"""A test SMSC: SMS Traffic's SMPP 3.4 server as its spec describes it, on an ephemeral port.

Written from the SMPP v3.4 specification (Issue 1.2: header §3.2, bind §4.1, unbind §4.2,
generic_nack §4.3, submit_sm §4.4, deliver_sm §4.6, enquire_link §4.11, command_status
§5.1.3, esm_class §5.2.12, data_coding §5.2.19, TLVs §5.3, Appendix B receipts) and from
tests/specs/002_e7d2ff51d5c777f0.txt, "SMPP протокол" (line 1367) — not from the bridge's
code, whose PDUs it decodes with its own parser:

- bind: Table 1 (system_id/password, ``interface_version`` 0x34), ESME_RINVPASWD for wrong
  credentials, ESME_RALYBND for a second receiver/transceiver of one system_id ("на один наш
  хост+system_id не более одного receiver/transceiver"), scripted refusals (ESME_RBINDFAIL
  "при отсутствии денежных средств", ESME_RTHROTTLED);
- enquire_link: expected from a transmitter or transceiver, a link without one for
  ``dead_after`` seconds is cut; sent to a receiver or transceiver every
  ``enquire_link_interval`` seconds, and a link that leaves them unanswered for
  ``dead_after`` is cut;
- submit_sm: Table 2 (source TON/NPI 5/0 or 1/1, destination 1/1, no TLV, the unsupported
  fields empty), data_coding 0 carrying only the characters of the table of "Кодировки"
  (line 1441), UDH concatenation as "UDH-склейка" (line 1491) shows it, part sizes,
  ESME_RTHROTTLED above ``max_rate`` submits per second;
- receipts: Table 3's text plus the TLVs message_state (0x0427), receipted_message_id
  (0x001e) and, on a negative report, network_error_code (0x0423, network type 0x08);
- MO: deliver_sm with the text in GSM 03.38 or UCS-2, long ones split under a UDH.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import ssl
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Self

# SMPP 3.4 §5.1.2
GENERIC_NACK = 0x80000000
BIND_RECEIVER, BIND_TRANSMITTER, BIND_TRANSCEIVER = 0x01, 0x02, 0x09
SUBMIT_SM, DELIVER_SM, UNBIND, ENQUIRE_LINK = 0x04, 0x05, 0x06, 0x15
RESP = 0x80000000
BIND_MODES = {BIND_RECEIVER: "receiver", BIND_TRANSMITTER: "transmitter",
              BIND_TRANSCEIVER: "transceiver"}
# SMPP 3.4 §5.1.3
ROK, RINVMSGLEN, RINVCMDLEN, RINVCMDID, RINVBNDSTS, RALYBND = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
RSYSERR, RINVDSTADR, RBINDFAIL, RINVPASWD = 0x08, 0x0B, 0x0D, 0x0E
RINVSRCTON, RINVSRCNPI, RINVDSTTON, RINVDSTNPI = 0x48, 0x49, 0x50, 0x51
RTHROTTLED, RINVEXPIRY, ROPTPARNOTALLWD = 0x58, 0x62, 0xC1

# 3GPP TS 23.038 default alphabet, by septet.
GSM = ("@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
       "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà")
GSM_CODE = {ch: i for i, ch in enumerate(GSM)}
# 002's table (lines 1443-1455) has no character at 0x10 and 0x12-0x1B: such octets with
# data_coding 0 do not reach the phone as sent ("поддерживается корректная передача только
# символов из таблицы выше").
NOT_IN_TABLE = frozenset({0x10, *range(0x12, 0x1C)})


class ProtocolViolation(AssertionError):
    pass


def cstr(value: str) -> bytes:
    return value.encode("ascii") + b"\0"


def tlv(tag: int, value: bytes) -> bytes:
    return struct.pack(">HH", tag, len(value)) + value


class Fields:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise ProtocolViolation("PDU body too short")
        self.at += 1
        return self.data[self.at - 1]

    def cstr(self, limit: int) -> str:
        end = self.data.find(b"\0", self.at)
        if end < 0 or end - self.at + 1 > limit:
            raise ProtocolViolation(f"C-Octet String not terminated within {limit} octets")
        value = self.data[self.at:end].decode("ascii")
        self.at = end + 1
        return value

    def take(self, count: int) -> bytes:
        if self.at + count > len(self.data):
            raise ProtocolViolation("PDU body too short")
        self.at += count
        return self.data[self.at - count:self.at]


@dataclass
class Bind:
    mode: str
    system_id: str
    password: str
    interface_version: int
    status: int


@dataclass
class Submit:
    """One submit_sm as received, decoded by the double."""

    sequence: int
    source_ton: int
    source_npi: int
    source: str
    dest_ton: int
    dest_npi: int
    destination: str
    esm_class: int
    registered_delivery: int
    validity: str
    data_coding: int
    short_message: bytes
    udh: bytes  # the user data header, if esm_class has UDHI
    text: str  # the user data after the header, decoded as data_coding says
    concat: tuple[int, int, int] | None  # (reference, total, index)
    message_id: str = ""  # what the double answered (accepted ones)
    status: int = ROK
    at: float = 0.0


@dataclass
class Session:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    mode: str = ""
    system_id: str = ""
    last_enquire_from_esme: float = field(default_factory=time.monotonic)
    last_resp_from_esme: float = field(default_factory=time.monotonic)
    pending: dict[int, asyncio.Future[tuple[int, bytes]]] = field(default_factory=dict)
    closed: bool = False
    enquire_links_received: int = 0

    @property
    def receives(self) -> bool:
        return self.mode in ("receiver", "transceiver")

    @property
    def sends(self) -> bool:
        return self.mode in ("transmitter", "transceiver")


class SmppSmscDouble:
    def __init__(self, *, system_id: str = "acme", password: str = "secret",
                 enquire_link_interval: float = 30.0, dead_after: float = 120.0,
                 max_rate: float = 0.0, tls: ssl.SSLContext | None = None) -> None:
        self.system_id, self.password = system_id, password
        self.enquire_link_interval = enquire_link_interval
        self.dead_after = dead_after
        self.max_rate = max_rate  # submits per second; above it ESME_RTHROTTLED (002)
        self.tls = tls
        self.port = 0
        self.url = ""
        # Scripted behaviour.
        self.bind_refusals: deque[int] = deque()  # statuses for the next binds
        self.submit_script: deque[int | str] = deque()  # status, "nack", "drop", "silent"
        self.hold_responses = False  # keep submit_sm_resps until release()
        self.auto_receipt: str | None = None  # stat of a receipt sent after each submit
        self.receipt_before_resp = False
        self.silent = False  # read everything, answer and send nothing (a dead link)
        # Records.
        self.binds: list[Bind] = []
        self.submits: list[Submit] = []
        self.generic_nacks: list[tuple[int, int]] = []  # (status, sequence) received
        self.deliver_resps: list[tuple[int, float]] = []  # (status, loop time)
        self.sessions: list[Session] = []
        self.max_held = 0  # the most submit_sm held unanswered at once (hold_responses)
        self.violations: list[str] = []
        self._held: list[tuple[Session, Submit]] = []
        self._ids = itertools.count(1_000_000_001)
        self._sequence = itertools.count(1)
        self._rate_window: deque[float] = deque()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Condition()

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port,
                                                  ssl=self.tls)
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'smpps' if self.tls else 'smpp'}://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.drop_all()
        for task in list(self._tasks):
            task.cancel()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def drop_all(self) -> None:
        """Close every connection without an unbind (a link that breaks)."""
        for session in self.sessions:
            self._close(session)

    def _close(self, session: Session) -> None:
        if not session.closed:
            session.closed = True
            session.writer.close()
            for future in session.pending.values():
                if not future.done():
                    future.set_exception(ConnectionError("link closed"))

    def _spawn(self, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        try:
            async with asyncio.timeout(timeout):
                async with self._changed:
                    await self._changed.wait_for(predicate)
        except TimeoutError:
            raise AssertionError("the SMSC double did not see what was awaited") from None

    async def wait_for_submits(self, count: int, timeout: float = 10.0) -> list[Submit]:
        await self.wait_until(lambda: len([s for s in self.submits if s.status == ROK])
                              >= count, timeout)
        return [s for s in self.submits if s.status == ROK]

    def bound(self, mode: str | None = None) -> list[Session]:
        return [s for s in self.sessions if s.mode and not s.closed
                and (mode is None or s.mode == mode)]

    # -- the wire -----------------------------------------------------------------------------

    async def _write(self, session: Session, command: int, status: int, sequence: int,
                     body: bytes = b"") -> None:
        if session.closed:
            return
        session.writer.write(struct.pack(">IIII", 16 + len(body), command, status, sequence)
                             + body)
        with contextlib.suppress(ConnectionError):
            await session.writer.drain()

    async def _connection(self, reader: asyncio.StreamReader,
                          writer: asyncio.StreamWriter) -> None:
        session = Session(reader, writer)
        self.sessions.append(session)
        watchdog = asyncio.create_task(self._watchdog(session))
        try:
            while not session.closed:
                header = await reader.readexactly(16)
                length, command, status, sequence = struct.unpack(">IIII", header)
                if length < 16 or length > 65536:
                    self.violations.append(f"command_length {length}")
                    break
                body = await reader.readexactly(length - 16)
                if self.silent:
                    continue
                await self._handle(session, command, status, sequence, body)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            watchdog.cancel()
            self._close(session)
            await self._notify()

    async def _watchdog(self, session: Session) -> None:
        """002: a transmitter's link without enquire_links for two minutes is cut; to a
        receiver the SMSC sends one every 30 s and cuts the link when they go unanswered;
        over a transceiver both."""
        last_sent = time.monotonic()
        while not session.closed:
            await asyncio.sleep(min(self.enquire_link_interval, self.dead_after) / 4)
            now = time.monotonic()
            if not session.mode:
                continue
            if session.sends and now - session.last_enquire_from_esme > self.dead_after:
                self.violations.append("no enquire_link from the ESME")
                self._close(session)
                await self._notify()
                return
            if session.receives:
                if now - session.last_resp_from_esme > self.dead_after:
                    self.violations.append("enquire_link unanswered")
                    self._close(session)
                    await self._notify()
                    return
                if now - last_sent >= self.enquire_link_interval and not self.silent:
                    last_sent = now
                    self._spawn(self._request(session, ENQUIRE_LINK, b""))

    def _start_request(self, session: Session, command: int,
                       body: bytes) -> tuple[int, asyncio.Future[tuple[int, bytes]]]:
        """Write a request now (in order with what is written next); its resp later."""
        sequence = next(self._sequence)
        future: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        session.pending[sequence] = future
        if not session.closed:
            session.writer.write(struct.pack(">IIII", 16 + len(body), command, ROK, sequence)
                                 + body)
        return sequence, future

    async def _request(self, session: Session, command: int, body: bytes,
                       timeout: float = 5.0) -> tuple[int, bytes] | None:
        sequence, future = self._start_request(session, command, body)
        return await self._response(session, sequence, future, timeout)

    @staticmethod
    async def _response(session: Session, sequence: int,
                        future: asyncio.Future[tuple[int, bytes]],
                        timeout: float = 5.0) -> tuple[int, bytes] | None:
        try:
            async with asyncio.timeout(timeout):
                return await future
        except (TimeoutError, ConnectionError):
            return None
        finally:
            session.pending.pop(sequence, None)

    async def _handle(self, session: Session, command: int, status: int, sequence: int,
                      body: bytes) -> None:
        if command & RESP:
            session.last_resp_from_esme = time.monotonic()
            if command == GENERIC_NACK:
                self.generic_nacks.append((status, sequence))
            future = session.pending.get(sequence)
            if future is not None and not future.done():
                future.set_result((status, body))
            if command == DELIVER_SM | RESP:
                self.deliver_resps.append((status, asyncio.get_running_loop().time()))
            await self._notify()
            return
        if command in BIND_MODES:
            await self._bind(session, command, sequence, body)
        elif not session.mode:
            await self._write(session, GENERIC_NACK, RINVBNDSTS, sequence)
        elif command == ENQUIRE_LINK:
            session.last_enquire_from_esme = time.monotonic()
            session.enquire_links_received += 1
            await self._write(session, ENQUIRE_LINK | RESP, ROK, sequence)
        elif command == UNBIND:
            await self._write(session, UNBIND | RESP, ROK, sequence)
            self._close(session)
        elif command == SUBMIT_SM:
            await self._submit(session, sequence, body)
        else:
            # 002: "Не поддерживаются: query_sm, data_sm, submit_multi_sm, replace_sm".
            await self._write(session, GENERIC_NACK, RINVCMDID, sequence)
        await self._notify()

    async def _bind(self, session: Session, command: int, sequence: int, body: bytes) -> None:
        fields = Fields(body)
        system_id, password = fields.cstr(16), fields.cstr(9)
        fields.cstr(13)  # system_type: "Игнорируется"
        version = fields.byte()
        mode = BIND_MODES[command]
        status = ROK
        if self.bind_refusals:
            status = self.bind_refusals.popleft()
        elif session.mode:
            status = RALYBND
        elif system_id != self.system_id or password != self.password:
            status = RINVPASWD
        elif mode != "transmitter" and self.bound("receiver") + self.bound("transceiver"):
            status = RALYBND
        self.binds.append(Bind(mode, system_id, password, version, status))
        if version != 0x34:
            self.violations.append(f"interface_version 0x{version:02x}")
        if status == ROK:
            session.mode, session.system_id = mode, system_id
            session.last_enquire_from_esme = session.last_resp_from_esme = time.monotonic()
            await self._write(session, command | RESP, ROK, sequence, cstr("SMSTRAFFIC"))
        else:
            await self._write(session, command | RESP, status, sequence)

    def _throttled(self) -> bool:
        if self.max_rate <= 0:
            return False
        now = time.monotonic()
        while self._rate_window and now - self._rate_window[0] > 1.0:
            self._rate_window.popleft()
        if len(self._rate_window) >= self.max_rate:
            return True
        self._rate_window.append(now)
        return False

    async def _submit(self, session: Session, sequence: int, body: bytes) -> None:
        try:
            submit = self._decode_submit(sequence, body)
        except ProtocolViolation as exc:
            self.violations.append(str(exc))
            await self._write(session, SUBMIT_SM | RESP, RINVMSGLEN, sequence)
            return
        if not session.sends:
            submit.status = RINVBNDSTS
        elif self.submit_script:
            action = self.submit_script.popleft()
            if action == "drop":
                self.submits.append(submit)
                submit.status = -1
                self._close(session)
                return
            if action == "silent":
                submit.status = -1
                self.submits.append(submit)
                return
            if action == "nack":
                submit.status = RSYSERR
                self.submits.append(submit)
                await self._write(session, GENERIC_NACK, RINVCMDLEN, sequence)
                return
            assert isinstance(action, int)
            submit.status = action
        elif self._throttled():
            submit.status = RTHROTTLED
        if submit.status == ROK:
            submit.status = self._check(submit)
        self.submits.append(submit)
        if submit.status != ROK:
            await self._write(session, SUBMIT_SM | RESP, submit.status, sequence)
            return
        submit.message_id = str(next(self._ids))  # Table 3: "Id … 10 … (Decimal)"
        self.max_held = max(self.max_held, len(self._held) + 1)
        if self.hold_responses:
            self._held.append((session, submit))
            return
        await self._accept(session, submit)

    async def _accept(self, session: Session, submit: Submit) -> None:
        if self.auto_receipt and self.receipt_before_resp:
            # The receipt is on the wire before the submit_sm_resp; its resp comes later.
            receipt = self.receipt_body(submit.message_id, self.auto_receipt, submit=submit)
            sequence, future = self._start_request(self._receiver(), DELIVER_SM, receipt)
            self._spawn(self._response(self._receiver(), sequence, future))
        await self._write(session, SUBMIT_SM | RESP, ROK, submit.sequence,
                          cstr(submit.message_id))
        if self.auto_receipt and not self.receipt_before_resp:
            self._spawn(self.send_receipt(submit.message_id, self.auto_receipt, submit=submit))

    async def release(self) -> None:
        """Answer the submit_sm held by ``hold_responses``."""
        self.hold_responses = False
        held, self._held = self._held, []
        for session, submit in held:
            await self._accept(session, submit)

    def _decode_submit(self, sequence: int, body: bytes) -> Submit:
        f = Fields(body)
        service_type = f.cstr(6)
        source_ton, source_npi, source = f.byte(), f.byte(), f.cstr(21)
        dest_ton, dest_npi, destination = f.byte(), f.byte(), f.cstr(21)
        esm_class, _protocol_id, priority = f.byte(), f.byte(), f.byte()
        schedule, validity = f.cstr(17), f.cstr(17)
        registered, replace, coding, default_id = f.byte(), f.byte(), f.byte(), f.byte()
        length = f.byte()
        short_message = f.take(length)
        # Table 2: "Не поддерживается".
        for name, value in (("service_type", service_type), ("priority_flag", priority),
                            ("schedule_delivery_time", schedule),
                            ("replace_if_present_flag", replace),
                            ("sm_default_msg_id", default_id)):
            if value:
                self.violations.append(f"{name} set: {value!r}")
        udh, data, concat = b"", short_message, None
        if esm_class & 0x40:
            if not short_message or short_message[0] + 1 > len(short_message):
                raise ProtocolViolation("UDHI set without a whole user data header")
            udh, data = short_message[:short_message[0] + 1], short_message[short_message[0] + 1:]
            # 002 line 1497-1511: 05 00 03 REF TOTAL N, or 06 08 04 REF REF TOTAL N.
            if udh[:3] == b"\x05\x00\x03" and len(udh) == 6:
                concat = (udh[3], udh[4], udh[5])
            elif udh[:3] == b"\x06\x08\x04" and len(udh) == 7:
                concat = (struct.unpack(">H", udh[3:5])[0], udh[5], udh[6])
            else:
                self.violations.append(f"unexpected UDH {udh.hex()}")
        if coding in (0x00, 0x10):
            if any(b > 0x7F or b in NOT_IN_TABLE for b in data):
                self.violations.append(f"data_coding 0 with octets outside 002's table: "
                                       f"{data.hex()}")
            text = "".join(GSM[b] if b <= 0x7F else "\ufffd" for b in data)
        elif coding in (0x08, 0x18):
            text = data.decode("utf-16-be", errors="replace")
        else:
            self.violations.append(f"data_coding {coding}")
            text = data.decode("latin-1")
        submit = Submit(sequence, source_ton, source_npi, source, dest_ton, dest_npi,
                        destination, esm_class, registered, validity, coding, short_message,
                        udh, text, concat, at=time.monotonic())
        if f.at != len(body):
            submit.status = ROPTPARNOTALLWD  # 002: "tlv (для SUBMIT_SM)" not supported
        return submit

    def _check(self, s: Submit) -> int:
        """Table 2 and the part sizes of "UDH-склейка"."""
        if s.source:
            numeric = s.source.isdigit() and len(s.source) <= 15
            if numeric and s.source_ton != 1:
                return RINVSRCTON
            if numeric and s.source_npi != 1:
                return RINVSRCNPI
            if not numeric:
                if len(s.source) > 11:
                    return 0x0A  # ESME_RINVSRCADR
                if s.source_ton != 5:
                    return RINVSRCTON
                if s.source_npi != 0:
                    return RINVSRCNPI
        if s.dest_ton != 1:
            return RINVDSTTON
        if s.dest_npi != 1:
            return RINVDSTNPI
        if not s.destination.isdigit():
            return RINVDSTADR
        if s.validity and not (len(s.validity) == 16 and s.validity[-1] in "R+-"):
            return RINVEXPIRY
        data_octets = len(s.short_message) - len(s.udh)
        if s.data_coding in (0x00, 0x10):
            # Unpacked septets: the text and the header's septets share the 160.
            septets = data_octets + -(-len(s.udh) * 8 // 7)
            if septets > 160:
                return RINVMSGLEN
        elif len(s.short_message) > 140:
            return RINVMSGLEN
        return ROK

    # -- SMSC-originated traffic --------------------------------------------------------------

    def _receiver(self) -> Session:
        sessions = self.bound("receiver") + self.bound("transceiver")
        if not sessions:
            raise AssertionError("no receiver or transceiver bound")
        return sessions[0]

    async def wait_for_receiver(self, timeout: float = 10.0) -> Session:
        await self.wait_until(lambda: bool(self.bound("receiver") + self.bound("transceiver")),
                              timeout)
        return self._receiver()

    async def deliver(self, body: bytes, timeout: float = 10.0) -> int | None:
        """Send a deliver_sm body to the bound receiver; its deliver_sm_resp status (None
        without an answer in ``timeout``)."""
        session = await self.wait_for_receiver()
        answer = await self._request(session, DELIVER_SM, body, timeout)
        return None if answer is None else answer[0]

    async def ping(self) -> None:
        """An enquire_link round trip to every bound session: whatever an ESME wrote before
        its enquire_link_resp has been read by then (one TCP stream, in order)."""
        for session in self.bound():
            await self._request(session, ENQUIRE_LINK, b"")

    async def send_raw(self, data: bytes) -> None:
        session = await self.wait_for_receiver()
        session.writer.write(data)
        await session.writer.drain()

    @staticmethod
    def deliver_body(source: str, destination: str, short_message: bytes, *,
                     esm_class: int = 0, data_coding: int = 0, tlvs: bytes = b"") -> bytes:
        return (cstr("") + bytes((1, 1)) + cstr(source) + bytes((1, 1)) + cstr(destination)
                + bytes((esm_class, 0, 0)) + cstr("") + cstr("") + bytes((0, 0, data_coding, 0))
                + bytes((len(short_message),)) + short_message + tlvs)

    async def send_receipt(self, message_id: str, stat: str, *, err: int = 0,
                           submit: Submit | None = None, with_tlvs: bool = True) -> int | None:
        """Send a receipt; the status of its deliver_sm_resp."""
        return await self.deliver(self.receipt_body(message_id, stat, err=err, submit=submit,
                                                    with_tlvs=with_tlvs))

    def receipt_body(self, message_id: str, stat: str, *, err: int = 0,
                     submit: Submit | None = None, with_tlvs: bool = True) -> bytes:
        """A receipt in Table 3's format with the TLVs 002 lists after it."""
        now = datetime.now().strftime("%y%m%d%H%M")
        delivered = 1 if stat == "DELIVRD" else 0
        text = (f"id:{message_id} sub:001 dlvrd:{delivered:03d} submit date:{now} "
                f"done date:{now} stat:{stat} err:{err:03d} text:"
                f"{(submit.text if submit else '')[:20]}")
        state = {"ENROUTE": 1, "DELIVRD": 2, "EXPIRED": 3, "DELETED": 4, "UNDELIV": 5,
                 "ACCEPTD": 6, "UNKNOWN": 7, "REJECTD": 8}[stat]
        tlvs = b""
        if with_tlvs:
            tlvs = tlv(0x0427, bytes((state,))) + tlv(0x001E, cstr(message_id))
            if stat not in ("DELIVRD", "ENROUTE", "ACCEPTD"):
                tlvs += tlv(0x0423, bytes((0x08,)) + struct.pack(">H", err))
        # data_coding 0: the fields are ASCII, where GSM 03.38 agrees (but for @ $ _, which
        # the fields never hold); the text excerpt keeps its ASCII characters only.
        encoded = text.encode("ascii", errors="replace")
        return self.deliver_body(submit.destination if submit else "79990000000",
                                 submit.source if submit else "", encoded[:254],
                                 esm_class=0x04, tlvs=tlvs)

    async def send_mo(self, source: str, destination: str, text: str, *, ucs2: bool = False,
                      reference: int = 0x2A, parts: int = 1, two_byte: bool = False,
                      only: tuple[int, ...] | None = None) -> list[int | None]:
        """An SMS from a subscriber, in ``parts`` parts under a concatenation UDH. Parts go
        out at once, without waiting for each resp (an SMSC window); their statuses in
        order. ``only``: send just these parts (1-based)."""
        if ucs2 or any(ch not in GSM_CODE for ch in text):
            data = text.encode("utf-16-be")
            units = [data[i:i + 2] for i in range(0, len(data), 2)]
            coding = 0x08
        else:
            units = [bytes((GSM_CODE[ch],)) for ch in text]
            coding = 0x00
        if parts == 1:
            return [await self.deliver(self.deliver_body(
                source, destination, b"".join(units), data_coding=coding))]
        size = -(-len(units) // parts)
        chunks = [b"".join(units[i:i + size]) for i in range(0, len(units), size)]
        bodies = []
        for index, chunk in enumerate(chunks, start=1):
            udh = (b"\x06\x08\x04" + struct.pack(">H", reference) if two_byte
                   else b"\x05\x00\x03" + bytes((reference,))) + bytes((len(chunks), index))
            bodies.append(self.deliver_body(source, destination, udh + chunk, esm_class=0x40,
                                            data_coding=coding))
        chosen = [b for i, b in enumerate(bodies, start=1) if only is None or i in only]
        return list(await asyncio.gather(*(self.deliver(b) for b in chosen)))
