"""SMS Traffic SOAP protocol: ``SendBulkSms`` and ``GetSmsStatus`` (002, "SOAP протокол").

Spec: ``002_e7d2ff51d5c777f0.txt`` line 1529 (Options l. 1548, Status l. 1565, MessageInfo
l. 1572, ProcessResult l. 1579), ``SendBulkSms`` (line 1585), ``SendIndividualSms`` (line
1628), ``GetSmsStatus`` (line 1679), ``GetBalance`` (line 1730); error codes are those of the
HTTP API (line 1988), statuses those of line 2048.

The envelopes are SOAP 1.2 (``http://www.w3.org/2003/05/soap-envelope`` in every example), so
requests go as ``application/soap+xml; charset=utf-8``. The WSDL (line 1533) is not part of
the spec; the element names and their order are those of the examples and tables. The
service is ``/soap.php`` (line 1535) on ``base_url``; the backup server, which the spec says
is named in the WSDL (line 98), is ``backup_url``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar
from xml.etree.ElementTree import Element

from bridge.errors import PermanentUpstreamError, SoapFault, TransientUpstreamError, UpstreamError
from bridge.models import DeliveryReport
from bridge.parsing.status import map_status
from bridge.upstreams._soap import (
    SOAP12,
    SoapUpstream,
    child,
    children,
    element,
    local,
    parse_envelope,
    text,
)
from bridge.upstreams.base import OutboundSms, SendReceipt
from bridge.upstreams.smstraffic.common import error_for_code, poll_in_chunks
from bridge.upstreams.smstraffic.settings import SmsTrafficSoapSettings

SERVICE_NS = "http://soap.smstraffic.ru/soap.wsdl"
CONTENT_TYPE = "application/soap+xml; charset=utf-8"
PATH = "/soap.php"

# SOAP fault codes (SOAP 1.2 part 1, 5.4.6; the 1.1 names Client/Server as PHP may send
# them): the sender's fault cannot be cured by sending the same request again, the
# receiver's may be.
TRANSIENT_FAULTS = frozenset({"Receiver", "Server"})

T = TypeVar("T")


def parse_status(payload: Element) -> tuple[int, str]:
    """``Status`` of a response (line 1565): ``Code`` decides; ``IsSuccess`` is only
    checked for consistency. The examples write ``<IsSuccess>>true</IsSuccess>`` (a stray
    '>'): '>' and blanks around the value are ignored."""
    status = child(payload, "Status")
    code_text = text(status, "Code")
    if status is None or not code_text.lstrip("-").isdigit():
        raise ValueError("SOAP response without Status/Code")
    success = text(status, "IsSuccess").strip("> \t\r\n").lower()
    code = int(code_text)
    if (success in ("true", "1") and code != 0) or (success in ("false", "0") and code == 0):
        raise ValueError(f"IsSuccess {success!r} contradicts Code {code}")
    return code, text(status, "Description")


def parse_send_response(body: bytes) -> tuple[int, str, list[tuple[str, str, str]]]:
    """``SmsResponse`` (lines 1612-1625) → code, description, (Phone, ProcessResult, SmsId)
    per ``MessageInfo`` (line 1572), wherever in the response they are nested."""
    payload = parse_envelope(body)
    code, description = parse_status(payload)
    infos = [
        (text(info, "Phone"), text(info, "ProcessResult"), text(info, "SmsId"))
        for info in payload.iter()
        if local(info.tag) == "MessageInfo"
    ]
    return code, description, infos


def parse_status_response(body: bytes) -> tuple[int, str, list[DeliveryReport]]:
    """``StatusResponse`` (lines 1702-1727): one ``SmsInfo`` per id. An id the provider does
    not know has ``Error`` and no ``Status`` (line 1723; no code tells it), and is left out.
    ``Error`` becomes the error code where it is a number."""
    payload = parse_envelope(body)
    code, description = parse_status(payload)
    reports: list[DeliveryReport] = []
    for info in children(payload, "SmsInfo"):
        sms_id = text(info, "SmsId")
        status = child(info, "Status")
        if not sms_id or status is None:
            continue
        raw = (status.text or "").strip()
        error = text(info, "Error")
        reports.append(DeliveryReport(sms_id, map_status(raw), raw,
                                      int(error) if error.isdigit() else None,
                                      text(info, "LastStatusChangeDate")))
    return code, description, reports


def envelope(inner: str) -> bytes:
    """The envelope of the examples (line 1593): SOAP 1.2, service namespace as default."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<env:Envelope xmlns:env="{SOAP12}" xmlns="{SERVICE_NS}">'
        f"<env:Body>{inner}</env:Body></env:Envelope>"
    ).encode()


class SmsTrafficSoapUpstream(SoapUpstream):
    """SOAP: ``SendBulkSms`` with one ``Phone`` per message, ``GetSmsStatus`` for polling.

    Like HTTP API v1 it has no idempotency key, so a retry after an ambiguous failure may
    send a second copy. No BatchSending: ``MessageInfo`` carries the phone but no id of the
    caller's (no ``push_id``), so the ids of two messages to one phone could not be told
    apart.
    """

    kind: ClassVar[str] = "smstraffic_soap"
    settings: SmsTrafficSoapSettings
    idempotent: ClassVar[bool] = False

    def _hosts(self, attempt: int) -> list[str]:
        # base_url may be given as the service address of line 1535 itself.
        return [host.removesuffix(PATH) for host in super()._hosts(attempt)]

    def _credentials(self) -> tuple[str, str]:
        assert self.settings.login and self.settings.password
        return self.settings.login, self.settings.password.get_secret_value()

    def options(self, sms: OutboundSms) -> str:
        """``Options`` (lines 1548-1563), in the table's order. ``WantSmsIds`` is the table's
        spelling; the text below it says ``WantsSmsIds`` (line 1572), the table wins.
        ``LatinEncoding`` true sends GSM 7-bit (160/153), false UCS-2 (70/67): text the
        bridge classed as GSM 7-bit (or transliterated) goes Latin, so it costs the parts the
        bridge counted."""
        login, password = self._credentials()
        parts = [element("Login", login), element("Password", password)]
        if sms.options.originator:
            parts.append(element("Originator", sms.options.originator))
        parts.append(element("WantSmsIds", "true"))
        latin = sms.options.transliterate or sms.encoding == "gsm7"
        parts.append(element("LatinEncoding", "true" if latin else "false"))
        if sms.options.validity:
            parts.append(element("Timeout", str(sms.options.validity)))
        if sms.options.flash:
            parts.append(element("Flash", "true"))
        parts.append(element("MaxParts", str(sms.options.max_parts)))
        if sms.options.two_byte_concat:
            parts.append(element("TwoByteConcat", "true"))
        return f"<Options>{''.join(parts)}</Options>"

    def send_envelope(self, sms: OutboundSms) -> bytes:
        """``BulkSms`` (line 1593): Options, Message, Phone."""
        return envelope(f"<BulkSms>{self.options(sms)}{element('Message', sms.text)}"
                        f"{element('Phone', sms.phone)}</BulkSms>")

    def status_envelope(self, sms_ids: Sequence[str]) -> bytes:
        """``StatusRequest`` (line 1687): Login, Password, one ``SmsId`` per id."""
        login, password = self._credentials()
        ids = "".join(element("SmsId", sms_id) for sms_id in sms_ids)
        return envelope(f"<StatusRequest>{element('Login', login)}"
                        f"{element('Password', password)}{ids}</StatusRequest>")

    async def _call(self, attempt: int, content: bytes) -> bytes:
        response = await self.request(attempt, "POST", PATH, content=content,
                                      headers={"Content-Type": CONTENT_TYPE})
        return response.content

    def _fault(self, fault: SoapFault, *, ambiguous: bool) -> UpstreamError:
        text = f"{self.name}: SOAP fault {fault.code}: {fault.reason}"
        if fault.code in TRANSIENT_FAULTS:
            return TransientUpstreamError(text, f"soap:{fault.code}", ambiguous=ambiguous)
        return PermanentUpstreamError(text, f"soap:{fault.code}")

    def _answer(self, parse: Callable[[bytes], tuple[int, str, T]], body: bytes, *,
                ambiguous: bool) -> tuple[int, str, T]:
        """``parse(body)``; a fault or an unreadable reply raised as the upstream's error
        (``ambiguous`` when the request may have sent something)."""
        try:
            return parse(body)
        except SoapFault as fault:
            raise self._fault(fault, ambiguous=ambiguous) from fault
        except ValueError as exc:
            raise TransientUpstreamError(f"{self.name}: {exc}", "malformed",
                                         ambiguous=ambiguous) from exc

    async def send(self, sms: OutboundSms) -> SendReceipt:
        body = await self._call(sms.attempt, self.send_envelope(sms))
        code, description, infos = self._answer(parse_send_response, body, ambiguous=True)
        if code != 0:
            raise error_for_code(code, description, upstream=self.name)
        ids: list[str] = []
        for _phone, result, sms_id in infos:
            # ProcessResult (line 1579): Accepted, or Unroutable — taken but not processed,
            # e.g. no route to the subscriber's operator; sending it again cannot route it.
            if result.lower() == "unroutable":
                raise PermanentUpstreamError(f"{self.name}: {sms.phone} is unroutable",
                                             "Unroutable")
            if sms_id:
                ids.append(sms_id)
        return SendReceipt(tuple(ids))

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """``GetSmsStatus`` (line 1679) for the ids, a chunk per request. A whole-request 434
        (no such message) means none of them is known."""
        async def ask(chunk: list[str]) -> tuple[int, str, list[DeliveryReport]]:
            body = await self._call(1, self.status_envelope(chunk))
            return self._answer(parse_status_response, body, ambiguous=False)

        return await poll_in_chunks(provider_ids, ask, upstream=self.name)
