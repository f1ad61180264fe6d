"""SMS text: segment counting, transliteration and clean-up. Pure functions.

Segment sizes come from 002, "Кодировки" (line 1441, the GSM 03.38 table) and "UDH-склейка"
(line 1491): a GSM 7-bit text fits 160 characters in one SMS and 153 per part when
concatenated (152 with a 2-byte reference); UCS-2 fits 70 and 67 (66). Characters of the
GSM extension table (``^{}\\[~]|€`` and form feed) take two septets.

The spec reads ``rus=1/5`` two ways for Latin-only text (see specs/README.md); we count a
text that fits GSM 03.38 as GSM whatever ``rus`` says, which matches what a handset shows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import ClassVar

GSM_BASIC = set(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞ\x1bÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM_EXTENDED = set("\f^{}\\[~]|€")
_GSM_ALL = frozenset(GSM_BASIC | GSM_EXTENDED)


@dataclass(frozen=True)
class Segments:
    encoding: str  # "gsm7" or "ucs2"
    units: int  # septets (gsm7) or UTF-16 code units (ucs2)
    parts: int
    per_part: int


def count_segments(text: str, *, two_byte_concat: bool = False) -> Segments:
    """How many SMS parts ``text`` takes, and in which encoding."""
    chars = set(text)  # set operations rather than a Python step per character
    if chars <= _GSM_ALL:
        units = len(text) + sum(text.count(ch) for ch in chars & GSM_EXTENDED)
        single, multi, encoding = 160, 153, "gsm7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, multi, encoding = 70, 67, "ucs2"
    if two_byte_concat:
        multi -= 1
    if units <= single:
        return Segments(encoding, units, 1 if units else 0, single)
    return Segments(encoding, units, -(-units // multi), multi)


_TRANSLIT = {
    "а": "a", "б": "b", "в": "v", "г": "g", "д": "d", "е": "e", "ё": "e", "ж": "zh",
    "з": "z", "и": "i", "й": "y", "к": "k", "л": "l", "м": "m", "н": "n", "о": "o",
    "п": "p", "р": "r", "с": "s", "т": "t", "у": "u", "ф": "f", "х": "kh", "ц": "ts",
    "ч": "ch", "ш": "sh", "щ": "shch", "ъ": "", "ы": "y", "ь": "", "э": "e", "ю": "yu",
    "я": "ya", "і": "i", "ї": "yi", "є": "ye", "ґ": "g", "ў": "u",
}
_PUNCT = {"«": '"', "»": '"', "„": '"', "“": '"', "”": '"', "‘": "'", "’": "'", "—": "-",
          "–": "-", "…": "...", "№": "N", "\u00a0": " "}


def transliterate(text: str) -> str:
    """Cyrillic to Latin (the account option ``encoding = "transliterate"``, like ``rus=0``)."""
    out: list[str] = []
    for ch in text:
        low = ch.lower()
        if low in _TRANSLIT:
            latin = _TRANSLIT[low]
            out.append(latin.capitalize() if ch != low else latin)
        else:
            out.append(_PUNCT.get(ch, ch))
    return "".join(out)


_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u0085\u2028\u2029]")


def strip_controls(text: str) -> str:
    """Remove control characters but keep ``\\n`` and tab (002 allows line breaks in text)."""
    return _CONTROL.sub("", text)


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def trim_blank_lines(text: str) -> str:
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


_QUOTE_HEADER = re.compile(
    r"^(On .+ wrote:|.+ писал\(а\):|.+ написал\(а\):|-----\s*Original Message\s*-----|"
    r"-----\s*Исходное сообщение\s*-----|From: .+)$",
    re.IGNORECASE,
)


def trim_signature(text: str) -> str:
    """Cut at the usenet signature separator ``-- `` (RFC 3676 §4.3), and at a bare ``--``."""
    lines = text.split("\n")
    for index, line in enumerate(lines):
        if line in ("-- ", "--"):
            return "\n".join(lines[:index])
    return text


def trim_quoted(text: str) -> str:
    """Drop a quoted reply: ``>`` lines and everything after an attribution line."""
    kept: list[str] = []
    for line in text.split("\n"):
        stripped = line.strip()
        if _QUOTE_HEADER.match(stripped):
            break
        if stripped.startswith(">"):
            continue
        kept.append(line)
    return "\n".join(kept)


class _HtmlText(HTMLParser):
    _BLOCK: ClassVar[set[str]] = {
        "p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
        "blockquote", "pre",
    }
    _SKIP: ClassVar[set[str]] = {"script", "style", "head", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            self.chunks.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            self.chunks.append("\n")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.chunks.append(re.sub(r"[ \t\r\n]+", " ", data))


def html_to_text(markup: str) -> str:
    """Readable text from an HTML body: block elements become line breaks, scripts vanish."""
    parser = _HtmlText()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.chunks)  # convert_charrefs already decoded entities, once
    lines = [line.strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
