"""The ``smpp`` upstream: SMS Traffic over SMPP 3.4 (tests/specs/002_e7d2ff51d5c777f0.txt,
"SMPP протокол", line 1367).

Sending goes through :meth:`SmppUpstream.send`, like every upstream; the bound sessions, and
what the SMSC pushes over them (delivery receipts, subscribers' SMS), live in
:meth:`SmppUpstream.run`, which the bridge runs for the life of the process and which hands
receipts and messages to an :class:`~bridge.upstreams.base.InboundSink`. This module knows
no store and no inbound service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, ClassVar

import httpx
from prometheus_client import Counter

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.models import InboundMessage
from bridge.parsing.text import normalize_newlines, strip_controls
from bridge.upstreams.base import InboundSink, OutboundSms, SendReceipt
from bridge.upstreams.smpp.coding import (
    MAX_PARTS,
    Concatenation,
    decode_text,
    encode_message,
    parse_receipt,
    sar_concatenation,
    split_udh,
)
from bridge.upstreams.smpp.pdu import (
    ESME_RALYBND,
    ESME_RBINDFAIL,
    ESME_RINVPASWD,
    ESME_RINVSYSID,
    ESME_RMSGQFUL,
    ESME_ROK,
    ESME_RSYSERR,
    ESME_RTHROTTLED,
    ESME_RX_P_APPN,
    ESME_RX_T_APPN,
    GENERIC_NACK,
    SUBMIT_SM,
    DeliverSm,
    PduError,
    SubmitSm,
    decode_deliver_sm,
    message_id,
    status_name,
)
from bridge.upstreams.smpp.session import (
    BindRefused,
    LinkLost,
    ResponseTimeout,
    SmppSession,
)
from bridge.upstreams.smpp.wire import (
    ROLES,
    TRANSCEIVER,
    TRANSMITTER,
    Host,
    Role,
    parse_host,
    relative_validity,
    source_address,
)

if TYPE_CHECKING:
    from bridge.upstreams.smpp.settings import SmppSettings

log = logging.getLogger(__name__)

PDUS_REFUSED = Counter("bridge_smpp_pdus_refused_total",
                       "PDUs from an SMSC that could not be taken (malformed, unknown id …)",
                       ["upstream", "reason"])
BINDS = Counter("bridge_smpp_binds_total", "SMPP bind attempts", ["upstream", "outcome"])

# submit_sm_resp statuses after which a retry cannot succeed (SMPP 3.4 §5.1.3): the PDU or
# its addresses are wrong. Any other refusal is worth a later retry.
PERMANENT_SUBMIT_STATUSES = frozenset({
    0x01, 0x02, 0x03, 0x06, 0x07, 0x0A, 0x0B, 0x0C, 0x15, 0x33, 0x34, 0x40, 0x42, 0x43,
    0x44, 0x48, 0x49, 0x50, 0x51, 0x53, 0x54, 0x55, 0x61, 0x62, 0x63, 0x65, 0x66, 0xC0,
    0xC1, 0xC2, 0xC3, 0xC4,
})
# Bind refusals that repeating cannot cure (002 "Типичные ошибки": ESME_RINVPASWD "при
# указании неверного system-id и(или) пароля"): the bridge stops binding until restarted,
# so that the provider does not see a stream of failed logins.
PERMANENT_BIND_STATUSES = frozenset({ESME_RINVPASWD, ESME_RINVSYSID})

HANDED_OVER = "handed over"  # a session ended on purpose to bind as another kind


def raw_record(message: DeliverSm) -> bytes:
    """What the inbound store keeps of a deliver_sm "as received": its addresses and coding
    and the user data in hex, as ``key=value&…`` like the parameters of an HTTP push."""
    return (f"source_addr={message.source_addr}&destination_addr={message.destination_addr}"
            f"&esm_class={message.esm_class}&data_coding={message.data_coding}"
            f"&short_message={message.payload.hex()}").encode("ascii", "backslashreplace")


def submit_error(name: str, status: int) -> UpstreamError:
    text = f"{name}: submit_sm refused: {status_name(status)}"
    if status in PERMANENT_SUBMIT_STATUSES:
        return PermanentUpstreamError(text, status_name(status))
    return TransientUpstreamError(text, status_name(status))


class _Assembly:
    """The parts of one concatenated MO SMS that arrived so far. Their deliver_sm are all
    answered when the whole message is committed (or, after ``wait`` seconds without the
    missing parts, when what arrived is committed)."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.parts: dict[int, str] = {}
        self.bodies: dict[int, bytes] = {}
        self.charset = ""
        self.charset_error = False
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.timer: asyncio.TimerHandle | None = None


class SmppUpstream:
    """An ESME bound to SMS Traffic's SMSC: primary host, then the backup (002 line 96-97)."""

    kind: ClassVar[str] = "smpp"
    settings: SmppSettings
    # SMPP has no idempotency key: a submit_sm whose resp was lost may have been sent.
    idempotent: ClassVar[bool] = False
    # Reconnects back off from ``reconnect_base`` to ``reconnect_max`` seconds (with jitter);
    # ESME_RTHROTTLED pauses submits from ``throttle_base`` up to ``throttle_max`` seconds.
    reconnect_base: float = 1.0
    reconnect_max: float = 60.0
    throttle_base: float = 0.25
    throttle_max: float = 8.0
    # How long the parts of a concatenated MO SMS wait for the missing ones.
    mo_part_wait: float = 30.0
    # Sent messages whose later parts are still to go, remembered so that a retry resumes
    # after the parts the SMSC accepted (bounded; forgotten on restart).
    PROGRESS_LIMIT: ClassVar[int] = 10_000

    def __init__(self, name: str, settings: SmppSettings,
                 client: httpx.AsyncClient | None = None) -> None:
        self.name = name
        self.settings = settings
        assert settings.base_url is not None
        self.hosts = [parse_host(settings.base_url)]
        if settings.backup_url:
            self.hosts.append(parse_host(settings.backup_url))
        self.roles = ROLES[settings.bind_mode]
        self._sender: SmppSession | None = None
        self._sender_ready = asyncio.Event()
        self._sessions: set[SmppSession] = set()
        self._closing = asyncio.Event()
        self._refused: str | None = None
        self._resume_at = 0.0
        self._throttle_level = 0
        self._progress: OrderedDict[str, dict[int, str]] = OrderedDict()
        self._assemblies: dict[tuple[str, str, int, int], _Assembly] = {}
        self._commits: set[asyncio.Task[None]] = set()
        self.bound_to: Host | None = None  # where the sending session is bound (tests, logs)

    # -- sessions -----------------------------------------------------------------------------

    async def run(self, sink: InboundSink) -> None:
        """Hold the bound sessions until :meth:`aclose`; reconnect with backoff."""
        await asyncio.gather(*(self._hold(role, sink) for role in self.roles))

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.reconnect_max, self.reconnect_base * 2 ** max(0, failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _hold(self, role: Role, sink: InboundSink) -> None:
        """Keep one session of ``role`` bound. A receiving role binds as a receiver only
        while this process holds the cluster's claim on it (002 line 1371: "на один наш
        хост+system_id не более одного receiver/transceiver"); without the claim a
        transceiver binds as a transmitter and a receiver waits, both asking again every
        ``enquire_link_interval``."""
        failures = 0
        try:
            while not self._closing.is_set():
                bind_role = role
                if role.receives and not await self._claim(sink):
                    if not role.sends:
                        await self._pause(self.settings.enquire_link_interval)
                        continue
                    bind_role = TRANSMITTER
                session = await self._open(bind_role, sink)
                if session is not None and self._closing.is_set():
                    await session.unbind()  # aclose came while this bind was under way
                    self._sessions.discard(session)
                    return
                if session is None:
                    if self._refused is not None:
                        return
                    failures += 1
                else:
                    started = time.monotonic()
                    reason = await self._serve(role, session, sink)
                    if self._closing.is_set():
                        return
                    log.warning("smpp link ended", extra={"upstream": self.name,
                                                          "role": role.name, "reason": reason})
                    # A session that ends at once counts as a failed attempt, so that an SMSC
                    # dropping every bind is not hammered; one handed over is not a failure.
                    lived = time.monotonic() - started
                    if reason == HANDED_OVER or lived > self.reconnect_max:
                        failures = 0
                    else:
                        failures += 1
                await self._pause(self._backoff(failures) if failures else 0)
        finally:
            if role.receives:
                await sink.release_receiver(self.name)

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._closing.wait()

    async def _claim(self, sink: InboundSink) -> bool:
        # The claim outlives a missed renewal or two, as the SMSC's own dead-link time does.
        return await sink.claim_receiver(self.name, self.settings.link_dead_after)

    async def _serve(self, role: Role, session: SmppSession, sink: InboundSink) -> str:
        """Serve a bound session until its link ends or it is handed over."""
        receiving = session.on_deliver is not None
        if role.sends:
            self._sender = session
            self._sender_ready.set()
        watcher = (asyncio.create_task(self._watch_claim(session, sink, receiving))
                   if role.receives else None)
        try:
            return await session.serve()
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            if self._sender is session:
                self._sender = None
                self._sender_ready.clear()
            self._sessions.discard(session)

    async def _watch_claim(self, session: SmppSession, sink: InboundSink,
                           receiving: bool) -> None:
        """Renew the claim every ``enquire_link_interval``. A receiving session whose claim
        is lost, or a transmitter standing in for a transceiver once the claim is had, is
        handed over: no new submit goes to it, the outstanding ones are answered, then it
        is unbound and the next bind is of the right kind."""
        while not session.closed.is_set():
            await asyncio.sleep(self.settings.enquire_link_interval)
            if await self._claim(sink) != receiving:
                log.info("smpp: receiver claim changed hands, binding again",
                         extra={"upstream": self.name, "receiving": receiving})
                if self._sender is session:
                    self._sender = None
                    self._sender_ready.clear()
                await session.wait_idle(self.settings.timeout)
                await session.unbind(reason=HANDED_OVER)
                return

    async def _open(self, role: Role, sink: InboundSink) -> SmppSession | None:
        """Connect and bind to the first host that takes the bind; None when none did."""
        settings = self.settings
        assert settings.login is not None and settings.password is not None
        for host in self.hosts:
            label = f"{self.name}/{role.name}@{host.host}:{host.port}"
            try:
                async with asyncio.timeout(settings.timeout):
                    reader, writer = await asyncio.open_connection(
                        host.host, host.port, ssl=self._tls() if host.tls else None,
                        server_hostname=host.host if host.tls else None)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                BINDS.labels(upstream=self.name, outcome="connect_failed").inc()
                log.warning("smpp connect failed", extra={"upstream": self.name,
                                                          "host": str(host),
                                                          "error": f"{type(exc).__name__}: "
                                                                   f"{exc}"})
                continue
            handler = (lambda body: self._on_deliver(body, sink)) if role.receives else None
            session = SmppSession(
                reader, writer, label=label, window=settings.window,
                response_timeout=settings.timeout,
                enquire_link_interval=settings.enquire_link_interval,
                link_dead_after=settings.link_dead_after, on_deliver=handler)
            try:
                system_id = await session.bind(role.command_id, settings.login,
                                               settings.password.get_secret_value())
            except BindRefused as exc:
                session._teardown("bind refused")
                BINDS.labels(upstream=self.name, outcome=status_name(exc.status)).inc()
                if exc.status in PERMANENT_BIND_STATUSES:
                    self._refused = (f"{self.name}: bind refused by {host}: "
                                     f"{status_name(exc.status)}; check upstreams.{self.name}"
                                     ".login and .password, then restart")
                    log.error("smpp bind refused for good: no more attempts until restart",
                              extra={"upstream": self.name, "host": str(host),
                                     "status": status_name(exc.status)})
                    return None
                if exc.status == ESME_RALYBND and role is TRANSCEIVER:
                    # Another receiver is bound (a stale one of ours, or another bridge's):
                    # send over a transmitter meanwhile; the claim watcher tries again.
                    log.warning("smpp transceiver refused ESME_RALYBND: binding a transmitter",
                                extra={"upstream": self.name, "host": str(host)})
                    return await self._open(TRANSMITTER, sink)
                log.warning("smpp bind refused", extra={
                    "upstream": self.name, "host": str(host), "status": status_name(exc.status),
                    "hint": {ESME_RBINDFAIL: "no funds on the account (002)",
                             ESME_RALYBND: "another receiver is bound with this system_id",
                             ESME_RTHROTTLED: "throttled"}.get(exc.status, "")})
                continue
            except LinkLost as exc:
                BINDS.labels(upstream=self.name, outcome="link_lost").inc()
                log.warning("smpp bind failed", extra={"upstream": self.name,
                                                       "host": str(host), "error": exc.reason})
                continue
            BINDS.labels(upstream=self.name, outcome="bound").inc()
            log.info("smpp bound", extra={"upstream": self.name, "host": str(host),
                                          "role": role.name, "smsc": system_id})
            if role.sends:
                self.bound_to = host
            self._sessions.add(session)
            return session
        return None

    def _tls(self) -> ssl.SSLContext:
        """TLS verified against the system's CA store, or ``tls_ca_file`` when set."""
        ca_file = self.settings.tls_ca_file
        return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)

    async def aclose(self) -> None:
        """Unbind every session, after the deliver_sm being committed are answered. The parts
        of a concatenated SMS still waiting for the others are refused with a temporary
        error: the SMSC delivers them again, to this process's successor."""
        self._closing.set()
        for assembly in self._assemblies.values():
            if assembly.timer is not None:
                assembly.timer.cancel()
            if not assembly.done.done():
                assembly.done.set_result(ESME_RX_T_APPN)
        self._assemblies.clear()
        for session in list(self._sessions):
            await session.drain_handlers(timeout=5.0)
            await session.unbind()
        for task in list(self._commits):
            task.cancel()

    # -- sending ------------------------------------------------------------------------------

    async def _session_for_sending(self, deadline: float) -> SmppSession:
        while True:
            if self._refused is not None:
                # Not PermanentUpstreamError: the messages stay queued (or take a fallback)
                # until the credentials are fixed, instead of bouncing.
                raise TransientUpstreamError(self._refused, "bind_refused")
            session = self._sender
            if session is not None:
                if not session.closed.is_set():
                    return session
                # Closed, and its holder has not noticed yet: wait for the next one.
                self._sender = None
                self._sender_ready.clear()
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._closing.is_set():
                raise TransientUpstreamError(f"{self.name}: no SMPP session bound",
                                             "not_bound")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(remaining):
                    await self._sender_ready.wait()

    async def _wait_throttle(self, deadline: float) -> None:
        wait = self._resume_at - time.monotonic()
        if wait <= 0:
            return
        if time.monotonic() + wait > deadline:
            raise TransientUpstreamError(f"{self.name}: throttled by the SMSC",
                                         status_name(ESME_RTHROTTLED), retry_after=wait)
        await asyncio.sleep(wait)

    def _throttled(self) -> None:
        """ESME_RTHROTTLED (002: "перепосылались через небольшой таймаут"): every submit
        pauses, longer at each throttle in a row."""
        self._throttle_level += 1
        pause = min(self.throttle_max, self.throttle_base * 2 ** (self._throttle_level - 1))
        self._resume_at = max(self._resume_at, time.monotonic() + pause)

    def _remember(self, key: str) -> dict[int, str]:
        accepted = self._progress.get(key)
        if accepted is None:
            accepted = self._progress[key] = {}
            while len(self._progress) > self.PROGRESS_LIMIT:
                self._progress.popitem(last=False)
        return accepted

    def _submits(self, sms: OutboundSms) -> list[SubmitSm]:
        encoded = encode_message(
            sms.text, reference=sms.message_id, two_byte=sms.options.two_byte_concat,
            flash=sms.options.flash)
        parts = len(encoded.parts)
        if parts > min(sms.options.max_parts, MAX_PARTS):
            raise PermanentUpstreamError(
                f"{self.name}: the text takes {parts} SMS over SMPP "
                f"({'GSM 03.38' if encoded.data_coding in (0, 0x10) else 'UCS-2'}), more "
                f"than the {min(sms.options.max_parts, MAX_PARTS)} allowed", "too_many_parts")
        ton, npi, source = source_address(sms.options.originator)
        validity = relative_validity(sms.options.validity) if sms.options.validity else ""
        submits = [SubmitSm(ton, npi, source, sms.phone.lstrip("+"), part, encoded.data_coding,
                            esm_class=encoded.esm_class, validity_period=validity)
                   for part in encoded.parts]
        try:
            for submit in submits:
                submit.body()  # addresses that do not fit the PDU are refused here
        except ValueError as exc:
            raise PermanentUpstreamError(f"{self.name}: {exc}", "invalid_parameter") from None
        return submits

    async def send(self, sms: OutboundSms) -> SendReceipt:
        """Each part as one submit_sm, in order, through the sending session's window.

        A part the SMSC accepted is never sent again by this process: a retry of the same
        message (same idempotency key) resumes after it. A part written to a link that then
        broke, or left without a resp, may have been taken: the failure is ambiguous, and the
        dispatcher retries on this upstream only (as after an HTTP read timeout).
        """
        submits = self._submits(sms)
        accepted = self._remember(sms.idempotency_key)
        deadline = time.monotonic() + self.settings.timeout
        try:
            for index, submit in enumerate(submits):
                if index not in accepted:
                    accepted[index] = await self._submit(submit, deadline)
        except UpstreamError as exc:
            if isinstance(exc, PermanentUpstreamError):
                self._progress.pop(sms.idempotency_key, None)  # never retried
            elif accepted and not exc.ambiguous:
                # Earlier parts went out: on another upstream they would go twice.
                exc.ambiguous = True
            raise
        self._progress.pop(sms.idempotency_key, None)
        return SendReceipt(tuple(accepted[i] for i in range(len(submits)) if accepted[i]))

    async def _submit(self, submit: SubmitSm, deadline: float) -> str:
        body = submit.body()
        while True:
            session = await self._session_for_sending(deadline)
            await self._wait_throttle(deadline)
            try:
                response = await session.request(SUBMIT_SM, body)
            except LinkLost as exc:
                if not exc.written:
                    continue  # nothing went out: the next session takes it
                raise TransientUpstreamError(
                    f"{self.name}: link lost with the submit_sm outstanding ({exc.reason})",
                    "link_lost", ambiguous=True) from None
            except ResponseTimeout as exc:
                raise TransientUpstreamError(f"{self.name}: {exc}", "no_response",
                                             ambiguous=True) from None
            if response.status in (ESME_RTHROTTLED, ESME_RMSGQFUL):
                self._throttled()
                continue
            self._throttle_level = 0
            if response.command_id == GENERIC_NACK:
                # The SMSC could not take the PDU at all (SMPP 3.4 §4.3).
                log.warning("smpp submit_sm answered generic_nack",
                            extra={"upstream": self.name,
                                   "status": status_name(response.status)})
                raise submit_error(self.name, response.status or ESME_RSYSERR)
            if response.status != ESME_ROK:
                raise submit_error(self.name, response.status)
            try:
                return message_id(response.body)
            except PduError:
                # Accepted, but without a readable id: sent, and never resent; its receipts
                # cannot be matched.
                log.warning("smpp submit_sm_resp without a message_id",
                            extra={"upstream": self.name, "body": response.body.hex()})
                return ""

    # -- receiving ----------------------------------------------------------------------------

    async def _on_deliver(self, body: bytes, sink: InboundSink) -> int:
        """A deliver_sm → the status of its deliver_sm_resp, sent once it is committed."""
        try:
            message = decode_deliver_sm(body)
        except PduError as exc:
            # Answered with a permanent error: the SMSC does not offer it again and again.
            PDUS_REFUSED.labels(upstream=self.name, reason="malformed").inc()
            log.error("smpp: malformed deliver_sm refused",
                      extra={"upstream": self.name, "error": str(exc), "body": body.hex()})
            return ESME_RX_P_APPN
        if message.message_type in (0x04, 0x20):
            return await self._receipt(message, body, sink)
        if message.message_type:
            log.info("smpp: SME acknowledgement ignored",
                     extra={"upstream": self.name, "esm_class": message.esm_class})
            return ESME_ROK
        return await self._mobile_originated(message, body, sink)

    async def _receipt(self, message: DeliverSm, body: bytes, sink: InboundSink) -> int:
        try:
            report = parse_receipt(message)
        except ValueError as exc:
            PDUS_REFUSED.labels(upstream=self.name, reason="receipt_without_id").inc()
            log.error("smpp: receipt refused", extra={"upstream": self.name,
                                                      "error": str(exc), "body": body.hex()})
            return ESME_RX_P_APPN
        try:
            await sink.delivery_reports(self.name, [report])
        except Exception as exc:  # not committed: the SMSC delivers it again later
            log.warning("smpp: receipt not committed, SMSC asked to retry",
                        extra={"upstream": self.name, "error": f"{type(exc).__name__}: {exc}"})
            return ESME_RX_T_APPN
        return ESME_ROK

    async def _mobile_originated(self, message: DeliverSm, body: bytes,
                                 sink: InboundSink) -> int:
        data = message.payload
        try:
            concatenation = sar_concatenation(message)
            if message.udhi:
                in_udh, data = split_udh(data)
                concatenation = concatenation or in_udh
        except ValueError as exc:
            PDUS_REFUSED.labels(upstream=self.name, reason="malformed").inc()
            log.error("smpp: MO with a malformed user data header refused",
                      extra={"upstream": self.name, "error": str(exc), "body": body.hex()})
            return ESME_RX_P_APPN
        text, charset, bad = decode_text(data, message.data_coding)
        raw = raw_record(message)
        if concatenation is None or concatenation.total <= 1:
            return await self._commit(sink, message, text, charset, bad, raw)
        return await self._assemble(sink, message, concatenation, text, charset, bad, raw)

    async def _commit(self, sink: InboundSink, message: DeliverSm, text: str, charset: str,
                      bad: bool, raw: bytes) -> int:
        inbound = InboundMessage(
            source=self.name, kind="mo",
            # SMPP gives an MO no id of its own: repeats are recognised by their content
            # (the inbound pipeline's window for messages without an id).
            sms_id=None,
            phone=message.source_addr.lstrip("+"),
            # Cleaned as the text of an HTTP push is: no control characters but line breaks.
            text=strip_controls(normalize_newlines(text)).strip(),
            recipient=message.destination_addr or None,
            raw=raw, charset=charset, charset_error=bad)
        try:
            await sink.inbound_message(inbound)
        except Exception as exc:
            log.warning("smpp: MO not committed, SMSC asked to retry",
                        extra={"upstream": self.name, "error": f"{type(exc).__name__}: {exc}"})
            return ESME_RX_T_APPN
        return ESME_ROK

    async def _assemble(self, sink: InboundSink, message: DeliverSm, part: Concatenation,
                        text: str, charset: str, bad: bool, raw: bytes) -> int:
        key = (message.source_addr, message.destination_addr, part.reference, part.total)
        assembly = self._assemblies.get(key)
        if assembly is None:
            assembly = self._assemblies[key] = _Assembly(part.total)
            assembly.timer = asyncio.get_running_loop().call_later(
                self.mo_part_wait, self._finish_assembly, key, sink, message)
        assembly.parts[part.index] = text
        assembly.bodies[part.index] = raw
        assembly.charset = assembly.charset or charset
        assembly.charset_error = assembly.charset_error or bad
        if all(i in assembly.parts for i in range(1, part.total + 1)):
            self._finish_assembly(key, sink, message)
        return await asyncio.shield(assembly.done)

    def _finish_assembly(self, key: tuple[str, str, int, int], sink: InboundSink,
                         message: DeliverSm) -> None:
        assembly = self._assemblies.pop(key, None)
        if assembly is None:
            return
        if assembly.timer is not None:
            assembly.timer.cancel()
        # A part that never came leaves a visible gap rather than a silently shorter text.
        text = "".join(assembly.parts.get(i, "[…]") for i in range(1, assembly.total + 1))
        raw = b"\n".join(assembly.bodies[i] for i in sorted(assembly.bodies))

        async def commit() -> None:
            status = await self._commit(sink, message, text, assembly.charset,
                                        assembly.charset_error, raw)
            if not assembly.done.done():
                assembly.done.set_result(status)

        task = asyncio.create_task(commit())
        self._commits.add(task)
        task.add_done_callback(self._commits.discard)
