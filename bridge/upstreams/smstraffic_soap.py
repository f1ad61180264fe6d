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

from collections.abc import Sequence
from typing import ClassVar
from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
import httpx
from defusedxml import DefusedXmlException

from bridge.errors import PermanentUpstreamError, SoapFault, TransientUpstreamError, UpstreamError
from bridge.inbound.parsing import map_status
from bridge.models import DeliveryReport
from bridge.upstreams.base import HttpUpstream, OutboundSms, SendReceipt
from bridge.upstreams.smstraffic import STATUS_CHUNK, error_for_code

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"
SERVICE_NS = "http://soap.smstraffic.ru/soap.wsdl"
CONTENT_TYPE = "application/soap+xml; charset=utf-8"
PATH = "/soap.php"

# SOAP fault codes (SOAP 1.2 part 1, 5.4.6; the 1.1 names Client/Server as PHP may send
# them): the sender's fault cannot be cured by sending the same request again, the
# receiver's may be.
TRANSIENT_FAULTS = frozenset({"Receiver", "Server"})


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _child(element: Element, name: str) -> Element | None:
    """The first direct child with this local name, in whatever namespace."""
    for child in element:
        if _local(child.tag) == name:
            return child
    return None


def _children(element: Element, name: str) -> list[Element]:
    return [child for child in element if _local(child.tag) == name]


def _text(element: Element | None, name: str) -> str:
    child = _child(element, name) if element is not None else None
    return (child.text or "").strip() if child is not None else ""


def parse_envelope(body: bytes) -> Element:
    """The element inside ``Body``; a ``Fault`` there raises :class:`SoapFault`.

    Parsed with defusedxml. Names are matched by local name, so the SOAP 1.1 envelope
    namespace and a missing service namespace are read as well.
    """
    try:
        root: Element = SafeET.fromstring(body.strip())
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise ValueError("malformed SOAP reply") from exc
    soap_body = _child(root, "Body") if _local(root.tag) == "Envelope" else None
    if soap_body is None or len(soap_body) == 0:
        raise ValueError("SOAP reply without Envelope/Body")
    payload = soap_body[0]
    if _local(payload.tag) == "Fault":
        # 1.2: Code/Value "env:Sender", Reason/Text; 1.1: faultcode "SOAP-ENV:Client",
        # faultstring.
        code_value = _text(_child(payload, "Code"), "Value") or _text(payload, "faultcode")
        reason = _text(_child(payload, "Reason"), "Text") or _text(payload, "faultstring")
        raise SoapFault(code_value.rsplit(":", 1)[-1] or "Fault", reason)
    return payload


def parse_status(payload: Element) -> tuple[int, str]:
    """``Status`` of a response (line 1565): ``Code`` decides; ``IsSuccess`` is only
    checked for consistency. The examples write ``<IsSuccess>>true</IsSuccess>`` (a stray
    '>'): '>' and blanks around the value are ignored."""
    status = _child(payload, "Status")
    code_text = _text(status, "Code")
    if status is None or not code_text.lstrip("-").isdigit():
        raise ValueError("SOAP response without Status/Code")
    success = _text(status, "IsSuccess").strip("> \t\r\n").lower()
    code = int(code_text)
    if (success in ("true", "1") and code != 0) or (success in ("false", "0") and code == 0):
        raise ValueError(f"IsSuccess {success!r} contradicts Code {code}")
    return code, _text(status, "Description")


def parse_send_response(body: bytes) -> tuple[int, str, list[tuple[str, str, str]]]:
    """``SmsResponse`` (lines 1612-1625) → code, description, (Phone, ProcessResult, SmsId)
    per ``MessageInfo`` (line 1572), wherever in the response they are nested."""
    payload = parse_envelope(body)
    code, description = parse_status(payload)
    infos = [
        (_text(info, "Phone"), _text(info, "ProcessResult"), _text(info, "SmsId"))
        for info in payload.iter()
        if _local(info.tag) == "MessageInfo"
    ]
    return code, description, infos


def parse_status_response(body: bytes) -> tuple[int, str, list[DeliveryReport]]:
    """``StatusResponse`` (lines 1702-1727): one ``SmsInfo`` per id. An id the provider does
    not know has ``Error`` and no ``Status`` (line 1723; no code tells it), and is left out.
    ``Error`` becomes the error code where it is a number."""
    payload = parse_envelope(body)
    code, description = parse_status(payload)
    reports: list[DeliveryReport] = []
    for info in _children(payload, "SmsInfo"):
        sms_id = _text(info, "SmsId")
        status = _child(info, "Status")
        if not sms_id or status is None:
            continue
        raw = (status.text or "").strip()
        error = _text(info, "Error")
        reports.append(DeliveryReport(sms_id, map_status(raw), raw,
                                      int(error) if error.isdigit() else None,
                                      _text(info, "LastStatusChangeDate")))
    return code, description, reports


def _element(name: str, value: str) -> str:
    return f"<{name}>{escape(value)}</{name}>"


def envelope(inner: str) -> bytes:
    """The envelope of the examples (line 1593): SOAP 1.2, service namespace as default."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<env:Envelope xmlns:env="{SOAP12}" xmlns="{SERVICE_NS}">'
        f"<env:Body>{inner}</env:Body></env:Envelope>"
    ).encode()


class SmsTrafficSoapUpstream(HttpUpstream):
    """SOAP: ``SendBulkSms`` with one ``Phone`` per message, ``GetSmsStatus`` for polling.

    Like HTTP API v1 it has no idempotency key, so a retry after an ambiguous failure may
    send a second copy. No BatchSending: ``MessageInfo`` carries the phone but no id of the
    caller's (no ``push_id``), so the ids of two messages to one phone could not be told
    apart.
    """

    kind: ClassVar[str] = "smstraffic_soap"
    idempotent: ClassVar[bool] = False
    required: ClassVar[tuple[str, ...]] = ("login", "password")

    def _hosts(self, attempt: int) -> list[str]:
        # base_url may be given as the service address of line 1535 itself.
        return [host.removesuffix(PATH) for host in super()._hosts(attempt)]

    def _check_status(self, response: httpx.Response) -> None:
        # soap.php is PHP: its SoapServer answers every fault with HTTP 500 (SOAP 1.2 says
        # 400 for Sender faults). A fault's code is a better guide than the status, so a
        # fault envelope is parsed whatever the status; any other 5xx stays transient.
        if response.status_code in (400, 500) and b"Fault" in response.content:
            return
        super()._check_status(response)

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
        parts = [_element("Login", login), _element("Password", password)]
        if sms.originator:
            parts.append(_element("Originator", sms.originator))
        parts.append(_element("WantSmsIds", "true"))
        latin = sms.transliterate or sms.encoding == "gsm7"
        parts.append(_element("LatinEncoding", "true" if latin else "false"))
        if sms.validity:
            parts.append(_element("Timeout", str(sms.validity)))
        if sms.flash:
            parts.append(_element("Flash", "true"))
        parts.append(_element("MaxParts", str(sms.max_parts)))
        if sms.two_byte_concat:
            parts.append(_element("TwoByteConcat", "true"))
        return f"<Options>{''.join(parts)}</Options>"

    def send_envelope(self, sms: OutboundSms) -> bytes:
        """``BulkSms`` (line 1593): Options, Message, Phone."""
        return envelope(f"<BulkSms>{self.options(sms)}{_element('Message', sms.text)}"
                        f"{_element('Phone', sms.phone)}</BulkSms>")

    def status_envelope(self, sms_ids: Sequence[str]) -> bytes:
        """``StatusRequest`` (line 1687): Login, Password, one ``SmsId`` per id."""
        login, password = self._credentials()
        ids = "".join(_element("SmsId", sms_id) for sms_id in sms_ids)
        return envelope(f"<StatusRequest>{_element('Login', login)}"
                        f"{_element('Password', password)}{ids}</StatusRequest>")

    async def _call(self, attempt: int, content: bytes) -> bytes:
        response = await self.request(attempt, "POST", PATH, content=content,
                                      headers={"Content-Type": CONTENT_TYPE})
        return response.content

    def _fault(self, fault: SoapFault, *, ambiguous: bool) -> UpstreamError:
        text = f"{self.name}: SOAP fault {fault.code}: {fault.reason}"
        if fault.code in TRANSIENT_FAULTS:
            return TransientUpstreamError(text, f"soap:{fault.code}", ambiguous=ambiguous)
        return PermanentUpstreamError(text, f"soap:{fault.code}")

    async def send(self, sms: OutboundSms) -> SendReceipt:
        body = await self._call(sms.attempt, self.send_envelope(sms))
        try:
            code, description, infos = parse_send_response(body)
        except SoapFault as fault:
            raise self._fault(fault, ambiguous=True) from fault
        except ValueError as exc:
            raise TransientUpstreamError(f"{self.name}: {exc}", "malformed",
                                         ambiguous=True) from exc
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
        return SendReceipt(tuple(ids), note=description)

    async def poll_statuses(self, provider_ids: Sequence[str]) -> list[DeliveryReport]:
        """``GetSmsStatus`` (line 1679) for the ids, a chunk per request. A whole-request 434
        (no such message) means none of them is known."""
        reports: list[DeliveryReport] = []
        unique = list(dict.fromkeys(i for i in provider_ids if i))
        for start in range(0, len(unique), STATUS_CHUNK):
            body = await self._call(1, self.status_envelope(unique[start:start + STATUS_CHUNK]))
            try:
                code, description, found = parse_status_response(body)
            except SoapFault as fault:
                raise self._fault(fault, ambiguous=False) from fault
            except ValueError as exc:
                raise TransientUpstreamError(f"{self.name}: {exc}", "malformed") from exc
            if code == 434:
                continue
            if code != 0:
                raise error_for_code(code, description, upstream=self.name)
            reports.extend(found)
        return reports
