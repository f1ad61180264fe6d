"""Mail → text: recipients, headers, bodies and the v2 ``field: value`` body. Pure functions.

The two mail formats are 002, "SMTP протокол (вариант 1)" (line 1768) and
"SMTP протокол (вариант 2)" (line 1811).
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from email import policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser

from bridge.errors import IntakeError
from bridge.parsing.text import (
    html_to_text,
    normalize_newlines,
    strip_controls,
    trim_blank_lines,
)

# Names seen in real mail that Python's codecs do not know, mapped to ones it does.
_CHARSET_ALIASES = {
    "x-cp1251": "cp1251",
    "win-1251": "cp1251",
    "win1251": "cp1251",
    "windows1251": "cp1251",
    "cp-1251": "cp1251",
    "x-cp866": "cp866",
    "cp-866": "cp866",
    "dos-866": "cp866",
    "ibm-866": "cp866",
    "csibm866": "cp866",
    "koi8r": "koi8_r",
    "cskoi8r": "koi8_r",
    "x-mac-cyrillic": "mac_cyrillic",
    "unicode-1-1-utf-8": "utf-8",
    "utf8": "utf-8",
}


def resolve_charset(name: str | None) -> str | None:
    """A codec name Python knows for a MIME charset label, or ``None``."""
    if not name:
        return None
    label = name.strip().strip('"').lower()
    label = _CHARSET_ALIASES.get(label, label)
    try:
        return codecs.lookup(label).name
    except LookupError:
        return None


def decode_bytes(data: bytes, declared: str | None, legacy_charset: str) -> str:
    """Decode with the declared charset; without one, UTF-8 if valid, else the legacy charset."""
    for charset in (resolve_charset(declared), "utf-8", legacy_charset):
        if charset is None:
            continue
        try:
            return data.decode(charset)
        except (UnicodeDecodeError, LookupError):
            continue
    return data.decode(legacy_charset, errors="replace")


@dataclass(frozen=True)
class Recipient:
    """One envelope recipient read as a v1 or v2 address."""

    address: str
    local: str
    domain: str
    login: str | None  # None for v2 (``multi@``): the login is in the body
    phone: str | None  # v1 ``PHONE.login@``: the number from the address

    @property
    def is_v2(self) -> bool:
        return self.login is None


_PHONE_PREFIX = re.compile(r"^\+?[0-9]{5,20}$")


def parse_recipient(address: str) -> Recipient:
    """``login@d`` (phone in Subject), ``79161234567.login@d`` or ``multi@d`` (002 line 1768)."""
    local, sep, domain = address.strip().strip("<>").rpartition("@")
    if not sep or not local or not domain:
        raise IntakeError(550, "5.1.3", "Recipient address must be login@domain")
    if local.lower() == "multi":
        return Recipient(address, local, domain.lower(), None, None)
    head, dot, rest = local.partition(".")
    if dot and rest and _PHONE_PREFIX.match(head):
        return Recipient(address, local, domain.lower(), rest, head)
    return Recipient(address, local, domain.lower(), local, None)


@dataclass(frozen=True)
class ParsedMail:
    subject: str
    text: str
    message_id: str | None
    html_only: bool = False


def header_block_size(raw: bytes) -> int:
    """Bytes before the first empty line: checked before the email package sees the mail."""
    found = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return min(found) if found else len(raw)


def raw_headers_map(raw_headers: bytes) -> dict[bytes, bytes]:
    """Lower-cased header name → unfolded raw value of its first occurrence."""
    headers: dict[bytes, bytes] = {}
    name: bytes | None = None
    parts: list[bytes] = []
    for line in raw_headers.replace(b"\r\n", b"\n").split(b"\n"):
        if line[:1] in (b" ", b"\t") and name is not None:
            parts.append(line)
            continue
        if name is not None and name not in headers:
            headers[name] = b"".join(parts).strip()
        key, colon, value = line.partition(b":")
        name, parts = (key.strip().lower(), [value]) if colon else (None, [])
    if name is not None and name not in headers:
        headers[name] = b"".join(parts).strip()
    return headers


def decode_subject(raw_headers: bytes, legacy_charset: str) -> str:
    """The Subject of a raw header block as text (see :func:`decode_subject_value`)."""
    return decode_subject_value(raw_headers_map(raw_headers).get(b"subject"), legacy_charset)


def decode_subject_value(value: bytes | None, legacy_charset: str) -> str:
    """The Subject's raw unfolded value as text.

    RFC 2047 encoded-words are decoded; raw 8-bit bytes (which ``policy.default`` silently turns
    into U+FFFD) are decoded as UTF-8 if valid, else with the account's legacy charset.
    Control characters are removed, so an encoded ``\\r\\nBcc:`` cannot reach a header or SMS.
    """
    if value is None:
        return ""
    text = decode_bytes(value, None, legacy_charset)
    # Whitespace between adjacent encoded-words is not part of the text (RFC 2047 §6.2).
    text = _ADJACENT_WORDS.sub(r"\1\2", text)
    text = _ENCODED_WORD.sub(_decode_word, text)
    return " ".join(strip_controls(text.replace("\r", " ").replace("\n", " ")).split())


_ENCODED_WORD = re.compile(r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?=")
_ADJACENT_WORDS = re.compile(r"(\?=)[ \t\r\n]+(=\?[^?\s]+\?[bBqQ]\?)")


def _decode_word(match: re.Match[str]) -> str:
    """One encoded-word; a malformed one stays as written rather than failing the mail."""
    try:
        return str(make_header(decode_header(match.group(0))))
    except (ValueError, LookupError, UnicodeDecodeError, HeaderParseError):
        return match.group(0)


def _is_attachment(part: Message) -> bool:
    disposition = (part.get("Content-Disposition") or "").split(";", 1)[0].strip().lower()
    return disposition == "attachment" or bool(part.get_filename())


def _part_text(part: Message, legacy_charset: str) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    return decode_bytes(payload, part.get_content_charset(), legacy_charset)


def _own_parts(message: Message) -> list[Message]:
    """Leaf parts of this mail, not descending into attached (forwarded) messages."""
    if message.get_content_maintype() == "message":
        return []
    if not message.is_multipart():
        return [message]
    parts: list[Message] = []
    payload = message.get_payload()
    for part in payload if isinstance(payload, list) else []:
        if isinstance(part, Message):
            parts.extend(_own_parts(part))
    return parts


def extract_body(message: Message, legacy_charset: str) -> tuple[str, bool]:
    """The best text of the mail: the first inline text/plain, else text/html made readable.

    Returns the text and whether it came from HTML. Attachments are ignored.
    """
    plain: str | None = None
    markup: str | None = None
    for part in _own_parts(message):
        if _is_attachment(part):
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and plain is None:
            plain = _part_text(part, legacy_charset)
        elif ctype == "text/html" and markup is None:
            markup = _part_text(part, legacy_charset)
    if plain is not None and plain.strip():
        return plain, False
    if markup is not None:
        return html_to_text(markup), True
    return plain or "", False


_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)


def _simple_body(
    raw: bytes, headers_size: int, headers: dict[bytes, bytes], legacy_charset: str
) -> str | None:
    """The text of a single-part text/plain mail in 7bit/8bit, without the email package.

    Most legacy senders (monitoring, printers, scripts) send exactly that; everything else
    (MIME multipart, quoted-printable, base64, HTML) goes through the full parser.
    """
    ctype = headers.get(b"content-type", b"text/plain").lower()
    cte = headers.get(b"content-transfer-encoding", b"7bit").strip().lower()
    if not ctype.startswith(b"text/plain") or cte not in (b"7bit", b"8bit", b"binary"):
        return None
    if b"mime-version" not in headers and b"content-type" in headers:
        return None  # unusual: let the full parser judge it
    if headers_size >= len(raw) or b"\r" in raw[:headers_size].replace(b"\r\n", b""):
        return None  # no CRLF/LF blank line (bare-CR mail): the full parser copes
    body = raw[headers_size:]
    body = body[4:] if body.startswith(b"\r\n\r\n") else body[2:]
    match = _CHARSET_PARAM.search(ctype)
    declared = match.group(1).decode("ascii", "replace") if match else None
    return decode_bytes(body, declared, legacy_charset)


def parse_mail(raw: bytes, *, legacy_charset: str, max_header_bytes: int) -> ParsedMail:
    """Parse one mail's bytes into Subject, body text and Message-ID.

    The header block is capped before parsing: the email package parses huge encoded
    Subjects in quadratic time (notes/pitfalls.md).
    """
    headers_size = header_block_size(raw)
    if headers_size > max_header_bytes:
        raise IntakeError(552, "5.3.4", f"Message headers exceed {max_header_bytes} bytes")
    raw_headers = raw[:headers_size]
    headers = raw_headers_map(raw_headers)
    simple = _simple_body(raw, headers_size, headers, legacy_charset)
    if simple is not None:
        text, from_html = simple, False
    else:
        message = BytesParser(policy=policy.compat32).parsebytes(raw)
        text, from_html = extract_body(message, legacy_charset)
    text = trim_blank_lines(strip_controls(normalize_newlines(text)))
    message_id_raw = headers.get(b"message-id")
    message_id = None
    if message_id_raw:
        message_id = strip_controls(message_id_raw.decode("ascii", errors="replace")).strip()[:998]
    return ParsedMail(
        subject=decode_subject_value(headers.get(b"subject"), legacy_charset),
        text=text,
        message_id=message_id or None,
        html_only=from_html,
    )


V2_FIELDS = frozenset(
    {
        "login", "password", "phones", "message", "originator", "rus", "flash", "start_date",
        "max_parts", "individual_messages", "delimiter", "want_sms_ids", "with_push_id",
        "ignore_phone_format", "two_byte_concat", "timeout", "group", "reply_to_email",
    }
)
_V2_LINE = re.compile(r"^([A-Za-z_]+)[ \t]*:[ \t]?(.*)$")
_V2_BAD_CHARS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u0085\u2028\u2029]")


def parse_v2_body(body: str) -> dict[str, str]:
    """``field: value`` pairs separated by at least one blank line (002, line 1811).

    A value may continue over single line breaks; a blank line ends it. The body is split on
    ``\\n`` only (after CRLF normalisation), never with ``str.splitlines()``, which also
    splits on ``\\x1c``–``\\x1e``, ``\\x85`` and U+2028. Ambiguous bodies are refused rather
    than guessed at: duplicate or unknown fields, stray control characters, or a block that
    does not start with ``field:`` (a smuggled second mail inside this body looks like that).
    """
    if "\r" in body.replace("\r\n", ""):
        raise IntakeError(550, "5.6.0", "Bare CR in v2 body: invalid parameters format", 441)
    text = body.replace("\r\n", "\n")
    if _V2_BAD_CHARS.search(text):
        raise IntakeError(550, "5.6.0", "Control characters in v2 body: invalid format", 441)
    fields: dict[str, str] = {}
    blocks: list[list[str]] = [[]]
    for line in text.split("\n"):
        if line.strip() == "":
            if blocks[-1]:
                blocks.append([])
        else:
            blocks[-1].append(line)
    for block in blocks:
        if not block:
            continue
        match = _V2_LINE.match(block[0])
        if not match:
            raise IntakeError(
                550, "5.6.0", f"Line {block[0][:40]!r} is not a 'field: value' pair", 441
            )
        name = match.group(1).lower()
        if name not in V2_FIELDS:
            raise IntakeError(550, "5.6.0", f"Unknown field {name!r}", 441)
        if name in fields:
            raise IntakeError(550, "5.6.0", f"Field {name!r} given twice", 442)
        value = "\n".join([match.group(2), *block[1:]])
        fields[name] = value.strip()
    return fields
