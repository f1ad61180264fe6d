"""Phone numbers and originators: pure functions, no I/O.

Numbers go to providers in international format, digits only, without ``+``
(002, "Формат номера телефона", line 55). Originators are at most 11 alphanumeric
characters or 15 digits, from a safe character set (002, "Адрес отправителя", line 69).
"""

from __future__ import annotations

import functools
import re

import phonenumbers

from bridge.errors import IntakeError

_FORMATTING = re.compile(r"[\s()\-.\u00a0]")
_ORIGINATOR_SAFE = re.compile(r"^[A-Za-z0-9_.\- ]+$")


def _bad_number(raw: str) -> IntakeError:
    shown = raw if len(raw) <= 40 else raw[:40] + "…"
    text = f'"{shown}": invalid phone number format. No message sent.'
    return IntakeError(550, "5.1.3", text, 428)


@functools.lru_cache(maxsize=16384)
def normalize_phone(raw: str) -> str:
    """``+7 (916) 123-45-67`` or ``8 916 123 45 67`` → ``79161234567``.

    An 11-digit number starting with the Russian trunk prefix ``8`` is read as ``7…``; any
    other number is read as international. Numbers that are not plausible (wrong length for
    the country, unknown country code) raise an :class:`IntakeError` with code 428.
    Results are cached: legacy senders text the same few numbers over and over, and the
    phone-number library's parse was a tenth of the SMTP intake's CPU.
    """
    text = raw.strip()
    compact = _FORMATTING.sub("", text)
    if compact.startswith("+"):
        digits = compact[1:]
    elif compact.startswith("00"):
        digits = compact[2:]
    else:
        digits = compact
    if not digits.isascii() or not digits.isdigit() or not 7 <= len(digits) <= 15:
        raise _bad_number(raw)
    if not compact.startswith(("+", "00")) and len(digits) == 11 and digits[0] == "8":
        # "8 916 123 45 67" is the Russian trunk prefix. It is read so only when the Russian
        # reading is a valid number: 81…/82… (Japan, Korea) stay international, while 84…
        # (Vietnam) without "+" is ambiguous with Moscow's 8 495 … and read as Russian.
        russian = phonenumbers.parse("+7" + digits[1:], None)
        if phonenumbers.is_valid_number(russian):
            digits = "7" + digits[1:]
    if len(digits) == 11 and digits[0] == "7":
        # Country code 7 (Russia, Kazakhstan: 002's market) has one possible national
        # length, 10 digits: the library's answer, without its parse.
        return digits
    try:
        parsed = phonenumbers.parse("+" + digits, None)
    except phonenumbers.NumberParseException as exc:
        raise _bad_number(raw) from exc
    if not phonenumbers.is_possible_number(parsed):
        raise _bad_number(raw)
    return digits


def split_phone_list(raw: str) -> list[str]:
    """Numbers in a Subject or a v2 ``phones`` field: separated by commas, semicolons or spaces.

    A space may also sit *inside* one written number (``8 916 123 45 67``), so within a
    comma-separated item the longest run of space-separated groups (at most 15 digits) that
    forms a plausible number is taken, then the next one.
    """
    numbers: list[str] = []
    for part in re.split(r"[,;]+", raw):
        tokens = part.split()
        start = 0
        while start < len(tokens):
            for end in range(len(tokens), start, -1):
                candidate = " ".join(tokens[start:end])
                if sum(ch.isdigit() for ch in candidate) > 15 and end > start + 1:
                    continue
                try:
                    numbers.append(normalize_phone(candidate))
                except IntakeError:
                    if end == start + 1:
                        raise
                    continue
                start = end
                break
    return numbers


def validate_originator(originator: str) -> str:
    """Return the originator or raise 421 (too long) / 436 (characters not allowed)."""
    value = originator.strip()
    if value.isascii() and value.isdigit():
        if len(value) > 15:
            raise IntakeError(550, "5.7.1", "Originator is too long", 421)
        return value
    if len(value) > 11:
        raise IntakeError(550, "5.7.1", "Originator is too long", 421)
    if not value or not _ORIGINATOR_SAFE.match(value):
        raise IntakeError(550, "5.7.1", f'Originator "{value}" is not allowed', 436)
    return value
