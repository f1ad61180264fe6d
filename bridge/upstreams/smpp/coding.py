"""Text on the SMPP wire: GSM 03.38 and UCS-2, UDH concatenation, receipts' text.

Sources: tests/specs/002_e7d2ff51d5c777f0.txt, "Кодировки" (line 1441) and "UDH-склейка"
(line 1491); SMPP 3.4 §5.2.19 (data_coding) and §5.2.12 (esm_class); 3GPP TS 23.038 (the
GSM 7-bit default alphabet) and TS 23.040 §9.2.3.24.1/.8 (concatenation information
elements 0x00 and 0x08).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from datetime import datetime

from bridge.models import DeliveryReport
from bridge.upstreams.smpp.pdu import (
    TLV_MESSAGE_STATE,
    TLV_NETWORK_ERROR_CODE,
    TLV_RECEIPTED_MESSAGE_ID,
    TLV_SAR_MSG_REF_NUM,
    TLV_SAR_SEGMENT_SEQNUM,
    TLV_SAR_TOTAL_SEGMENTS,
    DeliverSm,
)

DATA_CODING_DEFAULT = 0x00  # "Default SMSC alphabet": GSM 03.38 on SMS Traffic (002 line 1443)
DATA_CODING_UCS2 = 0x08
# GSM 03.38 data coding schemes with message class 0 (a "flash" SMS shown at once): general
# data coding group, class meaning set (TS 23.038 §4: 0001 0000 and 0001 1000).
DATA_CODING_FLASH_GSM = 0x10
DATA_CODING_FLASH_UCS2 = 0x18
ESM_CLASS_UDHI = 0x40  # 002 line 1519: "взвести бит UDHI Indicator … esm_class … 0x40"

# The GSM 7-bit default alphabet (TS 23.038 §6.2.1), by septet value.
GSM_DEFAULT = (
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
# Its extension table, reached through the escape 0x1B (TS 23.038 §6.2.1.1).
GSM_EXTENSION = {0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\", 0x3C: "[",
                 0x3D: "~", 0x3E: "]", 0x40: "|", 0x65: "€"}

# What ``data_coding`` 0 carries to SMS Traffic: 002 lines 1443-1455, "поддерживаются только
# следующие символы" and "корректная передача только символов из таблицы выше". The table
# leaves 0x10 and 0x12-0x1B empty (Δ, the Greek capitals and the escape to the extension
# table: no ``{}[]~^|\\€``), so those go as UCS-2. Read from the table as well:
# - 0x0A and 0x0D (line feed, carriage return) are empty cells too, but they are controls a
#   table of glyphs cannot show, unlike Δ: kept, so a multi-line text keeps 160/153 per part
#   as the bridge counted it at intake;
# - 0x11 shows "–" where GSM 03.38 has "_" (the dash is 0x2D): taken as the underscore;
# - 0x09 "ç", 0x40 "i", 0x5F "Ş" and 0x60 "ı" differ from GSM 03.38 (Ç ¡ § ¿) and "i" is
#   0x69 already: what the provider maps there is unclear, so Ç ç ¡ § ¿ go as UCS-2, which
#   is never shown wrongly.
_NOT_IN_002_TABLE = frozenset("ΔΦΓΛΩΠΨΣΘΞ\x1bÇ¡§¿")
GSM_ENCODE = {ch: code for code, ch in enumerate(GSM_DEFAULT) if ch not in _NOT_IN_002_TABLE}

# Characters per part (002 line 1524-1527): 160/153 GSM (152 with a 2-byte reference),
# 70/67 UCS-2 (66). In octets, as ``short_message`` carries them unpacked ("упаковывать
# текст сообщения в 7 бит не нужно", 002 line 1457): one octet per GSM character, two per
# UCS-2 code unit.
GSM_SINGLE, UCS2_SINGLE_OCTETS = 160, 140
MAX_PARTS = 255  # the UDH counts parts in one octet


def gsm_encode(text: str) -> bytes | None:
    """``text`` as unpacked GSM 03.38 septets, or None if a character is not in 002's table."""
    try:
        return bytes(GSM_ENCODE[ch] for ch in text)
    except KeyError:
        return None


def gsm_decode(data: bytes) -> tuple[str, bool]:
    """Unpacked GSM 03.38 (the whole alphabet and its extension: phones send them) → text,
    and whether an octet was outside it (shown as U+FFFD)."""
    out: list[str] = []
    bad = False
    escape = False
    for octet in data:
        if escape:
            escape = False
            if octet in GSM_EXTENSION:
                out.append(GSM_EXTENSION[octet])
                continue
            # TS 23.038: an unknown extension shows as its default-table character.
        if octet > 0x7F:
            out.append("\ufffd")
            bad = True
        elif octet == 0x1B:
            escape = True
        else:
            out.append(GSM_DEFAULT[octet])
    return "".join(out), bad


@dataclass(frozen=True)
class EncodedMessage:
    data_coding: int
    esm_class: int
    parts: tuple[bytes, ...]  # each part's short_message, UDH included


def concatenation_header(reference: int, total: int, index: int, two_byte: bool) -> bytes:
    """The UDH of 002 line 1497-1511: ``05 00 03 REF TOTAL N`` or ``06 08 04 REF REF TOTAL N``
    (parts counted from 1)."""
    if two_byte:
        return struct.pack(">BBBHBB", 6, 0x08, 4, reference & 0xFFFF, total, index)
    return struct.pack(">BBBBBB", 5, 0x00, 3, reference & 0xFF, total, index)


def _split_units(units: list[bytes], per_part: int, keep_together: int = 0) -> list[bytes]:
    """Chunks of at most ``per_part`` units; a UTF-16 surrogate pair is never cut in two."""
    parts: list[bytes] = []
    start = 0
    while start < len(units):
        end = min(start + per_part, len(units))
        if keep_together and end < len(units) and 0xD8 <= units[end - 1][0] <= 0xDB:
            end -= 1  # a high surrogate ends the chunk: its low half goes with it
        parts.append(b"".join(units[start:end]))
        start = end
    return parts


def encode_message(text: str, *, reference: int, two_byte: bool = False,
                   flash: bool = False) -> EncodedMessage:
    """``text`` as ``short_message`` parts: GSM 03.38 when 002's table has every character,
    else UCS-2; one part when it fits, else parts under a concatenation UDH."""
    udh_octets = 7 if two_byte else 6
    gsm = gsm_encode(text)
    if gsm is not None:
        coding = DATA_CODING_FLASH_GSM if flash else DATA_CODING_DEFAULT
        if len(gsm) <= GSM_SINGLE:
            return EncodedMessage(coding, 0, (gsm,))
        # The UDH takes whole septets of the 160: 6 octets → 7 septets (153 left), 7 → 8 (152).
        per_part = GSM_SINGLE - -(-udh_octets * 8 // 7)
        chunks = _split_units([bytes((b,)) for b in gsm], per_part)
    else:
        coding = DATA_CODING_FLASH_UCS2 if flash else DATA_CODING_UCS2
        ucs2 = text.encode("utf-16-be")
        if len(ucs2) <= UCS2_SINGLE_OCTETS:
            return EncodedMessage(coding, 0, (ucs2,))
        per_part = (UCS2_SINGLE_OCTETS - udh_octets) // 2  # 67, or 66 with a 2-byte reference
        chunks = _split_units([ucs2[i:i + 2] for i in range(0, len(ucs2), 2)], per_part,
                              keep_together=1)
    total = len(chunks)
    if total > MAX_PARTS:
        return EncodedMessage(coding, ESM_CLASS_UDHI, tuple(chunks))  # refused by the caller
    return EncodedMessage(coding, ESM_CLASS_UDHI, tuple(
        concatenation_header(reference, total, index, two_byte) + chunk
        for index, chunk in enumerate(chunks, start=1)))


# -- inbound (deliver_sm) ---------------------------------------------------------------------

@dataclass(frozen=True)
class Concatenation:
    reference: int
    total: int
    index: int


def split_udh(data: bytes) -> tuple[Concatenation | None, bytes]:
    """The concatenation element of a User Data Header (IEI 0x00 or 0x08; others are
    skipped) and the user data after the header. Raises ``ValueError`` on a header that
    runs past the data."""
    if not data:
        raise ValueError("UDHI set but no user data header")
    length = data[0]
    if length + 1 > len(data):
        raise ValueError("user data header longer than the message")
    header, rest = data[1:length + 1], data[length + 1:]
    found: Concatenation | None = None
    at = 0
    while at + 2 <= len(header):
        iei, size = header[at], header[at + 1]
        value = header[at + 2:at + 2 + size]
        if len(value) != size:
            raise ValueError("information element runs past the user data header")
        if iei == 0x00 and size == 3:
            found = Concatenation(value[0], value[1], value[2])
        elif iei == 0x08 and size == 4:
            found = Concatenation(struct.unpack(">H", value[:2])[0], value[2], value[3])
        at += 2 + size
    return found, rest


def sar_concatenation(message: DeliverSm) -> Concatenation | None:
    """The SAR TLVs (SMPP 3.4 §5.3.2.22-24), the other way to carry a concatenated SMS."""
    tlvs = message.tlvs
    try:
        if TLV_SAR_MSG_REF_NUM in tlvs:
            return Concatenation(struct.unpack(">H", tlvs[TLV_SAR_MSG_REF_NUM])[0],
                                 tlvs[TLV_SAR_TOTAL_SEGMENTS][0],
                                 tlvs[TLV_SAR_SEGMENT_SEQNUM][0])
    except (KeyError, IndexError, struct.error):
        raise ValueError("incomplete or malformed sar_* TLVs") from None
    return None


def decode_text(data: bytes, data_coding: int) -> tuple[str, str, bool]:
    """User data → (text, charset name, whether it decoded with errors).

    SMPP 3.4 §5.2.19: 0 the SMSC default alphabet (GSM 03.38 at SMS Traffic), 1 IA5/ASCII,
    3 Latin-1, 8 UCS-2; 0x10-0x1F and 0xF0-0xFF are GSM 03.38 coding schemes whose alphabet
    bits say GSM, 8-bit or UCS-2 (TS 23.038 §4). Anything else is kept as Latin-1 and flagged.
    """
    if data_coding in (0x00, 0x10, 0x11, 0x12, 0x13) or (
            0xF0 <= data_coding <= 0xFF and not data_coding & 0x04):
        text, bad = gsm_decode(data)
        return text, "gsm0338", bad
    if data_coding in (DATA_CODING_UCS2, 0x18, 0x19, 0x1A, 0x1B):
        # UCS-2 as phones send it is UTF-16: an emoji arrives as a surrogate pair.
        text = data.decode("utf-16-be", errors="replace")
        return text, "ucs2", len(data) % 2 == 1 or "\ufffd" in text
    if data_coding == 0x01:
        text = data.decode("ascii", errors="replace")
        return text, "ascii", "\ufffd" in text
    if data_coding in (0x06, 0x07):  # ISO-8859-5 (Cyrillic), ISO-8859-8 (Latin/Hebrew)
        charset = "iso8859-5" if data_coding == 0x06 else "iso8859-8"
        text = data.decode(charset, errors="replace")
        return text, charset, "\ufffd" in text
    if data_coding in (0x03, 0x14, 0x15, 0x16, 0x17) or 0xF4 <= data_coding <= 0xF7 \
            or 0xFC <= data_coding <= 0xFF:
        return data.decode("latin-1"), "latin-1", False
    return data.decode("latin-1"), f"data_coding {data_coding}", True


# -- delivery receipts (002 Table 3) ----------------------------------------------------------

# SMPP 3.4 Appendix B: the receipt's ``stat`` values; §5.2.28 message_state TLV values.
STAT_STATUS = {
    "DELIVRD": "delivered", "EXPIRED": "expired", "DELETED": "undelivered",
    "UNDELIV": "undelivered", "ACCEPTD": "sent", "UNKNOWN": "unknown", "REJECTD": "rejected",
    "ENROUTE": "sent",
}
MESSAGE_STATE_STAT = {1: "ENROUTE", 2: "DELIVRD", 3: "EXPIRED", 4: "DELETED", 5: "UNDELIV",
                      6: "ACCEPTD", 7: "UNKNOWN", 8: "REJECTD"}
# Table 3's fields, each up to the next field name (``submit date`` and ``done date`` hold a
# space in the name); ``text`` is last and runs to the end.
_RECEIPT_FIELD = re.compile(
    r"(?i)\b(id|sub|dlvrd|submit date|done date|stat|err|text):")


def parse_receipt_text(text: str) -> dict[str, str]:
    """``id:… sub:… dlvrd:… submit date:… done date:… stat:… err:… text:…`` → fields
    (names lower-case, values stripped). Fields may be missing or in another order."""
    marks = list(_RECEIPT_FIELD.finditer(text))
    fields: dict[str, str] = {}
    for mark, following in zip(marks, [*marks[1:], None], strict=True):
        end = following.start() if following is not None else len(text)
        fields.setdefault(mark.group(1).lower(), text[mark.end():end].strip())
    return fields


def parse_receipt(message: DeliverSm) -> DeliveryReport:
    """A receipt (esm_class 0x04) → the bridge's report. The TLVs come first where both
    say something (002 after Table 3: ``message_state`` 0x0427 carries the status,
    0x001E "the identifier our platform assigned"; ``network_error_code`` 0x0423 on a
    negative report); the text fields fill what the TLVs leave out. Raises ``ValueError``
    when no message id is found."""
    text, _, _ = decode_text(message.payload, message.data_coding)
    fields = parse_receipt_text(text)
    tlvs = message.tlvs
    provider_id = ""
    if TLV_RECEIPTED_MESSAGE_ID in tlvs:
        provider_id = tlvs[TLV_RECEIPTED_MESSAGE_ID].split(b"\0", 1)[0].decode(
            "ascii", errors="replace").strip()
    provider_id = provider_id or fields.get("id", "")
    if not provider_id:
        raise ValueError("receipt without a message id (no receipted_message_id, no id:)")
    raw_status = fields.get("stat", "").upper()
    state = tlvs.get(TLV_MESSAGE_STATE, b"")
    if len(state) == 1 and state[0] in MESSAGE_STATE_STAT:
        raw_status = MESSAGE_STATE_STAT[state[0]]
    status = STAT_STATUS.get(raw_status, "unknown")
    error_code: int | None = None
    err = fields.get("err", "")
    if err.isdigit() and int(err):
        error_code = int(err)
    network = tlvs.get(TLV_NETWORK_ERROR_CODE, b"")
    if error_code is None and len(network) == 3:
        error_code = struct.unpack(">H", network[1:])[0] or None
    return DeliveryReport(provider_id=provider_id, status=status, raw_status=raw_status,
                          error_code=error_code, at=receipt_time(fields.get("done date", "")))


def receipt_time(value: str) -> str:
    """Table 3's ``done date`` (10 digits, ``YYMMDDhhmm``; some SMSCs add seconds) as ISO
    8601 without a zone (the provider's local time), or "" if it is something else. Left as
    digits, a 10-digit date would read as a Unix time."""
    if not value.isdigit() or len(value) not in (10, 12):
        return ""
    try:
        when = datetime.strptime(value, "%y%m%d%H%M%S" if len(value) == 12 else "%y%m%d%H%M")
    except ValueError:
        return ""
    return when.isoformat()
