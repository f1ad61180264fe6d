"""Parsed mail → send requests (002 line 1768 SMTP v1, line 1811 SMTP v2, API codes line 1988)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import SecretStr

from bridge.errors import IntakeError
from bridge.parsing.mail import ParsedMail, parse_recipient
from bridge.parsing.requests import (
    PROVIDER_TZ,
    authenticate_v2,
    build_v1_requests,
    build_v2_requests,
    parse_start_date,
)
from bridge.settings import AccountSettings, Settings, load_settings

NOW = 1_750_000_000.0  # a fixed "now": no clock in these tests
PHONE = "79161234567"
PHONE2 = "79031234567"


def account(**overrides: Any) -> AccountSettings:
    return AccountSettings(password=SecretStr("secret"), **overrides)


def mail(text: str = "Hello", subject: str = "") -> ParsedMail:
    return ParsedMail(subject=subject, text=text, message_id=None)


def v1(address: str, text: str = "Hello", subject: str = "", **acct: Any) -> list[Any]:
    rcpt = parse_recipient(address)
    return build_v1_requests("login", account(**acct), rcpt, mail(text, subject))


def v1_error(address: str, text: str = "Hello", subject: str = "", **acct: Any) -> IntakeError:
    with pytest.raises(IntakeError) as info:
        v1(address, text, subject, **acct)
    return info.value


def provider_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, PROVIDER_TZ).strftime("%Y-%m-%d %H:%M:%S")


# --- v1 -----------------------------------------------------------------------------------


def test_v1_phone_in_subject() -> None:
    (req,) = v1("login@d", "You need to pay an invoice of $17.65.", "78000000001")
    assert req.phone == "78000000001"
    assert req.text == "You need to pay an invoice of $17.65."
    assert req.account == "login"
    assert req.upstream == "dryrun"
    assert (req.parts, req.encoding) == (1, "gsm7")


def test_v1_phone_in_address_ignores_subject() -> None:
    (req,) = v1(f"{PHONE}.login@d", "Hi", "ne imeyet znacheniya")
    assert req.phone == PHONE


def test_v1_phone_in_address_ignores_subject_with_another_number() -> None:
    (req,) = v1(f"+{PHONE}.login@d", "Hi", PHONE2)
    assert req.phone == PHONE


def test_v1_bad_phone_in_address_is_428() -> None:
    assert v1_error("12345.login@d", "Hi").api_code == 428


def test_v1_several_numbers_in_subject() -> None:
    reqs = v1("login@d", "Hi", f"{PHONE}, {PHONE2}; 375292134567")
    assert [r.phone for r in reqs] == [PHONE, PHONE2, "375292134567"]
    assert all(r.text == "Hi" for r in reqs)


def test_v1_duplicates_collapsed() -> None:
    reqs = v1("login@d", "Hi", f"{PHONE}, +7 (916) 123-45-67; 8 916 123 45 67, {PHONE2}")
    assert [r.phone for r in reqs] == [PHONE, PHONE2]


@pytest.mark.parametrize("subject", ["", "   "])
def test_v1_no_phone_is_403(subject: str) -> None:
    err = v1_error("login@d", "Hi", subject)
    assert err.api_code == 403


@pytest.mark.parametrize("subject", [",", " ; , "])
def test_v1_subject_of_separators_is_403(subject: str) -> None:
    assert v1_error("login@d", "Hi", subject).api_code == 403


def test_v1_junk_subject_is_428() -> None:
    assert v1_error("login@d", "Hi", "call me").api_code == 428


@pytest.mark.parametrize("text", ["", "   ", "\n\n", " \n \t\n"])
def test_v1_no_text_is_405(text: str) -> None:
    assert v1_error("login@d", text, PHONE).api_code == 405


def test_v1_max_parts_exceeded_is_420_and_exact_limit_accepted() -> None:
    (req,) = v1("login@d", "a" * 306, PHONE, max_parts=2)
    assert req.parts == 2
    assert req.options.max_parts == 2
    err = v1_error("login@d", "a" * 307, PHONE, max_parts=2)
    assert err.api_code == 420
    assert err.smtp_code == 550


def test_v1_ucs2_max_parts() -> None:
    assert v1("login@d", "ж" * 70, PHONE, max_parts=1)[0].encoding == "ucs2"
    assert v1_error("login@d", "ж" * 71, PHONE, max_parts=1).api_code == 420


def test_v1_allowed_prefixes() -> None:
    (req,) = v1("login@d", "Hi", PHONE, allowed_prefixes=["7916", "375"])
    assert req.phone == PHONE
    assert v1_error("login@d", "Hi", PHONE2, allowed_prefixes=["7916", "375"]).api_code == 419


def test_v1_one_disallowed_number_refuses_the_whole_mail() -> None:
    err = v1_error("login@d", "Hi", f"{PHONE}, {PHONE2}", allowed_prefixes=["7916"])
    assert err.api_code == 419


def test_v1_transliterate_account() -> None:
    (req,) = v1("login@d", "Привет, мир", PHONE, encoding="transliterate")
    assert req.text == "Privet, mir"
    assert req.options.transliterate is True
    assert req.encoding == "gsm7"


def test_v1_unicode_account_keeps_cyrillic() -> None:
    (req,) = v1("login@d", "Привет, мир", PHONE)
    assert req.text == "Привет, мир"
    assert (req.encoding, req.options.transliterate) == ("ucs2", False)


def test_v1_transliteration_counts_segments_after_transliterating() -> None:
    # 80 Cyrillic letters: 2 UCS-2 parts, but 1 GSM part once transliterated
    (req,) = v1("login@d", "а" * 80, PHONE, encoding="transliterate", max_parts=1)
    assert req.parts == 1


def test_v1_account_originator_and_fallbacks() -> None:
    (req,) = v1("login@d", "Hi", PHONE, originator="MyCompany",
                fallback_upstreams=["backup"])
    assert req.options.originator == "MyCompany"
    assert req.options.fallbacks == ("backup",)


def test_v1_account_originator_too_long_is_421() -> None:
    assert v1_error("login@d", "Hi", PHONE, originator="MyCompanyLtd").api_code == 421


def test_v1_trim_signature_and_quoted() -> None:
    text = "Meet at 10\n\n-- \nJohn\n\nOn Mon, John wrote:\n> old"
    (req,) = v1("login@d", text, PHONE, trim_signature=True, trim_quoted=True)
    assert req.text == "Meet at 10"
    (req,) = v1("login@d", text, PHONE)
    assert req.text == text


def test_v1_only_signature_is_405() -> None:
    assert v1_error("login@d", "-- \nJohn", PHONE, trim_signature=True).api_code == 405


# --- v2: authenticate_v2 ------------------------------------------------------------------


@pytest.fixture(scope="module")
def settings() -> Settings:
    return load_settings(
        None,
        upstreams={"dryrun": {"kind": "dryrun"}},
        accounts={
            "Alice": {"password": "s3cret", "upstream": "dryrun"},
            "bob": {"password": "пароль", "upstream": "dryrun"},
        },
    )


def auth_error(settings: Settings, fields: dict[str, str]) -> IntakeError:
    with pytest.raises(IntakeError) as info:
        authenticate_v2(settings, fields)
    return info.value


def test_authenticate_ok_with_canonical_login(settings: Settings) -> None:
    login, acct = authenticate_v2(settings, {"login": "alice", "password": "s3cret"})
    assert login == "Alice"
    assert acct.password.get_secret_value() == "s3cret"


def test_authenticate_non_ascii_password(settings: Settings) -> None:
    login, _ = authenticate_v2(settings, {"login": "bob", "password": "пароль"})
    assert login == "bob"


@pytest.mark.parametrize("fields", [{}, {"login": ""}, {"login": "  ", "password": "x"}])
def test_authenticate_login_missing_is_401(settings: Settings, fields: dict[str, str]) -> None:
    assert auth_error(settings, fields).api_code == 401


@pytest.mark.parametrize("fields", [{"login": "alice"}, {"login": "alice", "password": ""}])
def test_authenticate_password_missing_is_402(settings: Settings, fields: dict[str, str]) -> None:
    assert auth_error(settings, fields).api_code == 402


@pytest.mark.parametrize(
    "fields",
    [
        {"login": "alice", "password": "wrong"},
        {"login": "alice", "password": "S3CRET"},
        {"login": "alice", "password": "s3cret "},
        {"login": "nobody", "password": "s3cret"},
        {"login": "alice", "password": "пароль"},  # non-ASCII: must not raise TypeError
        {"login": "bob", "password": "парол"},
        {"login": "nobody", "password": "\u0000"},
        {"login": "multi", "password": "x"},
    ],
)
def test_authenticate_wrong_is_411(settings: Settings, fields: dict[str, str]) -> None:
    err = auth_error(settings, fields)
    assert err.api_code == 411
    assert err.enhanced == "5.7.8"


def test_authenticate_wrong_login_and_wrong_password_look_the_same(settings: Settings) -> None:
    a = auth_error(settings, {"login": "nobody", "password": "x"})
    b = auth_error(settings, {"login": "alice", "password": "x"})
    assert a.smtp_reply() == b.smtp_reply()


# --- v2: build_v2_requests ----------------------------------------------------------------


def v2(fields: dict[str, str], **acct: Any) -> Any:
    return build_v2_requests(fields, "login", account(**acct), NOW)


def v2_error(fields: dict[str, str], **acct: Any) -> IntakeError:
    with pytest.raises(IntakeError) as info:
        v2(fields, **acct)
    return info.value


BASE = {"phones": PHONE, "message": "Hello"}


def test_v2_basic() -> None:
    out = v2({**BASE, "originator": "MyCompany"})
    assert out.login == "login"
    (req,) = out.requests
    assert (req.phone, req.text, req.options.originator) == (PHONE, "Hello", "MyCompany")
    assert out.reply_to_email is False and out.want_sms_ids is False
    assert out.skipped_phones == []


def test_v2_several_phones() -> None:
    out = v2({"phones": f"{PHONE}, +375 29 213-45-67\n8 903 123 45 67", "message": "Hi"})
    assert [r.phone for r in out.requests] == [PHONE, "375292134567", PHONE2]


@pytest.mark.parametrize("phones", [None, "", "  \n "])
def test_v2_no_phones_is_403(phones: str | None) -> None:
    fields = {"message": "Hi"} if phones is None else {"phones": phones, "message": "Hi"}
    assert v2_error(fields).api_code == 403


@pytest.mark.parametrize("message", [None, "", "  \n "])
def test_v2_no_message_is_405(message: str | None) -> None:
    fields = {"phones": PHONE} if message is None else {"phones": PHONE, "message": message}
    assert v2_error(fields).api_code == 405


def test_v2_bad_phone_is_428() -> None:
    assert v2_error({"phones": f"{PHONE}, 123", "message": "Hi"}).api_code == 428


def test_v2_ignore_phone_format_skips_bad_numbers() -> None:
    out = v2({"phones": f"{PHONE}, 123, junk,{PHONE2}", "message": "Hi",
              "ignore_phone_format": "1"})
    assert [r.phone for r in out.requests] == [PHONE, PHONE2]
    assert out.skipped_phones == ["123", "junk"]


def test_v2_ignore_phone_format_all_bad_is_407() -> None:
    err = v2_error({"phones": "123, junk", "message": "Hi", "ignore_phone_format": "1"})
    assert err.api_code == 407


def test_v2_individual_messages_newline_delimited() -> None:
    out = v2({
        "individual_messages": "1",
        "phones": f"{PHONE} Hello Ann\n{PHONE2} Hi  Bob, how are you?\n\n",
    })
    assert [(r.phone, r.text) for r in out.requests] == [
        (PHONE, "Hello Ann"),
        (PHONE2, "Hi  Bob, how are you?"),
    ]


def test_v2_individual_messages_custom_delimiter() -> None:
    out = v2({
        "individual_messages": "1",
        "delimiter": "|",
        "phones": f"{PHONE} line one\nline two|{PHONE2} second",
    })
    assert [(r.phone, r.text) for r in out.requests] == [
        (PHONE, "line one\nline two"),
        (PHONE2, "second"),
    ]


def test_v2_individual_messages_with_push_id() -> None:
    out = v2({
        "individual_messages": "1",
        "with_push_id": "1",
        "phones": f"id-1:{PHONE} first\nid-2:{PHONE2} second",
    })
    assert [(r.options.push_id, r.phone, r.text) for r in out.requests] == [
        ("id-1", PHONE, "first"),
        ("id-2", PHONE2, "second"),
    ]


def test_v2_individual_messages_with_push_id_missing_colon_is_422() -> None:
    err = v2_error({"individual_messages": "1", "with_push_id": "1", "phones": f"{PHONE} hi"})
    assert err.api_code == 422


def test_v2_individual_messages_empty_is_407() -> None:
    assert v2_error({"individual_messages": "1", "phones": "\n\n"}).api_code == 407


def test_v2_individual_message_without_text_is_423() -> None:
    err = v2_error({"individual_messages": "1", "phones": f"{PHONE}\n{PHONE2} hi"})
    assert err.api_code == 423


def test_v2_individual_message_without_text_is_refused() -> None:
    err = v2_error({"individual_messages": "1", "phones": f"{PHONE}\n{PHONE2} hi"})
    assert err.api_code in (405, 423)


@pytest.mark.parametrize(
    "value", ["2030-01-01", "01.01.2030 10:00:00", "2030-13-01 00:00:00", "2030-01-01T10:00:00",
              "tomorrow", "2030-01-01 25:00:00"],
)
def test_v2_start_date_bad_format_is_416(value: str) -> None:
    assert v2_error({**BASE, "start_date": value}).api_code == 416


def test_v2_start_date_in_the_past_is_417() -> None:
    assert v2_error({**BASE, "start_date": provider_time(NOW - 3600)}).api_code == 417


def test_v2_start_date_in_the_future_is_kept_in_utc_plus_3() -> None:
    value = provider_time(NOW + 3600)
    (req,) = v2({**BASE, "start_date": value}).requests
    assert req.options.not_before == NOW + 3600
    midnight_utc = datetime(2030, 1, 1, tzinfo=UTC).timestamp()
    assert parse_start_date("2030-01-01 03:00:00", NOW) == midnight_utc
    assert parse_start_date("", NOW) is None


def test_v2_start_date_just_now_accepted() -> None:
    (req,) = v2({**BASE, "start_date": provider_time(NOW - 60)}).requests
    assert req.options.not_before == NOW - 60


def test_v2_want_sms_ids_with_future_start_date_is_418() -> None:
    err = v2_error({**BASE, "want_sms_ids": "1", "start_date": provider_time(NOW + 3600)})
    assert err.api_code == 418


def test_v2_want_sms_ids_without_start_date() -> None:
    assert v2({**BASE, "want_sms_ids": "1"}).want_sms_ids is True


def test_v2_rus_0_transliterates() -> None:
    (req,) = v2({"phones": PHONE, "message": "Привет", "rus": "0"}).requests
    assert (req.text, req.options.transliterate, req.encoding) == ("Privet", True, "gsm7")


@pytest.mark.parametrize("rus", ["1", "5"])
def test_v2_rus_1_or_5_keeps_unicode_even_on_transliterate_account(rus: str) -> None:
    (req,) = v2({"phones": PHONE, "message": "Привет", "rus": rus},
                encoding="transliterate").requests
    assert (req.text, req.encoding) == ("Привет", "ucs2")


def test_v2_without_rus_follows_account() -> None:
    (req,) = v2({"phones": PHONE, "message": "Привет"}, encoding="transliterate").requests
    assert req.text == "Privet"


@pytest.mark.parametrize("rus", ["2", "6", "x", "-1"])
def test_v2_bad_rus_is_404(rus: str) -> None:
    assert v2_error({**BASE, "rus": rus}).api_code == 404


def test_v2_max_parts_field() -> None:
    (req,) = v2({"phones": PHONE, "message": "a" * 306, "max_parts": "2"}, max_parts=1).requests
    assert (req.parts, req.options.max_parts) == (2, 2)
    err = v2_error({"phones": PHONE, "message": "a" * 307, "max_parts": "2"})
    assert err.api_code == 420


def test_v2_max_parts_from_account_when_absent() -> None:
    assert v2_error({"phones": PHONE, "message": "a" * 161}, max_parts=1).api_code == 420


@pytest.mark.parametrize("value", ["0", "256", "-1", "two", "1.5"])
def test_v2_bad_max_parts_is_404(value: str) -> None:
    assert v2_error({**BASE, "max_parts": value}).api_code == 404


@pytest.mark.parametrize(("name", "value"), [("max_parts", "²"), ("rus", "²"),
                                              ("timeout", "²"), ("max_parts", "١")])
def test_v2_non_ascii_digits_are_404(name: str, value: str) -> None:
    assert v2_error({**BASE, name: value}).api_code == 404


def test_v2_two_byte_concat_and_flash_and_timeout() -> None:
    (req,) = v2({"phones": PHONE, "message": "a" * 305, "two_byte_concat": "1",
                 "flash": "1", "timeout": "3600"}).requests
    options = req.options
    assert (req.parts, options.two_byte_concat, options.flash, options.validity) == (
        3, True, True, 3600)


@pytest.mark.parametrize("name", ["flash", "reply_to_email", "individual_messages",
                                  "want_sms_ids", "ignore_phone_format"])
def test_v2_flags_must_be_0_or_1(name: str) -> None:
    assert v2_error({**BASE, name: "yes"}).api_code == 404


def test_v2_reply_to_email_flag() -> None:
    assert v2({**BASE, "reply_to_email": "1"}).reply_to_email is True
    assert v2({**BASE, "reply_to_email": "0"}).reply_to_email is False


def test_v2_originator_from_field_or_account() -> None:
    assert v2(BASE, originator="AcctName").requests[0].options.originator == "AcctName"
    [req] = v2({**BASE, "originator": "Field"}, originator="AcctName").requests
    assert req.options.originator == "Field"


def test_v2_originator_too_long_is_421() -> None:
    assert v2_error({**BASE, "originator": "MyCompanyLtd"}).api_code == 421
    assert v2_error({**BASE, "originator": "7" * 16}).api_code == 421


def test_v2_originator_bad_chars_is_436() -> None:
    assert v2_error({**BASE, "originator": "Bad!"}).api_code == 436


def test_v2_group_is_413() -> None:
    assert v2_error({**BASE, "group": "friends"}).api_code == 413


def test_v2_allowed_prefixes_is_419() -> None:
    assert v2_error(BASE, allowed_prefixes=["375"]).api_code == 419
