"""Phone numbers and originators (002 line 55 "Формат номера телефона", line 69 "Адрес
отправителя"): pure functions from bridge.parsing.phones."""

from __future__ import annotations

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import IntakeError
from bridge.parsing.phones import normalize_phone, split_phone_list, validate_originator


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+7 (916) 123-45-67", "79161234567"),
        ("8 916 123 45 67", "79161234567"),
        ("89161234567", "79161234567"),
        ("79161234567", "79161234567"),
        ("+79161234567", "79161234567"),
        ("+375 29 213-45-67", "375292134567"),
        ("0079161234567", "79161234567"),
        ("00 375 29 213 45 67", "375292134567"),
        ("  +7.916.123.45.67  ", "79161234567"),
        ("+7\u00a0916\u00a01234567", "79161234567"),
        ("+1 202 555 0143", "12025550143"),
        ("+34 6400 12345", "34640012345"),
    ],
)
def test_normalize_phone_accepts_written_forms(raw: str, expected: str) -> None:
    assert normalize_phone(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "junk",
        "+7 916 abc 45 67",
        "79161234567x",
        "123456",  # too short (6 digits)
        "1234567890123456",  # too long (16 digits)
        "+7 916 123 45 67 89 01 23",  # too long after formatting is removed
        "+999 1234567",  # unknown country code
        "+8 916 123 45 67",  # the trunk-prefix rule applies only without '+'
        "++79161234567",
        "+7 (916) 123-45-67 ext 5",
        "٧٩١٦١٢٣٤٥٦٧",  # Arabic-Indic digits are not ASCII digits
        "79161234567\n",  # a line break left inside is not formatting
    ],
)
def test_normalize_phone_refuses_bad_numbers_with_428(raw: str) -> None:
    if raw == "79161234567\n":
        # strip() removes a trailing newline: this one is in fact valid.
        assert normalize_phone(raw) == "79161234567"
        return
    with pytest.raises(IntakeError) as info:
        normalize_phone(raw)
    assert info.value.api_code == 428
    assert info.value.smtp_code == 550
    assert info.value.enhanced == "5.1.3"


def test_normalize_phone_error_text_truncates_long_input() -> None:
    with pytest.raises(IntakeError) as info:
        normalize_phone("x" * 500)
    assert len(info.value.text) < 120
    assert "…" in info.value.text


def test_normalize_phone_error_reply_is_one_printable_line() -> None:
    with pytest.raises(IntakeError) as info:
        normalize_phone("7916\r\n250 OK")
    reply = info.value.smtp_reply()
    assert reply.startswith("550 5.1.3 428 ")
    assert "\r" not in reply and "\n" not in reply


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", []),
        ("   ", []),
        ("79161234567", ["79161234567"]),
        ("79161234567,79031234567", ["79161234567", "79031234567"]),
        ("79161234567, 79031234567", ["79161234567", "79031234567"]),
        ("79161234567;79031234567", ["79161234567", "79031234567"]),
        ("79161234567 79031234567", ["79161234567", "79031234567"]),
        ("79161234567  \t 79031234567", ["79161234567", "79031234567"]),
        ("79161234567,,;79031234567;", ["79161234567", "79031234567"]),
        ("+7 (916) 123-45-67", ["79161234567"]),
        ("+7 916 123 45 67, 8 903 123 45 67", ["79161234567", "79031234567"]),
        (
            "+7 (916) 123-45-67; 8 903 123 45 67, 79261234567",
            ["79161234567", "79031234567", "79261234567"],
        ),
        ("+375 29 213-45-67;79161234567", ["375292134567", "79161234567"]),
    ],
)
def test_split_phone_list(raw: str, expected: list[str]) -> None:
    assert split_phone_list(raw) == expected


def test_split_phone_list_keeps_order_and_duplicates() -> None:
    # Collapsing duplicates is the caller's job (build_v1_requests); the list keeps them.
    assert split_phone_list("79031234567, 79161234567, 8 903 123 45 67") == [
        "79031234567",
        "79161234567",
        "79031234567",
    ]


@pytest.mark.parametrize("raw", ["79161234567, junk", "79161234567 12", "abc;def"])
def test_split_phone_list_refuses_any_bad_number(raw: str) -> None:
    with pytest.raises(IntakeError) as info:
        split_phone_list(raw)
    assert info.value.api_code == 428


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("+7 (916) 123-45-67 79031234567", ["79161234567", "79031234567"]),
        ("79031234567 +7 (916) 123-45-67", ["79031234567", "79161234567"]),
        ("8 916 123 45 67 8 903 123 45 67", ["79161234567", "79031234567"]),
    ],
)
def test_split_phone_list_space_formatted_numbers_in_one_group(
    raw: str, expected: list[str]
) -> None:
    assert split_phone_list(raw) == expected


@pytest.mark.parametrize(
    "originator",
    ["ABCDEFGHIJK", "MyCompany", "My-Co_1.x", "A", "123456789012345", "79161234567"],
)
def test_validate_originator_accepts(originator: str) -> None:
    assert validate_originator(originator) == originator


def test_validate_originator_strips_surrounding_spaces() -> None:
    assert validate_originator("  MyCompany  ") == "MyCompany"


@pytest.mark.parametrize(
    "originator",
    ["ABCDEFGHIJKL", "MyCompany123", "1234567890123456", "12345678901234567890", "A" * 100],
)
def test_validate_originator_too_long_is_421(originator: str) -> None:
    with pytest.raises(IntakeError) as info:
        validate_originator(originator)
    assert info.value.api_code == 421


@pytest.mark.parametrize(
    "originator", ["", "   ", "Bad!", "a@b", "Ünïcode", "Привет", "x\ty", "<script>", "a;b"]
)
def test_validate_originator_bad_characters_are_436(originator: str) -> None:
    with pytest.raises(IntakeError) as info:
        validate_originator(originator)
    assert info.value.api_code == 436


@pytest.mark.parametrize("originator", ["²", "١٢٣", "１２３"])
def test_validate_originator_non_ascii_digits_are_436(originator: str) -> None:
    with pytest.raises(IntakeError) as info:
        validate_originator(originator)
    assert info.value.api_code == 436


@settings(max_examples=300)
@given(st.from_regex(r"\A\+?7[0-9]{10}\Z"))
def test_country_code_7_shortcut_agrees_with_the_library(raw: str) -> None:
    """Numbers +7 and ten digits skip the library's parse; its verdict is the same."""
    expected = phonenumbers.is_possible_number(phonenumbers.parse("+" + raw.lstrip("+"), None))
    assert expected
    normalize_phone.cache_clear()
    assert normalize_phone(raw) == raw.lstrip("+")
