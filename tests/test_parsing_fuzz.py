"""Property tests for the parsers: they return or refuse with IntakeError, never crash."""

from __future__ import annotations

import base64
import urllib.parse

import phonenumbers
from hypothesis import example, given, settings
from hypothesis import strategies as st

from bridge.errors import IntakeError
from bridge.inbound.parsing import unquote_bytes
from bridge.parsing.mail import V2_FIELDS, parse_mail, parse_v2_body
from bridge.parsing.phones import normalize_phone
from bridge.parsing.text import GSM_BASIC, GSM_EXTENDED, count_segments

FUZZ = settings(max_examples=200, deadline=None, database=None)

# --- parse_v2_body ------------------------------------------------------------------------

_names = st.sampled_from([*sorted(V2_FIELDS), "bcc", "MAIL FROM", "LOGIN", "x", ""])
_separators = st.sampled_from(
    ["\n\n", "\r\n\r\n", "\n", "\r\n", "\n \n", "\r", "\x85", "\u2028", "\x1c", "\x0b", "\n.\r\n"]
)
_values = st.text(
    alphabet=st.sampled_from([*"ab: 79\n\r\t.,;", "ж", "\x00", "\u2029", "\x1e", "\xa0"]),
    max_size=30,
)


@st.composite
def v2_bodies(draw: st.DrawFn) -> str:
    pairs = draw(st.lists(st.tuples(_names, _values, _separators), max_size=8))
    return "".join(f"{name}:{value}{sep}" for name, value, sep in pairs)


@FUZZ
@given(st.text(max_size=400))
def test_parse_v2_body_arbitrary_text(body: str) -> None:
    try:
        fields = parse_v2_body(body)
    except IntakeError as err:
        assert err.api_code in (441, 442)
        return
    assert set(fields) <= V2_FIELDS


@FUZZ
@given(v2_bodies())
def test_parse_v2_body_structured(body: str) -> None:
    try:
        fields = parse_v2_body(body)
    except IntakeError as err:
        assert err.api_code in (441, 442)
        return
    assert set(fields) <= V2_FIELDS
    for value in fields.values():
        # No separator look-alike survives into a value: they are refused, never kept or split.
        assert not any(ch in value for ch in "\r\x85\u2028\u2029\x1c\x1d\x1e\x0b\x0c\x00")
        assert "\n\n" not in value
        assert value == value.strip()


# --- parse_mail ---------------------------------------------------------------------------


def _parse(raw: bytes) -> None:
    try:
        mail = parse_mail(raw, legacy_charset="windows-1251", max_header_bytes=4096)
    except IntakeError as err:
        # Header block over the cap; a line in it that is not a header field, or a body part
        # that cannot be decoded.
        assert (err.smtp_code, err.enhanced) in {(552, "5.3.4"), (550, "5.6.0")}
        return
    assert isinstance(mail.text, str)
    assert "\r" not in mail.text
    assert "\r" not in mail.subject and "\n" not in mail.subject
    assert mail.text == mail.text.strip("\n")


@FUZZ
@given(st.binary(max_size=3000))
def test_parse_mail_arbitrary_bytes(raw: bytes) -> None:
    _parse(raw)


_header_lines = st.sampled_from(
    [
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Type: text/plain; charset=x-cp1251",
        b"Content-Type: text/plain; charset=bogus",
        b"Content-Type: text/html",
        b"Content-Type: multipart/alternative; boundary=BB",
        b"Content-Type: multipart/mixed; boundary=\"BB\"",
        b"Content-Type: multipart/mixed",
        b"Content-Type: message/rfc822",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: quoted-printable",
        b"Content-Transfer-Encoding: x-uuencode",
        b"Content-Disposition: attachment; filename=\"a.txt\"",
        b"Message-ID: <x@y>",
        b" folded continuation",
        b"--BB",
        b"--BB--",
        b"",
    ]
)
_body_lines = st.one_of(
    _header_lines,
    st.binary(max_size=40),
    st.sampled_from([b"0J/RgNC4", b"=D0=96=", b"=ZZ", b"<p>hi</p>", b"\xd0\xcf", b"begin 644 a"]),
)


@st.composite
def mails(draw: st.DrawFn) -> bytes:
    eol = draw(st.sampled_from([b"\r\n", b"\n"]))
    head = draw(st.lists(_header_lines, max_size=6))
    body = draw(st.lists(_body_lines, max_size=12))
    return eol.join([b"Subject: 79161234567", *head, b"", *body])


@FUZZ
@given(mails())
def test_parse_mail_structured_mime(raw: bytes) -> None:
    _parse(raw)


_encoded_words = st.one_of(
    st.builds(
        lambda cs, enc, payload: f"=?{cs}?{enc}?{payload}?=",
        st.sampled_from(["utf-8", "windows-1251", "koi8-r", "bogus", "", "utf-16"]),
        st.sampled_from(["B", "b", "Q", "q", "X"]),
        st.one_of(
            st.binary(max_size=12).map(lambda b: base64.b64encode(b).decode()),
            st.text(alphabet="AZaz09+/=_?", max_size=8),
        ),
    ),
    st.lists(st.sampled_from([*"ab 7,=?", "ж", "\r\n ", "\t"]), max_size=10).map("".join),
)


@FUZZ
@given(st.lists(_encoded_words, max_size=6))
@example(["=?utf-8?b?A?="])
def test_parse_mail_encoded_word_subjects(words: list[str]) -> None:
    _parse(b"Subject: " + " ".join(words).encode() + b"\r\n\r\nbody")


# --- count_segments -----------------------------------------------------------------------

_sms_chars = st.sampled_from(
    sorted(GSM_BASIC)[:20] + sorted(GSM_EXTENDED) + ["ж", "Ё", "😀", "\u00a0", "a", " "]
)


@FUZZ
@given(st.text(alphabet=_sms_chars, max_size=500), st.booleans())
def test_count_segments_monotonic_and_sufficient(text: str, two_byte: bool) -> None:
    previous = 0
    for end in range(0, len(text) + 1, 7):
        seg = count_segments(text[:end], two_byte_concat=two_byte)
        assert seg.parts >= previous
        previous = seg.parts
    seg = count_segments(text, two_byte_concat=two_byte)
    assert seg.parts >= previous
    assert seg.parts * seg.per_part >= seg.units
    assert (seg.parts - 1) * seg.per_part < seg.units or seg.units == 0
    assert seg.units >= len(text)
    assert seg.per_part in ((160, 153, 152) if seg.encoding == "gsm7" else (70, 67, 66))


@FUZZ
@given(st.text(alphabet=_sms_chars, max_size=400), _sms_chars)
def test_count_segments_appending_never_reduces_parts(text: str, ch: str) -> None:
    assert count_segments(text + ch).parts >= count_segments(text).parts


# --- normalize_phone ----------------------------------------------------------------------


@st.composite
def written_numbers(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["", "+", "00", "8", "+7", "+375", "7", "+1", "+44"]))
    digits = draw(st.text(alphabet="0123456789", min_size=5, max_size=16))
    out = prefix
    for ch in digits:
        out += draw(st.sampled_from(["", "", "", " ", "-", "(", ")", ".", "\u00a0"])) + ch
    return draw(st.sampled_from(["", " "])) + out


def _check_phone(raw: str) -> str | None:
    try:
        digits = normalize_phone(raw)
    except IntakeError as err:
        assert err.api_code == 428
        return None
    assert digits.isascii() and digits.isdigit()
    assert 7 <= len(digits) <= 15
    return digits


def _ru_trunk_ambiguous(digits: str) -> bool:
    """11 digits starting with 8 whose Russian reading (8 = trunk prefix) is also valid:
    normalize_phone reads them as Russian by design, e.g. Vietnam's 84 95… vs Moscow 8 495…"""
    if len(digits) != 11 or not digits.startswith("8"):
        return False
    return phonenumbers.is_valid_number(phonenumbers.parse("+7" + digits[1:], None))


@FUZZ
@given(st.one_of(written_numbers(), st.text(max_size=25)))
def test_normalize_phone_digits_only_and_idempotent(raw: str) -> None:
    digits = _check_phone(raw)
    if digits is not None and not _ru_trunk_ambiguous(digits):
        assert normalize_phone(digits) == digits


@FUZZ
@given(written_numbers())
@example("+81312345678")
def test_normalize_phone_idempotent_for_all_outputs(raw: str) -> None:
    digits = _check_phone(raw)
    if digits is not None and not _ru_trunk_ambiguous(digits):
        assert normalize_phone(digits) == digits


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"%", b"%4", b"%41", b"%e2", b"%F0%9F", b"zz", b"+", b"\xcf",
                                 b"a", b"%%", b"%G1"]), max_size=30).map(b"".join)
       | st.binary(max_size=60))
def test_unquote_bytes_agrees_with_urllib(data: bytes) -> None:
    assert unquote_bytes(data) == urllib.parse.unquote_to_bytes(data)
