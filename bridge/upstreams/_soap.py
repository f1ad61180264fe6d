"""SOAP plumbing shared by the SOAP providers (SMS Traffic's ``/soap.php``, Devino's
``/SmsService.asmx``): reading envelopes and faults, writing elements, and the HTTP status
of a fault.

Replies are parsed with defusedxml (no entities, no external resources). Names are matched
by local name and case-insensitively: the providers' tables and examples spell names
differently, and prefixes (``soap:``, ``soap12:``, ``env:``) and the SOAP 1.1 envelope
namespace are all seen.
"""

from __future__ import annotations

from xml.etree.ElementTree import Element
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
import httpx
from defusedxml import DefusedXmlException

from bridge.errors import SoapFault
from bridge.upstreams.base import HttpUpstream

SOAP12 = "http://www.w3.org/2003/05/soap-envelope"


def local(tag: str) -> str:
    """Element name without namespace."""
    return tag.rsplit("}", 1)[-1]


def child(element: Element | None, name: str) -> Element | None:
    """The first direct child named ``name`` (any namespace, any case)."""
    if element is None:
        return None
    wanted = name.lower()
    for item in element:
        if local(item.tag).lower() == wanted:
            return item
    return None


def children(element: Element, name: str) -> list[Element]:
    wanted = name.lower()
    return [item for item in element if local(item.tag).lower() == wanted]


def text(element: Element | None, name: str) -> str:
    """The stripped text of the child ``name``; "" when there is none."""
    found = child(element, name)
    return (found.text or "").strip() if found is not None else ""


def element(name: str, value: str) -> str:
    """``<name>value</name>`` with the value escaped."""
    return f"<{name}>{escape(value)}</{name}>"


class SoapReplyError(ValueError):
    """The reply is not a SOAP envelope of the expected shape."""


def _fault(payload: Element) -> SoapFault:
    code = child(payload, "Code")
    subcode = child(code, "Subcode")
    value = text(code, "Value") or text(payload, "faultcode")
    reason = text(child(payload, "Reason"), "Text") or text(payload, "faultstring")
    return SoapFault(value.rsplit(":", 1)[-1] or "Fault", " ".join(reason.split()),
                     subcode=text(subcode, "Value").rsplit(":", 1)[-1])


def parse_envelope(body: bytes) -> Element:
    """The element inside ``Envelope/Body``; a ``Fault`` there is raised as
    :class:`SoapFault`, anything not an envelope as :class:`SoapReplyError`."""
    try:
        root: Element = SafeET.fromstring(body.strip())
    except (SafeET.ParseError, DefusedXmlException, ValueError) as exc:
        raise SoapReplyError("malformed SOAP reply") from exc
    if local(root.tag) != "Envelope":
        raise SoapReplyError(f"unexpected XML root {local(root.tag)!r}")
    soap_body = child(root, "Body")
    if soap_body is None or len(soap_body) == 0:
        raise SoapReplyError("SOAP reply without Envelope/Body")
    payload = soap_body[0]
    if local(payload.tag) == "Fault":
        raise _fault(payload)
    return payload


class SoapUpstream(HttpUpstream):
    """An HTTP upstream speaking SOAP: a fault's code decides, not the HTTP status."""

    def _check_status(self, response: httpx.Response) -> None:
        # SOAP 1.2 over HTTP sends faults with 400 (Sender) or 500 (Receiver); a PHP
        # SoapServer answers every fault with 500. The fault envelope is parsed whatever the
        # status; any other 5xx stays transient.
        body = response.content
        if response.status_code in (400, 500) and b"Fault" in body and b"Envelope" in body:
            return
        super()._check_status(response)
