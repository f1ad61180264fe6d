"""What providers push to the bridge, parsed without I/O.

Spec: ``002_e7d2ff51d5c777f0.txt`` — inbound SMS forwarded to an HTTP(S) script (line 1897:
``phone``, ``message``, ``sms_id``; windows-1251 by default; the same ``sms_id`` must get the
same answer), short code (line 1976: ``phone``, ``message``, ``shortcode``, ``password``,
``sms_id``; the answer goes back to the subscriber unchanged), status callbacks in form
encoding (line 1100) and JSON (line 427).

Parameters are decoded from the raw bytes with the source's charset: aiohttp's
``request.query`` and ``request.post()`` turn windows-1251 bytes into U+FFFD irreversibly,
and keep the first of a repeated parameter without a word.
"""

from __future__ import annotations

import codecs
import functools
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from bridge.errors import InboundError
from bridge.models import DeliveryReport, InboundMessage
from bridge.parsing.mail import resolve_charset
from bridge.parsing.status import map_status
from bridge.parsing.text import count_segments, html_to_text, normalize_newlines, strip_controls


@dataclass(frozen=True)
class DecodedParams:
    values: dict[str, str]
    charset: str
    charset_error: bool  # the bytes were not valid in ``charset``; values hold U+FFFD


def declared_charset(content_type: str | None) -> str | None:
    """The ``charset`` parameter of a Content-Type header, if any and known."""
    if not content_type or "charset" not in content_type.lower():
        return None
    match = re.search(r"charset\s*=\s*\"?([^\";\s]+)", content_type, re.IGNORECASE)
    return resolve_charset(match.group(1)) if match else None


# More fields than any provider sends (002 line 1976's short-code hit has five): a request
# with more is refused rather than parsed (002 names no limit).
MAX_FIELDS = 100


def decode_params(raw: bytes, charset: str, *, sniff_utf8: bool = False) -> DecodedParams:
    """``a=1&b=%F2%E5`` → values decoded with ``charset``.

    Names and values are decoded as bytes: percent-escapes and raw 8-bit bytes alike, so a
    provider that sends unescaped windows-1251 is read too. A value that is not valid in the
    charset is never silently repaired: the caller keeps the raw bytes and the message is
    flagged, so nobody reads mojibake as the customer's text.

    ``sniff_utf8`` (the charset is a source's default, not one the request declared): text
    that is valid multi-byte UTF-8 is almost never meaningful windows-1251 — "Привет" in
    UTF-8 reads "РџСЂРёРІРµС‚" — so it is decoded as UTF-8 and flagged instead.

    Ambiguous requests are refused (400): a parameter given twice, in the query or in the
    query and the body (which one would the provider mean?), or more than ``MAX_FIELDS``.
    """
    if not _ascii_compatible(charset):
        return _decode_params_text(raw, charset)
    fields = [field for field in raw.split(b"&") if field] if raw else []
    if len(fields) > MAX_FIELDS:
        raise InboundError(400, f"more than {MAX_FIELDS} parameters")
    pairs: list[tuple[bytes, bytes]] = []
    for field in fields:
        name, _, value = field.partition(b"=")
        pairs.append((_unescape(name), _unescape(value)))
    if sniff_utf8 and _utf8_text(pairs) and codecs.lookup(charset).name != "utf-8":
        charset, sniffed = "utf-8", True
    else:
        sniffed = False
    values: dict[str, str] = {}
    error = sniffed
    for name, value in pairs:
        key, bad_key = _decode_bytes(name, charset)
        text, bad_value = _decode_bytes(value, charset)
        error = error or bad_key or bad_value
        if key in values:
            raise _given_twice(key)
        values[key] = text
    return DecodedParams(values, charset, error)


def _given_twice(name: str) -> InboundError:
    shown = name if name.isprintable() and len(name) <= 40 else repr(name[:40])
    return InboundError(400, f"parameter {shown!r} given more than once", field=shown)


def _unescape(data: bytes) -> bytes:
    if b"+" in data:
        data = data.replace(b"+", b" ")
    if b"%" in data:
        data = unquote_bytes(data)
    return data


def _utf8_text(pairs: list[tuple[bytes, bytes]]) -> bool:
    """Some byte is not ASCII and every non-ASCII name and value is valid UTF-8.

    Checked on all parts joined by ``&`` in one decode: an ASCII byte never sits inside a
    multi-byte sequence, so the joined bytes are valid UTF-8 exactly when every part is."""
    joined = b"&".join([part for pair in pairs for part in pair])
    if joined.isascii():
        return False
    try:
        joined.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


_ESCAPE_RUN = re.compile(rb"(?:%[0-9A-Fa-f]{2})+")


def unquote_bytes(data: bytes) -> bytes:
    """``urllib.parse.unquote_to_bytes``, one C-level ``bytes.fromhex`` per run of escapes
    instead of a Python step per escape: a percent-encoded Cyrillic text is a few runs of
    dozens of escapes. Invalid escapes stay as they are, as there."""
    return _ESCAPE_RUN.sub(lambda m: bytes.fromhex(m.group().replace(b"%", b"").decode()), data)


def _decode_bytes(data: bytes, charset: str) -> tuple[str, bool]:
    if data.isascii():
        return data.decode("ascii"), False
    try:
        return data.decode(charset), False
    except UnicodeDecodeError:
        return data.decode(charset, errors="replace"), True


@functools.lru_cache(maxsize=64)
def _ascii_compatible(charset: str) -> bool:
    try:
        return "a=b&c+d%".encode(charset) == b"a=b&c+d%"
    except (LookupError, UnicodeError):
        return False


def _decode_params_text(raw: bytes, charset: str) -> DecodedParams:
    """For a charset that does not keep ASCII as ASCII (UTF-16 and the like): only the
    percent-escapes are decoded with it."""
    text = raw.decode("ascii", errors="replace")
    options: dict[str, Any] = {"keep_blank_values": True, "encoding": charset,
                               "max_num_fields": MAX_FIELDS}
    try:
        try:
            pairs = parse_qsl(text, errors="strict", **options)
            error = "\ufffd" in text
        except UnicodeDecodeError:
            pairs = parse_qsl(text, errors="replace", **options)
            error = True
    except ValueError:  # max_num_fields exceeded
        raise InboundError(400, f"more than {MAX_FIELDS} parameters") from None
    return DecodedParams(_unique(pairs), charset, error)


def _unique(pairs: Sequence[tuple[str, str]]) -> dict[str, str]:
    values: dict[str, str] = {}
    for key, value in pairs:
        if key in values:
            raise _given_twice(key)
        values[key] = value
    return values


def _required(values: dict[str, str], name: str, *, allow_empty: bool = False) -> str:
    value = values.get(name)
    if value is None or (not allow_empty and not value.strip()):
        raise InboundError(400, f"missing parameter {name!r}", field=name)
    return value


def _clean(text: str) -> str:
    return strip_controls(normalize_newlines(text)).strip()


def _sms_id(values: dict[str, str]) -> str | None:
    value = values.get("sms_id", "").strip()
    if len(value) > 64:
        raise InboundError(400, "sms_id longer than 64 characters", field="sms_id")
    return value or None


def _phone(values: dict[str, str]) -> str:
    phone = _required(values, "phone").strip().lstrip("+")
    if not phone.isascii() or not phone.isdigit() or len(phone) > 20:
        raise InboundError(400, "phone must be digits", field="phone")
    return phone


def parse_mo(source: str, params: DecodedParams, raw: bytes) -> InboundMessage:
    """A mobile-originated SMS (002 line 1897)."""
    values = params.values
    recipient = next(
        (values[k].strip() for k in ("to", "recipient", "shortcode") if values.get(k)), None
    )
    return InboundMessage(
        source=source,
        kind="mo",
        sms_id=_sms_id(values),
        phone=_phone(values),
        text=_clean(_required(values, "message", allow_empty=True)),
        recipient=recipient,
        raw=raw,
        charset=params.charset,
        charset_error=params.charset_error,
    )


def parse_shortcode(source: str, params: DecodedParams, raw: bytes) -> tuple[InboundMessage, str]:
    """A short-code hit (002 line 1976) and the password it carried."""
    values = params.values
    shortcode = _required(values, "shortcode").strip()
    password = values.get("password", "")
    message = InboundMessage(
        source=source,
        kind="shortcode",
        sms_id=_sms_id(values),
        phone=_phone(values),
        text=_clean(_required(values, "message", allow_empty=True)),
        recipient=shortcode,
        raw=raw,
        charset=params.charset,
        charset_error=params.charset_error,
    )
    return message, password


def _error_code(value: Any) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def parse_dlr_form(values: dict[str, str]) -> list[DeliveryReport]:
    """v1 status callback, form-encoded (002 line 1100).

    The spec's example is not URL-encoded (``delivery_date=2020-05-09 17:04:00``) and carries
    no ``error_code``: both are accepted.
    """
    provider_id = _required(values, "sms_id").strip()
    raw_status = _required(values, "status", allow_empty=True).strip()
    return [DeliveryReport(provider_id, map_status(raw_status), raw_status,
                           _error_code(values.get("error_code")),
                           values.get("delivery_date", "").strip())]


def parse_dlr_json(body: bytes) -> list[DeliveryReport]:
    """v2 status callback: a JSON array of objects (002 line 427).

    The table names ``error_code``; the example sends ``err_code``: both are read. A single
    object instead of an array is accepted too.
    """
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InboundError(400, "body is not valid JSON", field="body") from exc
    items = data if isinstance(data, list) else [data]
    reports: list[DeliveryReport] = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise InboundError(400, f"item {index} is not an object", field=f"[{index}]")
        provider_id = str(item.get("sms_id") or "").strip()
        if not provider_id:
            raise InboundError(400, f"item {index}: missing sms_id", field=f"[{index}].sms_id")
        raw_status = str(item.get("status") or "").strip()
        code = item.get("error_code", item.get("err_code"))
        reports.append(DeliveryReport(provider_id, map_status(raw_status), raw_status,
                                      _error_code(code), str(item.get("delivery_date") or "")))
    return reports


def parse_smstraffic_dlr(
    content_type: str, query: bytes, body: bytes, charset: str
) -> list[DeliveryReport]:
    """SMS Traffic's status callbacks: JSON (v2, line 427) or a form (v1, line 1100)."""
    if "json" in content_type.lower():
        return parse_dlr_json(body)
    raw = query + (b"&" if query and body else b"") + body
    return parse_dlr_form(decode_params(raw, charset).values)


_TAG = re.compile(r"<[a-zA-Z/][^<>]*>")
_LONE_LT = re.compile(r"<(?![a-zA-Z/!?][^<>]*>)")


def clean_reply(text: str, max_parts: int) -> str:
    """A reply script's answer as SMS text: no formatting (002 line 1976: "не должен
    содержать никакого форматирования"), within ``max_parts`` parts.

    Linear in the answer's length: the tag search stops at the next ``<``, and a ``<`` that
    opens no complete tag is escaped before HTML parsing (the parser decodes it back), so
    neither rescans the rest of the text for each one (``"<a" * 32768`` took 1.7 s to
    search and 3.9 s to parse)."""
    if _TAG.search(text):
        text = html_to_text(_LONE_LT.sub("&lt;", text))
    text = strip_controls(normalize_newlines(text))
    text = "\n".join(" ".join(line.split()) for line in text.split("\n")).strip()
    while text and count_segments(text).parts > max_parts:
        segments = count_segments(text)
        keep = max(1, len(text) - max(1, (segments.units - segments.per_part * max_parts)))
        text = text[: min(keep, len(text) - 1)].rstrip()
    return text
