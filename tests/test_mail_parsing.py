"""Mail parsing: recipients, bodies, Subjects and the SMTP v2 ``field: value`` body.

002 line 1768 (SMTP v1), line 1811 (SMTP v2); the traps of Python's email package (quadratic
header parsing, 8-bit Subjects turned into U+FFFD without a defect, encoded CR/LF) and of
aiosmtpd 1.4.6 (smuggled end-of-data sequences arrive inside one body).
"""

from __future__ import annotations

import base64
import codecs
import time
from email.message import EmailMessage

import pytest

from bridge.errors import IntakeError
from bridge.parsing.mail import (
    ParsedMail,
    decode_bytes,
    decode_subject,
    header_block_size,
    parse_mail,
    parse_recipient,
    parse_v2_body,
    resolve_charset,
)

CAP = 64 * 1024
RU = "Привет, мир! Ёжик"


def parse(raw: bytes, legacy: str = "windows-1251", cap: int = CAP) -> ParsedMail:
    return parse_mail(raw, legacy_charset=legacy, max_header_bytes=cap)


def plain_mail(body: bytes, *, headers: str = "", subject: bytes = b"79161234567") -> bytes:
    head = (
        b"From: a@example.com\r\nTo: login@sms.example\r\nSubject: " + subject + b"\r\n"
        + headers.encode()
    )
    return head + b"\r\n" + body


# --- parse_recipient ----------------------------------------------------------------------


def test_recipient_login_only() -> None:
    rcpt = parse_recipient("login@corp.example")
    assert (rcpt.login, rcpt.phone, rcpt.domain, rcpt.is_v2) == (
        "login", None, "corp.example", False
    )


def test_recipient_phone_dot_login() -> None:
    rcpt = parse_recipient("78000000001.yourlogin@corp.smsmail.ru")
    assert rcpt.phone == "78000000001"
    assert rcpt.login == "yourlogin"
    assert not rcpt.is_v2


def test_recipient_plus_phone_dot_login() -> None:
    rcpt = parse_recipient("+79161234567.login@d.example")
    assert (rcpt.phone, rcpt.login) == ("+79161234567", "login")


def test_recipient_angle_brackets_and_domain_case() -> None:
    rcpt = parse_recipient("<79161234567.Login@SMS.Example>")
    assert (rcpt.phone, rcpt.login, rcpt.domain) == ("79161234567", "Login", "sms.example")


@pytest.mark.parametrize("address", ["multi@smtp2.smsmail.ru", "MULTI@d.example", "Multi@x"])
def test_recipient_multi_is_v2(address: str) -> None:
    rcpt = parse_recipient(address)
    assert rcpt.is_v2
    assert rcpt.login is None and rcpt.phone is None


@pytest.mark.parametrize(
    ("address", "login"),
    [("john.doe@d.example", "john.doe"), ("a.b.c@d", "a.b.c"), ("1234.login@d", "1234.login"),
     ("79161234567x.login@d", "79161234567x.login")],
)
def test_recipient_dotted_login_without_phone_is_a_login(address: str, login: str) -> None:
    rcpt = parse_recipient(address)
    assert rcpt.login == login
    assert rcpt.phone is None


@pytest.mark.parametrize("address", ["", "login", "@d.example", "login@", "<>", "   "])
def test_recipient_bad_addresses(address: str) -> None:
    with pytest.raises(IntakeError) as info:
        parse_recipient(address)
    assert info.value.smtp_code == 550
    assert info.value.enhanced == "5.1.3"


# --- parse_mail: bodies -------------------------------------------------------------------


def test_simple_plain_mail() -> None:
    raw = plain_mail(b"You need to pay an invoice of $17.65.\r\n", headers="Message-ID: <a@b>\r\n")
    mail = parse(raw)
    assert mail.subject == "79161234567"
    assert mail.text == "You need to pay an invoice of $17.65."
    assert mail.message_id == "<a@b>"
    assert mail.html_only is False


def test_message_id_absent_is_none() -> None:
    assert parse(plain_mail(b"hi")).message_id is None


def test_multipart_alternative_prefers_plain() -> None:
    msg = EmailMessage()
    msg["Subject"] = "79161234567"
    msg.set_content("plain text")
    msg.add_alternative("<p>html <b>text</b></p>", subtype="html")
    mail = parse(msg.as_bytes())
    assert mail.text == "plain text"
    assert mail.html_only is False


def test_multipart_alternative_html_first_still_prefers_plain() -> None:
    raw = (
        b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=BB\r\n"
        b"\r\n--BB\r\nContent-Type: text/html\r\n\r\n<p>html</p>\r\n"
        b"--BB\r\nContent-Type: text/plain\r\n\r\nplain\r\n--BB--\r\n"
    )
    assert parse(raw).text == "plain"


def test_html_only_is_converted() -> None:
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content(
        "<html><head><style>b{}</style></head><body><p>Line&nbsp;one</p>"
        "<script>evil()</script><p>Tom &amp; Jerry</p></body></html>",
        subtype="html",
    )
    mail = parse(msg.as_bytes())
    assert mail.html_only is True
    assert mail.text == "Line\u00a0one\n\nTom & Jerry"
    assert "evil" not in mail.text and "<" not in mail.text


def test_empty_plain_falls_back_to_html() -> None:
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("   \n")
    msg.add_alternative("<p>from html</p>", subtype="html")
    mail = parse(msg.as_bytes())
    assert (mail.text, mail.html_only) == ("from html", True)


@pytest.mark.parametrize("cte", ["quoted-printable", "base64"])
def test_transfer_encoded_utf8_body(cte: str) -> None:
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content(RU + "\n" + "long line " * 20, charset="utf-8", cte=cte)
    assert f"Content-Transfer-Encoding: {cte}" in msg.as_string()
    assert parse(msg.as_bytes()).text == RU + "\n" + ("long line " * 20).rstrip()


def test_quoted_printable_soft_breaks() -> None:
    raw = plain_mail(
        b"abc=\r\ndef =D0=96\r\n",
        headers="Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: quoted-printable\r\n",
    )
    assert parse(raw).text == "abcdef Ж"


@pytest.mark.parametrize(
    ("label", "codec"),
    [
        ("utf-8", "utf-8"),
        ("UTF-8", "utf-8"),
        ("windows-1251", "cp1251"),
        ("x-cp1251", "cp1251"),
        ("win-1251", "cp1251"),
        ("koi8-r", "koi8_r"),
        ("KOI8R", "koi8_r"),
        ("cp866", "cp866"),
        ("cp-866", "cp866"),
        ("ibm-866", "cp866"),
        ('"x-cp866"', "cp866"),
    ],
)
@pytest.mark.parametrize("cte", ["8bit", "base64"])
def test_body_charsets_and_aliases(label: str, codec: str, cte: str) -> None:
    data = RU.encode(codec)
    if cte == "base64":
        data = base64.encodebytes(data).replace(b"\n", b"\r\n")
    raw = plain_mail(
        data,
        headers=f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset={label}\r\n"
        f"Content-Transfer-Encoding: {cte}\r\n",
    )
    # legacy charset deliberately differs, so only the declared label can give this result
    assert parse(raw, legacy="iso-8859-1").text == RU


def test_undeclared_8bit_body_utf8_then_legacy() -> None:
    assert parse(plain_mail(RU.encode("utf-8"))).text == RU
    assert parse(plain_mail(RU.encode("cp1251")), legacy="windows-1251").text == RU
    assert parse(plain_mail(RU.encode("koi8_r")), legacy="koi8-r").text == RU


def test_unknown_declared_charset_falls_back() -> None:
    raw = plain_mail(RU.encode("cp1251"), headers="Content-Type: text/plain; charset=x-bogus\r\n")
    assert parse(raw, legacy="windows-1251").text == RU


@pytest.mark.parametrize(
    ("label", "codec"),
    [("x-cp1251", "cp1251"), ("cp-866", "cp866"), ("koi8r", "koi8_r"), ("utf8", "utf-8"),
     ("Windows-1251", "cp1251"), ("x-mac-cyrillic", "mac_cyrillic")],
)
def test_resolve_charset(label: str, codec: str) -> None:
    assert resolve_charset(label) == codecs.lookup(codec).name


@pytest.mark.parametrize("label", [None, "", "x-bogus", "ebcdic-klingon"])
def test_resolve_charset_unknown(label: str | None) -> None:
    assert resolve_charset(label) is None


def test_decode_bytes_wrong_declared_charset_falls_back() -> None:
    assert decode_bytes(RU.encode("cp1251"), "us-ascii", "windows-1251") == RU
    assert decode_bytes(RU.encode("utf-8"), "us-ascii", "windows-1251") == RU


def test_attachments_are_ignored() -> None:
    msg = EmailMessage()
    msg["Subject"] = "x"
    msg.set_content("the body")
    msg.add_attachment("attached text", filename="notes.txt")
    msg.add_attachment(b"\x00\x01binary", maintype="application", subtype="octet-stream",
                       filename="a.bin")
    assert parse(msg.as_bytes()).text == "the body"


def test_text_attachment_before_body_is_ignored() -> None:
    raw = (
        b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
        b"--BB\r\nContent-Type: text/plain\r\nContent-Disposition: attachment\r\n\r\nfile\r\n"
        b"--BB\r\nContent-Type: text/plain\r\n\r\nreal body\r\n--BB--\r\n"
    )
    assert parse(raw).text == "real body"


def test_forwarded_message_attachment_is_ignored() -> None:
    outer = EmailMessage()
    outer["Subject"] = "79161234567"
    outer.set_content("<p>main html</p>", subtype="html")
    inner = EmailMessage()
    inner["Subject"] = "fwd"
    inner.set_content("forwarded secret")
    outer.add_attachment(inner)
    mail = parse(outer.as_bytes())
    assert "forwarded secret" not in mail.text
    assert mail.text == "main html"


@pytest.mark.parametrize("eol", [b"\r\n", b"\n", b"\r"])
def test_line_endings_normalised(eol: bytes) -> None:
    raw = b"Subject: x" + eol + eol + eol.join([b"", b"", b"one", b"two", b"", b"three", b"", b""])
    assert parse(raw).text == "one\ntwo\n\nthree"


def test_leading_trailing_blank_lines_and_spaces_trimmed() -> None:
    assert parse(plain_mail(b"\r\n  \r\n\thello  \r\nworld \r\n\r\n \r\n")).text == "\thello\nworld"


def test_control_characters_removed_from_body() -> None:
    assert parse(plain_mail(b"a\x00b\x07c\x1bd\x7fe\r\nf\tg")).text == "abcde\nf\tg"


def test_no_body_gives_empty_text() -> None:
    assert parse(b"Subject: 79161234567\r\n\r\n").text == ""
    assert parse(b"Subject: 79161234567\r\n").text == ""


@pytest.mark.parametrize(
    "raw",
    [
        # multipart without the closing boundary
        b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
        b"--BB\r\nContent-Type: text/plain\r\n\r\nunterminated\r\n",
        # multipart without a boundary parameter
        b"Subject: x\r\nContent-Type: multipart/mixed\r\n\r\nno boundary here\r\n",
        # boundary never used
        b"Subject: x\r\nContent-Type: multipart/alternative; boundary=ZZ\r\n\r\nbody\r\n",
        # bad quoted-printable
        b"Subject: x\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=",
        b"",
    ],
)
def test_broken_mime_does_not_crash(raw: bytes) -> None:
    mail = parse(raw)
    assert isinstance(mail.text, str)
    assert isinstance(mail.subject, str)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # bad base64: characters outside the alphabet, decoded by the email package into bytes
        # no charset makes sense of
        (b"Subject: x\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
         b"!!!not*base64@@@=\r\n", "alphabet"),
        # truncated base64: a length no base64 has, returned by the email package undecoded
        (b"Subject: x\r\nContent-Transfer-Encoding: base64\r\n\r\n0J/RgNC4\r\n0", "length"),
        # garbage header lines: the email package would take the rest of the block as text
        (b"\x00\xff: \xfe\r\nnot a header\r\n\r\nbody", "Header line 1"),
        (b"Subject: 79161234567\r\nX-Bad\x00Name: v\r\n\r\nbody", "Header line 2"),
    ],
)
def test_undecodable_body_or_broken_header_block_is_refused(raw: bytes, reason: str) -> None:
    with pytest.raises(IntakeError) as refused:
        parse(raw)
    assert (refused.value.smtp_code, refused.value.enhanced) == (550, "5.6.0")
    assert reason in refused.value.text


@pytest.mark.parametrize(
    "body",
    [
        b"0J/RgNC4 \r\n0LLQtdGC\t\r\n",  # blanks at line ends: white space, skipped
        b"0J/RgNC40LLQtdGC",  # the padding is complete
    ],
)
def test_base64_with_white_space_is_decoded(body: bytes) -> None:
    raw = (b"Subject: x\r\nContent-Type: text/plain; charset=utf-8\r\n"
           b"Content-Transfer-Encoding: base64\r\n\r\n" + body)
    assert parse(raw).text == "Привет"


def test_a_broken_alternative_that_is_not_used_does_not_refuse_the_mail() -> None:
    raw = (b"Subject: x\r\nMIME-Version: 1.0\r\n"
           b'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n'
           b"Content-Type: text/plain; charset=utf-8\r\n\r\nplain text\r\n--b\r\n"
           b"Content-Type: text/html\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           b"0J/RgNC40LLQtdGCX\r\n--b--\r\n")
    assert parse(raw).text == "plain text"


def test_a_mail_without_an_empty_line_is_read_as_headers_then_text() -> None:
    # Legacy scripts omit the empty line: with none in the mail at all, the first line that
    # is not a header starts the text, as before.
    assert parse(b"Subject: 79161234567\r\nDisk full on db1\r\n").text == "Disk full on db1"


def test_missing_end_boundary_still_yields_text() -> None:
    raw = (
        b"Subject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=BB\r\n\r\n"
        b"--BB\r\nContent-Type: text/plain\r\n\r\nunterminated\r\n"
    )
    assert parse(raw).text == "unterminated"


# --- Subjects -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        "=?utf-8?B?" + base64.b64encode(RU.encode()).decode() + "?=",
        "=?UTF-8?b?" + base64.b64encode(RU.encode()).decode() + "?=",
        "=?windows-1251?B?" + base64.b64encode(RU.encode("cp1251")).decode() + "?=",
        "=?koi8-r?B?" + base64.b64encode(RU.encode("koi8_r")).decode() + "?=",
        "=?utf-8?Q?=D0=9F=D1=80=D0=B8=D0=B2=D0=B5=D1=82,_=D0=BC=D0=B8=D1=80!_"
        "=D0=81=D0=B6=D0=B8=D0=BA?=",
        # split over two encoded-words and a folded line
        "=?utf-8?B?" + base64.b64encode("Привет, ".encode()).decode() + "?=\r\n =?utf-8?Q?"
        "=D0=BC=D0=B8=D1=80!_=D0=81=D0=B6=D0=B8=D0=BA?=",
    ],
)
def test_rfc2047_subjects(header: str) -> None:
    raw = b"Subject: " + header.encode() + b"\r\n\r\nbody"
    assert parse(raw, legacy="iso-8859-1").subject == RU


def test_email_message_subject_roundtrip() -> None:
    msg = EmailMessage()
    msg["Subject"] = "Тест " * 30  # long enough to be folded into several encoded-words
    msg.set_content("body")
    assert parse(msg.as_bytes()).subject == ("Тест " * 30).strip()


def test_plain_ascii_subject_whitespace_collapsed() -> None:
    raw = b"Subject:   79161234567,\r\n\t79031234567  \r\n\r\nbody"
    assert parse(raw).subject == "79161234567, 79031234567"


def test_missing_subject_is_empty() -> None:
    assert parse(b"From: a@b\r\n\r\nbody").subject == ""


@pytest.mark.parametrize(
    ("legacy", "codec"), [("windows-1251", "cp1251"), ("koi8-r", "koi8_r"), ("cp866", "cp866")]
)
def test_raw_8bit_subject_uses_legacy_charset_not_replacement_char(legacy: str, codec: str) -> None:
    raw = b"Subject: " + "Тема письма".encode(codec) + b"\r\n\r\nbody"
    subject = parse(raw, legacy=legacy).subject
    assert subject == "Тема письма"
    assert "\ufffd" not in subject


def test_raw_utf8_subject() -> None:
    raw = b"Subject: " + RU.encode() + b"\r\n\r\nbody"
    assert parse(raw, legacy="windows-1251").subject == RU


def test_raw_8bit_subject_mixed_with_encoded_word() -> None:
    raw = "Subject: Привет =?utf-8?B?0LzQuNGA?=\r\n\r\nbody".encode()
    assert parse(raw).subject == "Привет мир"


@pytest.mark.parametrize(
    "encoded",
    [
        "=?utf-8?Q?hi=0D=0ABcc:_x@evil.example?=",
        "=?utf-8?B?" + base64.b64encode(b"hi\r\nBcc: x@evil.example").decode() + "?=",
        "=?utf-8?Q?hi=0ABcc:_x=0D?=",
        "=?utf-8?Q?hi=E2=80=A8Bcc:_x=C2=85y=00z?=",
    ],
)
def test_encoded_crlf_in_subject_is_neutralised(encoded: str) -> None:
    raw = b"Subject: " + encoded.encode() + b"\r\n\r\nbody"
    subject = parse(raw).subject
    assert "\r" not in subject and "\n" not in subject
    assert "\u2028" not in subject and "\x85" not in subject and "\x00" not in subject
    assert "Bcc: x" in subject  # kept as text on one line, not turned into a header


def test_decode_subject_directly() -> None:
    assert decode_subject(b"X: 1\r\nSUBJECT: =?utf-8?Q?=D0=96?=\r\n", "cp1251") == "Ж"
    assert decode_subject(b"X: 1", "cp1251") == ""


def test_malformed_base64_encoded_word_does_not_crash() -> None:
    mail = parse(b"Subject: =?utf-8?b?A?=\r\n\r\nbody")
    assert mail.text == "body"


# --- the header cap (the email package parses headers in quadratic time) ----------------


def test_huge_encoded_subject_refused_before_parsing() -> None:
    subject = " ".join(["=?utf-8?q?a?="] * 40_000)
    raw = ("Subject: " + subject + "\r\n\r\nbody").encode()
    assert len(raw) > 500_000
    started = time.perf_counter()
    with pytest.raises(IntakeError) as info:
        parse(raw, cap=CAP)
    elapsed = time.perf_counter() - started
    assert info.value.smtp_code == 552
    assert info.value.enhanced == "5.3.4"
    assert elapsed < 2.0


def test_huge_subject_folded_with_lf_only_also_capped() -> None:
    raw = ("Subject: " + "\n ".join(["=?utf-8?q?a?="] * 40_000) + "\n\nbody").encode()
    started = time.perf_counter()
    with pytest.raises(IntakeError) as info:
        parse(raw)
    assert info.value.smtp_code == 552
    assert time.perf_counter() - started < 2.0


def test_huge_headers_without_body_capped() -> None:
    raw = b"Subject: x\r\n" + b"X-Pad: " + b"a" * (CAP + 10)
    with pytest.raises(IntakeError) as info:
        parse(raw)
    assert info.value.smtp_code == 552


def test_headers_just_under_cap_accepted() -> None:
    raw = b"Subject: 79161234567\r\nX-Pad: " + b"a" * 1000 + b"\r\n\r\nbody"
    size = header_block_size(raw)
    assert parse(raw, cap=size).text == "body"
    with pytest.raises(IntakeError):
        parse(raw, cap=size - 1)


def test_large_body_is_not_counted_as_header() -> None:
    raw = b"Subject: x\r\n\r\n" + b"x" * (CAP * 2)
    assert len(parse(raw).text) == CAP * 2


def test_header_block_size() -> None:
    assert header_block_size(b"A: b\r\n\r\nbody") == 4
    assert header_block_size(b"A: b\n\nbody") == 4
    assert header_block_size(b"A: b") == 4


def test_header_block_size_takes_the_first_blank_line() -> None:
    raw = b"Subject: x\n\n" + b"x" * (CAP + 10) + b"\r\n\r\nmore"
    assert header_block_size(raw) == 10
    assert parse(raw).text.startswith("xxx")


# --- parse_v2_body ------------------------------------------------------------------------

SPEC_EXAMPLE = """\
login: yourlogin

password: yourpass

phones: 78000000001

message: You need to pay an invoice of $17.65. For inquiries, call 1234567.

originator: MyCompany
"""


def test_v2_spec_example() -> None:
    assert parse_v2_body(SPEC_EXAMPLE) == {
        "login": "yourlogin",
        "password": "yourpass",
        "phones": "78000000001",
        "message": "You need to pay an invoice of $17.65. For inquiries, call 1234567.",
        "originator": "MyCompany",
    }


def test_v2_spec_example_with_reply_to_email_and_crlf() -> None:
    body = (SPEC_EXAMPLE + "\nreply_to_email: 1\n").replace("\n", "\r\n")
    fields = parse_v2_body(body)
    assert fields["reply_to_email"] == "1"
    assert fields["originator"] == "MyCompany"
    assert len(fields) == 6


def test_v2_multi_line_value() -> None:
    body = "login: a\n\npassword: b\n\nmessage: line one\nline two\n  indented three\n\nphones: 1"
    fields = parse_v2_body(body)
    assert fields["message"] == "line one\nline two\n  indented three"
    assert fields["phones"] == "1"


def test_v2_several_blank_lines_and_whitespace_lines_separate() -> None:
    body = "\n\n  \nlogin: a\n\n\n\n \t \npassword: b\n\n"
    assert parse_v2_body(body) == {"login": "a", "password": "b"}


def test_v2_field_names_case_insensitive_and_spacing() -> None:
    fields = parse_v2_body("LOGIN:a\n\nPassword :  b c  \n\nphones:\t79161234567")
    assert fields == {"login": "a", "password": "b c", "phones": "79161234567"}


def test_v2_value_may_contain_colons() -> None:
    assert parse_v2_body("message: time: 10:30\nurl: http://x")["message"] == (
        "time: 10:30\nurl: http://x"
    )


def test_v2_empty_value_and_empty_body() -> None:
    assert parse_v2_body("message:") == {"message": ""}
    assert parse_v2_body("") == {}
    assert parse_v2_body("\r\n\r\n") == {}


def _refused(body: str) -> IntakeError:
    with pytest.raises(IntakeError) as info:
        parse_v2_body(body)
    return info.value


@pytest.mark.parametrize("field", ["login", "phones", "message", "PASSWORD"])
def test_v2_duplicate_field_is_442(field: str) -> None:
    body = f"login: a\n\npassword: b\n\nphones: 1\n\nmessage: m\n\n{field}: again"
    assert _refused(body).api_code == 442


@pytest.mark.parametrize("name", ["bcc", "to", "subject", "x_field", "loginx"])
def test_v2_unknown_field_is_441(name: str) -> None:
    assert _refused(f"login: a\n\n{name}: value").api_code == 441


@pytest.mark.parametrize(
    "block", ["just text", "- login: a", "log in: a", "login a", "login-name: a", ": x"]
)
def test_v2_block_not_starting_with_field_is_441(block: str) -> None:
    assert _refused(f"login: a\n\n{block}").api_code == 441


@pytest.mark.parametrize("char", ["\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x0b",
                                  "\x0c", "\x00", "\x7f"])
def test_v2_line_separator_lookalikes_are_refused_not_split(char: str) -> None:
    # str.splitlines() would split here and make "phones: 79990000000" a field of its own.
    body = f"login: a\n\npassword: b\n\nmessage: hi{char}{char}phones: 79990000000"
    err = _refused(body)
    assert err.api_code == 441


def test_v2_bare_cr_is_refused() -> None:
    assert _refused("login: a\r\rphones: 79990000000").api_code == 441
    assert _refused("login: a\n\nmessage: x\ry").api_code == 441


def test_v2_smuggled_smtp_block_is_refused() -> None:
    body = (
        "login: a\r\n\r\npassword: b\r\n\r\nphones: 79161234567\r\n\r\nmessage: hi\r\n\r\n"
        ".\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<multi@sms.example>\r\nDATA\r\n\r\n"
        "originator: BANK\r\n"
    )
    assert _refused(body).api_code == 441


def test_v2_smuggled_block_starting_with_mail_from_is_refused() -> None:
    body = (
        "login: a\r\n\r\nmessage: hi\r\n\r\n"
        "MAIL FROM:<evil@example.com>\r\nRCPT TO:<multi@sms.example>\r\nDATA\r\n"
    )
    assert _refused(body).api_code == 441


def test_v2_smuggled_second_mail_with_its_own_fields_is_refused() -> None:
    # <LF>.<CR><LF> end-of-data arrives inside one body with aiosmtpd 1.4.6
    body = (
        "login: victim\r\n\r\npassword: pw\r\n\r\nphones: 79161234567\r\n\r\nmessage: hi\n"
        ".\r\nMAIL FROM:<evil@example.com>\r\nRCPT TO:<multi@sms.example>\r\nDATA\r\n\r\n"
        "login: victim\r\n\r\npassword: pw\r\n\r\nphones: 79990000000\r\n\r\nmessage: evil\r\n"
    )
    err = _refused(body)
    assert err.api_code in (441, 442)
