"""SMS text helpers (002 line 1441 GSM 03.38, line 1491 UDH segment sizes)."""

from __future__ import annotations

import pytest

from bridge.parsing.text import (
    count_segments,
    fits_latin_mode,
    html_to_text,
    normalize_newlines,
    strip_controls,
    transliterate,
    trim_blank_lines,
)

CYR = "ж"  # not in GSM 03.38: forces UCS-2
EMOJI = "😀"  # outside the BMP: two UTF-16 code units


# --- count_segments: GSM 7-bit ------------------------------------------------------------


def test_empty_text_takes_no_parts() -> None:
    seg = count_segments("")
    assert (seg.encoding, seg.units, seg.parts) == ("gsm7", 0, 0)


@pytest.mark.parametrize(
    ("length", "parts", "per_part"),
    [(1, 1, 160), (160, 1, 160), (161, 2, 153), (306, 2, 153), (307, 3, 153), (459, 3, 153),
     (460, 4, 153)],
)
def test_gsm7_boundaries(length: int, parts: int, per_part: int) -> None:
    seg = count_segments("a" * length)
    assert seg.encoding == "gsm7"
    assert seg.units == length
    assert seg.parts == parts
    assert seg.per_part == per_part


@pytest.mark.parametrize(
    ("length", "parts"), [(160, 1), (161, 2), (304, 2), (305, 3), (456, 3), (457, 4)]
)
def test_gsm7_two_byte_concat_uses_152(length: int, parts: int) -> None:
    seg = count_segments("a" * length, two_byte_concat=True)
    assert seg.parts == parts
    assert seg.per_part == (160 if parts == 1 else 152)


def test_ascii_characters_of_the_gsm_basic_table_stay_gsm7() -> None:
    text = "@$_!\"#%&'()*+,-./:;<=>? 0123456789AZaz\n\r"
    seg = count_segments(text)
    assert seg.encoding == "gsm7"
    assert seg.units == len(text)


@pytest.mark.parametrize("ch", list("£¥èéùìòÇØøÅåΔΦΓΛΩΠΨΣΘΞÆæßÉ¤¡ÄÖÑÜ§¿äöñüà€"))
def test_non_ascii_gsm_characters_count_as_ucs2(ch: str) -> None:
    """SMS Traffic v1 carries only windows-1251 in Latin mode (rus=0, 002 l. 811), which lacks
    é, ü, Δ …; such text goes rus=5, 70/67 per part by the stricter reading of l. 812-813."""
    seg = count_segments("a" * 100 + ch)
    assert (seg.encoding, seg.units, seg.parts, seg.per_part) == ("ucs2", 101, 2, 67)
    assert not fits_latin_mode(ch)


def test_backtick_is_not_gsm() -> None:
    assert count_segments("`").encoding == "ucs2"
    assert not fits_latin_mode("a`")


def test_latin_mode_is_ascii_gsm() -> None:
    assert fits_latin_mode("Hello, world! {1} [2] ~3^ |4| \\5\n")
    assert fits_latin_mode("")
    assert not fits_latin_mode("Привет")
    assert not fits_latin_mode("tab\there")
    assert not fits_latin_mode("\x1b") and not fits_latin_mode("\f")


@pytest.mark.parametrize("ch", list("^{}\\[~]|"))
def test_extension_characters_count_twice(ch: str) -> None:
    seg = count_segments(ch)
    assert seg.encoding == "gsm7"
    assert seg.units == 2


def test_extension_character_at_the_single_part_boundary() -> None:
    assert count_segments("a" * 158 + "^").parts == 1  # 160 septets
    seg = count_segments("a" * 159 + "^")  # 161 septets
    assert (seg.units, seg.parts, seg.per_part) == (161, 2, 153)
    assert count_segments("{" * 80).parts == 1
    assert count_segments("{" * 80 + "a").parts == 2


def test_extension_character_at_the_two_part_boundary() -> None:
    assert count_segments("a" * 304 + "]").parts == 2  # 306 septets
    assert count_segments("a" * 305 + "]").parts == 3  # 307 septets


# --- count_segments: UCS-2 ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("length", "parts", "per_part"),
    [(1, 1, 70), (70, 1, 70), (71, 2, 67), (134, 2, 67), (135, 3, 67), (201, 3, 67)],
)
def test_ucs2_boundaries(length: int, parts: int, per_part: int) -> None:
    seg = count_segments(CYR * length)
    assert seg.encoding == "ucs2"
    assert seg.units == length
    assert (seg.parts, seg.per_part) == (parts, per_part)


@pytest.mark.parametrize(("length", "parts"), [(70, 1), (71, 2), (132, 2), (133, 3)])
def test_ucs2_two_byte_concat_uses_66(length: int, parts: int) -> None:
    seg = count_segments(CYR * length, two_byte_concat=True)
    assert seg.parts == parts
    assert seg.per_part == (70 if parts == 1 else 66)


def test_one_non_gsm_character_switches_the_whole_text_to_ucs2() -> None:
    seg = count_segments("a" * 100 + CYR)
    assert seg.encoding == "ucs2"
    assert seg.units == 101
    assert seg.parts == 2


def test_extension_characters_count_once_in_ucs2() -> None:
    seg = count_segments(CYR + "€{")
    assert seg.encoding == "ucs2"
    assert seg.units == 3


def test_emoji_counts_as_two_utf16_units() -> None:
    assert count_segments(EMOJI).units == 2
    assert count_segments(EMOJI * 35).parts == 1  # 70 units
    assert count_segments(EMOJI * 35 + "a").parts == 2  # 71 units
    seg = count_segments("a" * 69 + EMOJI)
    assert (seg.units, seg.parts) == (71, 2)


# --- transliterate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("привет", "privet"),
        ("Привет, мир!", "Privet, mir!"),
        ("Щука", "Shchuka"),
        ("жёлтый", "zheltyy"),
        ("объявление", "obyavlenie"),
        ("Юля и Яна", "Yulya i Yana"),
        ("Хочу", "Khochu"),
        ("цэ", "tse"),
        ("Їжак ґанок є", "Yizhak ganok ye"),
        ("«Ура» — №5…", '"Ura" - N5...'),
        ("a\u00a0b", "a b"),
        ("Latin 123 €", "Latin 123 €"),
        ("", ""),
    ],
)
def test_transliterate(text: str, expected: str) -> None:
    assert transliterate(text) == expected


def test_transliterated_russian_fits_gsm7() -> None:
    text = transliterate("Ваш код подтверждения: 1234. Никому не сообщайте его — «банк».")
    assert count_segments(text).encoding == "gsm7"


# --- html_to_text -------------------------------------------------------------------------


def test_html_scripts_and_styles_are_dropped() -> None:
    markup = (
        "<html><head><title>T</title><style>p {color: red}</style></head>"
        "<body><script>alert('x < y')</script><p>Hello</p></body></html>"
    )
    text = html_to_text(markup)
    assert "Hello" in text
    for leaked in ("alert", "color", "T\n", "<", "script"):
        assert leaked not in text


def test_html_br_and_p_become_line_breaks() -> None:
    lines = [line for line in html_to_text("<p>one</p><p>two<br>three</p>").split("\n") if line]
    assert lines == ["one", "two", "three"]


def test_html_inline_whitespace_collapses() -> None:
    assert html_to_text("<span>a \n\t  b</span>").strip() == "a b"


def test_html_at_most_one_blank_line() -> None:
    assert "\n\n\n" not in html_to_text("<p>a</p><br><br><br><div></div><p>b</p>")


@pytest.mark.parametrize(
    ("markup", "expected"),
    [
        ("Tom &amp; Jerry", "Tom & Jerry"),
        ("&lt;b&gt;", "<b>"),
        ("caf&eacute; &#8470;5 &#x20AC;", "café №5 €"),
        ("a&nbsp;b", "a\u00a0b"),
        ("&quot;q&quot;", '"q"'),
    ],
)
def test_html_entities_are_decoded(markup: str, expected: str) -> None:
    assert html_to_text(markup).strip() == expected


def test_html_entities_are_decoded_only_once() -> None:
    assert html_to_text("Use &amp;lt;b&amp;gt; and &amp;amp;").strip() == "Use &lt;b&gt; and &amp;"


# --- small helpers ------------------------------------------------------------------------


def test_normalize_newlines() -> None:
    assert normalize_newlines("a\r\nb\rc\nd") == "a\nb\nc\nd"


def test_strip_controls_keeps_newline_and_tab() -> None:
    assert strip_controls("a\tb\nc\x00\x07\x1b\x7f\x85\u2028\u2029\x0bd") == "a\tb\ncd"


def test_trim_blank_lines() -> None:
    assert trim_blank_lines("\n  \nhello  \n\nworld\t\n \n\n") == "hello\n\nworld"
