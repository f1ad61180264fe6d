"""SMS text: segment counting, transliteration and clean-up. Pure functions.

Segment sizes come from 002, "Кодировки" (line 1441, the GSM 03.38 table) and "UDH-склейка"
(line 1491): a GSM 7-bit text fits 160 characters in one SMS and 153 per part when
concatenated (152 with a 2-byte reference); UCS-2 fits 70 and 67 (66). Characters of the
GSM extension table (``^{}\\[~]|``) take two septets.

Which texts count as 7-bit: only those SMS Traffic HTTP API v1 can send in its Latin mode,
``rus=0`` — "Сообщение передано в кодировке Windows-1251 … 160 (153 для склеенного
сообщения)" (002 line 811) — and that a 7-bit SMS carries: the ASCII characters of GSM 03.38
(:func:`fits_latin_mode`). Anything else (é, ü, Δ, £, €, the backtick, Cyrillic …) goes
``rus=5``, where 002 line 812-813 reads two ways for Latin-only text: "Максимальное количество
символов в одном СМС-сообщении — 70 (67 для склеенного сообщения). Если сообщение состоит
исключительно из латинских символов, максимальное количество символов не изменяется" (70, or
160?). The stricter reading is counted: 70/67. The count is an upper bound for the other
providers too (UCS-2 never takes fewer parts than GSM 7-bit for the same text).
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
# What a 7-bit (Latin mode) SMS carries as it is: ASCII (so windows-1251 and any other
# charset a provider's Latin mode takes encode it unchanged) and in GSM 03.38; not the
# escape and form feed controls, which the GSM alphabet uses for its own purposes.
LATIN_MODE = frozenset(ch for ch in _GSM_ALL if ord(ch) < 128) - {"\x1b", "\f"}


@dataclass(frozen=True)
class Segments:
    encoding: str  # "gsm7" or "ucs2"
    units: int  # septets (gsm7) or UTF-16 code units (ucs2)
    parts: int
    per_part: int


def fits_latin_mode(text: str) -> bool:
    """Whether ``text`` goes as a 7-bit (Latin) SMS: SMS Traffic v1 ``rus=0``, SOAP
    ``LatinEncoding``. Only ASCII characters of GSM 03.38 (see the module docstring)."""
    return set(text) <= LATIN_MODE


def count_segments(text: str, *, two_byte_concat: bool = False,
                   whole_gsm_alphabet: bool = False) -> Segments:
    """How many SMS parts ``text`` takes, and in which encoding (module docstring).

    ``whole_gsm_alphabet``: count every character of GSM 03.38 (é, ü, Δ, £ …) as 7-bit, as
    a provider that encodes GSM 03.38 itself does (Devino: its answer carries one id per
    part it made, so matching ids to phones needs its own count, not the upper bound)."""
    chars = set(text)  # set operations rather than a Python step per character
    if chars <= (_GSM_ALL if whole_gsm_alphabet else LATIN_MODE):
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
