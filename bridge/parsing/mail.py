"""Mail → text: recipients, headers, bodies and the v2 ``field: value`` body. Pure functions.

The two mail formats are 002, "SMTP протокол (вариант 1)" (line 1768) and
"SMTP протокол (вариант 2)" (line 1811).
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import re
from dataclasses import dataclass
from email import errors, policy
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesParser

from bridge.errors import IntakeError
from bridge.parsing.replies import unflow
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
    # ``PHONE.login+NUMBER-TAG@``: the number the customer texted, which the answer may come
    # from, and the tag that proves the bridge wrote that address (:func:`receiver_tag`)
    receiver: str | None = None
    receiver_tag: str | None = None

    @property
    def is_v2(self) -> bool:
        return self.login is None


_PHONE_PREFIX = re.compile(r"^\+?[0-9]{5,20}$")
# A numeric sender has at most 15 digits (002 line 69, "Адрес отправителя"); the tag is
# RECEIVER_TAG_LENGTH hex digits.
RECEIVER_TAG_LENGTH = 12
_RECEIVER = re.compile(
    rf"(?P<number>[0-9]{{1,15}})(?:-(?P<tag>[0-9a-f]{{{RECEIVER_TAG_LENGTH}}}))?")


def receiver_tag(key: str, login: str, phone: str, receiver: str) -> str:
    """The tag of a reply address naming ``receiver`` as the sender of the answer to
    ``phone``: a keyed digest (the reply account's password is the key), so that only an
    address the bridge wrote in a forwarded SMS's Reply-To can choose a numeric sender; one
    typed by hand (``+74950000000``) cannot make the bridge send from any number it likes."""
    material = "\0".join(("reply-from", login.lower(), phone, receiver)).encode()
    return hmac.new(key.encode(), material, hashlib.sha256).hexdigest()[:RECEIVER_TAG_LENGTH]


def parse_recipient(address: str) -> Recipient:
    """``login@d`` (phone in Subject), ``79161234567.login@d`` or ``multi@d`` (002 line 1768).

    The Reply-To of a forwarded SMS adds the number the customer texted after a ``+``, with
    its tag: ``79161234567.login+74957873595-0123456789ab@d``. A login has no ``+``
    (letters, digits, ``_``, ``.``, ``-``), so the form cannot be mistaken for another login;
    anything after the
    ``+`` that is not such a number leaves the local part as it was (an unknown login)."""
    local, sep, domain = address.strip().strip("<>").rpartition("@")
    if not sep or not local or not domain:
        raise IntakeError(550, "5.1.3", "Recipient address must be login@domain")
    if local.lower() == "multi":
        return Recipient(address, local, domain.lower(), None, None)
    head, dot, rest = local.partition(".")
    if dot and rest and _PHONE_PREFIX.match(head):
        login, plus, receiver = rest.rpartition("+")
        found = _RECEIVER.fullmatch(receiver)
        if plus and login and found:
            return Recipient(address, local, domain.lower(), login, head,
                             found.group("number"), found.group("tag"))
        return Recipient(address, local, domain.lower(), rest, head)
    return Recipient(address, local, domain.lower(), local, None)


@dataclass(frozen=True)
class ParsedMail:
    subject: str
    text: str
    message_id: str | None
    html_only: bool = False
    # The HTML the text came from (``html_only``): reply extraction reads its <blockquote>s.
    html: str | None = None
    references: str | None = None  # for answers threaded to this mail (RFC 5322 §3.6.4)


def header_block_size(raw: bytes) -> int:
    """Bytes before the first empty line: checked before the email package sees the mail."""
    found = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return min(found) if found else len(raw)


def capped_header_block(raw: bytes, limit: int) -> bytes:
    """The mail's header fields, each with its line break, as many whole fields (a field and
    its continuation lines) as fit in ``limit`` bytes: what a bounce shows of the original
    as ``text/rfc822-headers`` (RFC 6522 §3.3 / RFC 3464 §2), kept small in the store."""
    size = header_block_size(raw)
    block = raw[:size]
    if size < len(raw):
        block += b"\r\n" if raw.startswith(b"\r\n", size) else b"\n"  # the last field's end
    if len(block) <= limit:
        return block
    kept = 0
    for field in _FIELD.findall(block):
        if kept + len(field) > limit:
            break
        kept += len(field)
    return block[:kept]


# One header field with its continuation lines (lines that begin with a blank).
_FIELD = re.compile(rb"[^\n]*(?:\n|$)(?:[ \t][^\n]*(?:\n|$))*")


# A header field: a name of printable ASCII but ":" (RFC 5322 §2.2; the email package's
# feedparser uses the same class), optional blanks (§4.5.3 obs-optional), then ":". Also
# continuation lines, and an mbox "From " line the feedparser skips.
_HEADER_LINE = re.compile(rb"[\x21-\x39\x3b-\x7e]+[ \t]*:|[ \t]|From ")


def check_header_lines(raw_headers: bytes) -> None:
    """Refuse (550 5.6.0) a header block with a line that is not a header field.

    The email package ends the header block at such a line (recording only
    ``MissingHeaderBodySeparatorDefect``) and takes the rest of the headers as the body: a
    NUL in a header name turned ``Content-Type: …`` and the base64 text into the SMS.
    Called only when an empty line does end the block: a mail with no empty line at all is
    read as headers followed by its text, as legacy clients that omit it expect."""
    lines = raw_headers.replace(b"\r\n", b"\n").split(b"\n")
    for number, line in enumerate(lines, start=1):
        if line and not _HEADER_LINE.match(line):
            raise IntakeError(550, "5.6.0", f"Header line {number} is not a header field")


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


# Characters RFC 2045 §6.8 lets base64 decoders skip: line breaks and other white space.
# Anything else outside the alphabet "probably indicate[s] a transmission error, about which
# a warning message or even a message rejection might be appropriate".
_BASE64_NOISE = re.compile(r"[^A-Za-z0-9+/=\s]")


def _part_text(part: Message, legacy_charset: str) -> str:
    """The decoded text of one body part; a part whose transfer encoding cannot be undone
    is refused (550 5.6.0) rather than sent as garbage.

    For base64, ``get_payload(decode=True)`` never fails: given a length no base64 has, it
    returns the encoded text itself, and it skips characters outside the alphabet; either
    way it only records a defect on the part (``email.errors.InvalidBase64LengthDefect``,
    ``InvalidBase64CharactersDefect``)."""
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    defects = {type(d) for d in part.defects}
    if defects & {errors.InvalidBase64CharactersDefect, errors.InvalidBase64LengthDefect}:
        encoded = part.get_payload(decode=False)
        if not isinstance(encoded, str) or _BASE64_NOISE.search(encoded):
            raise IntakeError(550, "5.6.0", "Body part is not valid base64 (characters "
                                            "outside the base64 alphabet)")
    if errors.InvalidBase64LengthDefect in defects:
        raise IntakeError(550, "5.6.0", "Body part is not valid base64 (impossible length)")
    text = decode_bytes(payload, part.get_content_charset(), legacy_charset)
    if part.get_content_type() != "text/plain":
        return text
    return _unflowed(str(part.get_param("format") or ""), str(part.get_param("delsp") or ""),
                     text)


def _unflowed(format_param: str, delsp_param: str, text: str) -> str:
    """A text/plain ``text`` with the soft line breaks of ``format=flowed`` joined
    (RFC 3676 §4.2: "DelSp=yes" deletes the space at each soft break)."""
    if format_param.strip().lower() != "flowed":
        return text
    return unflow(text, delsp=delsp_param.strip().lower() == "yes")


def _ascii_header(value: bytes | None) -> str | None:
    """A raw header value as one line of text, control characters removed."""
    text = strip_controls((value or b"").decode("ascii", errors="replace")).strip()[:998]
    return text or None


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


def extract_body(message: Message, legacy_charset: str) -> tuple[str, str | None]:
    """The best text of the mail: the first inline text/plain, else text/html made readable.

    Returns the text and, when it came from HTML, that HTML. Attachments are ignored.
    """
    plain_part: Message | None = None
    markup_part: Message | None = None
    for part in _own_parts(message):
        if _is_attachment(part):
            continue
        ctype = part.get_content_type()
        if ctype == "text/plain" and plain_part is None:
            plain_part = part
        elif ctype == "text/html" and markup_part is None:
            markup_part = part
    # Only the part the text comes from is decoded (and judged): a broken alternative that
    # is not used does not refuse the mail.
    plain = _part_text(plain_part, legacy_charset) if plain_part is not None else None
    if plain is not None and plain.strip():
        return plain, None
    if markup_part is not None:
        markup = _part_text(markup_part, legacy_charset)
        return html_to_text(markup), markup
    return plain or "", None


_CHARSET_PARAM = re.compile(rb"""charset\s*=\s*["']?([^"';\s]+)""", re.IGNORECASE)
_FORMAT_PARAM = re.compile(rb""";\s*format\s*=\s*["']?([a-z]+)""", re.IGNORECASE)
_DELSP_PARAM = re.compile(rb""";\s*delsp\s*=\s*["']?([a-z]+)""", re.IGNORECASE)


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
    flowed = _FORMAT_PARAM.search(ctype)
    delsp = _DELSP_PARAM.search(ctype)
    return _unflowed(flowed.group(1).decode() if flowed else "",
                     delsp.group(1).decode() if delsp else "",
                     decode_bytes(body, declared, legacy_charset))


def parse_mail(raw: bytes, *, legacy_charset: str, max_header_bytes: int) -> ParsedMail:
    """Parse one mail's bytes into Subject, body text and Message-ID.

    The header block is capped before parsing: the email package parses huge encoded
    Subjects in quadratic time ("One Subject of 40,000 encoded-words (~560 KB) took 40 s of
    CPU to parse and froze the event loop"). A header block with a line that is not a header
    field, and a body part whose transfer encoding cannot be undone, are refused with
    550 5.6.0 rather than turned into a garbage SMS.
    """
    headers_size = header_block_size(raw)
    if headers_size > max_header_bytes:
        raise IntakeError(552, "5.3.4", f"Message headers exceed {max_header_bytes} bytes")
    raw_headers = raw[:headers_size]
    if headers_size < len(raw):
        check_header_lines(raw_headers)
    headers = raw_headers_map(raw_headers)
    simple = _simple_body(raw, headers_size, headers, legacy_charset)
    markup: str | None = None
    if simple is not None:
        text = simple
    else:
        message = BytesParser(policy=policy.compat32).parsebytes(raw)
        text, markup = extract_body(message, legacy_charset)
    text = trim_blank_lines(strip_controls(normalize_newlines(text)))
    message_id_raw = headers.get(b"message-id")
    message_id = None
    if message_id_raw:
        message_id = strip_controls(message_id_raw.decode("ascii", errors="replace")).strip()[:998]
    return ParsedMail(
        subject=decode_subject_value(headers.get(b"subject"), legacy_charset),
        text=text,
        message_id=message_id or None,
        html_only=markup is not None,
        html=markup,
        references=_ascii_header(headers.get(b"references")),
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
