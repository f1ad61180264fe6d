"""A helpdesk agent's e-mail reply → only the agent's own words. Pure functions.

A forwarded SMS carries ``Reply-To: PHONE.account@domain``; the agent's answer comes back
through the SMTP intake and is texted to the customer. Mail clients wrap that answer in
quotes, attribution lines, header blocks and signatures, and put it above the quote
(top-posting), below it (bottom-posting) or between quoted parts (interleaving).
:func:`extract_reply` keeps the agent's lines wherever they are and drops:

* quoted lines (``>``; in HTML mail the ``<blockquote>`` content, see :func:`html_reply_text`);
* attribution lines, also when wrapped over two lines: Thunderbird "On … wrote:" /
  "… пишет:", Gmail "On … <addr> wrote:" / "чт, 3 дек. 2026 г. в 14:05, Имя <addr>:",
  Apple Mail "… написал(а):", Yandex "03.12.2026, 14:05, "Имя" <addr>:", Mail.ru
  "Четверг, 3 декабря 2026, 14:05 +03:00 от Имя <addr>:". An attribution line followed by
  unquoted text (a client that does not mark the quote) ends the agent's text;
* Outlook's unquoted original: a "From:/Sent:/To:/Subject:" or "От:/Отправлено:/Кому:/Тема:"
  header block, the "-----Original Message-----" / "-----Исходное сообщение-----" separators
  and Outlook web's line of underscores before a header block: everything from there on;
* with signature trimming: a ``-- `` signature (RFC 3676 §4.3) up to the next quote, and
  mobile footers ("Sent from my iPhone", "Отправлено с iPhone", "Get Outlook for Android");
* lines from a configured closing on ("С уважением,", only when the account lists it: an
  agent may well write "Thanks, we'll call you" as the message itself).

The ``mail-parser-reply`` package was measured against the reply corpus in ``tests/replies/``:
it got 12 of 34 right — English top-posted replies only. It splits a mail at the first
header it knows and keeps the part before it, so bottom-posted and interleaved replies are
lost; it knows no Russian, nor the Yandex and Mail.ru forms; its signature heuristics cut
real text ("Thanks, we will call you tomorrow.", "- 2 pizzas", "-79161234567" all end the
message), and its header-block pattern cuts at "From: Monday to Friday" / "To: Saturday".
What it is right about is its per-language data: the attribution-line patterns
(``wrote_header``) and mobile-footer phrases (``sent_from``) of thirteen languages, so an
agent whose client writes "Am … schrieb …:" is understood too. Those are used here; the
structure (quotes, bottom-posting, interleaving, signatures, Outlook blocks) and the Russian,
Yandex and Mail.ru forms are ours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import ClassVar

from mailparser_reply.constants import MAIL_LANGUAGES

from bridge.parsing.text import transliterate


@dataclass(frozen=True)
class ReplyTrimming:
    """What the account asks to drop (``trim_quoted``, ``trim_signature``,
    ``signature_starts``)."""

    quoted: bool = False
    signature: bool = False
    signature_starts: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.quoted or self.signature or bool(self.signature_starts)


# -- format=flowed --------------------------------------------------------------------------


def unflow(text: str, *, delsp: bool = False) -> str:
    """Join the soft line breaks of a ``format=flowed`` text (RFC 3676 §4.1, §4.2, §4.4).

    A line ending in a space continues on the next line of the same quote depth; with
    ``DelSp=yes`` that one space is deleted when joining (§4.2: it was added by the sender).
    One leading space is space-stuffing and removed (§4.4); ``-- `` is the signature
    separator, never flowed (§4.3). Quote markers are written back as ``>`` (one ``> ``
    prefix per line) so quoted text stays recognisable.
    """
    out: list[str] = []
    pending: tuple[int, str] | None = None  # a flowed paragraph still being joined
    for raw in text.replace("\r\n", "\n").split("\n"):
        depth = len(raw) - len(raw.lstrip(">"))
        line = raw[depth:]
        if line.startswith(" "):
            line = line[1:]
        flowed = line.endswith(" ") and line != "-- "
        if pending is not None and pending[0] == depth:
            line = pending[1] + line
        elif pending is not None:  # a flowed line before another depth is fixed (§4.5)
            out.append(_quoted(*pending))
        pending = None
        if flowed:
            pending = (depth, line[:-1] if delsp else line)
        else:
            out.append(_quoted(depth, line))
    if pending is not None:
        out.append(_quoted(pending[0], pending[1].rstrip(" ")))
    return "\n".join(out)


def _quoted(depth: int, line: str) -> str:
    return f"{'>' * depth} {line}" if depth else line


# -- HTML -----------------------------------------------------------------------------------


_WHITESPACE = re.compile(r"[ \t\r\n]+")


class _QuoteMarkingHtml(HTMLParser):
    """HTML → text lines, the content of ``<blockquote>`` prefixed with ``>`` per level."""

    _BLOCK: ClassVar[frozenset[str]] = frozenset({
        "p", "div", "br", "tr", "li", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
        "blockquote", "pre", "hr",
    })
    _SKIP: ClassVar[frozenset[str]] = frozenset({"script", "style", "head", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.lines: list[list[int | str]] = [[0, ""]]  # [quote depth, text]
        self.depth = 0
        self._skip = 0

    def _break(self) -> None:
        self.lines.append([self.depth, ""])

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._SKIP:
            self._skip += 1
        elif tag in self._BLOCK:
            if tag == "blockquote":
                self.depth += 1
            self._break()

    def handle_endtag(self, tag: str) -> None:
        if tag in self._SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag in self._BLOCK:
            if tag == "blockquote":
                self.depth = max(0, self.depth - 1)
            self._break()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        line = self.lines[-1]
        line[0] = max(int(line[0]), self.depth)
        line[1] = str(line[1]) + _WHITESPACE.sub(" ", data)


def html_reply_text(markup: str) -> str:
    """Readable text from an HTML reply, with quoted (``<blockquote>``) lines marked ``>``.

    Gmail, Thunderbird, Apple Mail, Yandex and Mail.ru put the quoted mail in a
    ``<blockquote>``; without the marks a bottom-posted HTML reply could not be told from
    its quote. Blank lines are kept (at most one in a row) as in the plain conversion.
    """
    parser = _QuoteMarkingHtml()
    parser.feed(markup)
    parser.close()
    out: list[str] = []
    for depth, text in parser.lines:
        line = str(text).strip()
        if line:
            out.append(_quoted(int(depth), line))
        elif out and out[-1]:
            out.append("")
    return "\n".join(out).strip("\n")


# -- line classes ---------------------------------------------------------------------------

# mail-parser-reply's attribution patterns are written for ``re.MULTILINE`` over a whole
# body; each is used here on one candidate line (or two wrapped lines) with ``fullmatch``.
_LIBRARY_ATTRIBUTIONS = tuple(
    re.compile(str(patterns["wrote_header"]), re.MULTILINE | re.IGNORECASE)
    for patterns in MAIL_LANGUAGES.values()
    if patterns.get("wrote_header")
)
_OWN_ATTRIBUTIONS = (
    # Thunderbird RU "03.12.2026 14:05, Имя пишет:", Apple Mail RU "… написал(а):", and any
    # "DATE, NAME wrote:" that does not start with "On".
    re.compile(r".*\d.*\s(?:пишет|писал\(а\)|написал\(а\)|написала?|писала?|wrote)\s?:",
               re.IGNORECASE),
    # Gmail RU "чт, 3 дек. 2026 г. в 14:05, Имя <addr>:", Yandex '03.12.2026, 14:05, "Имя"
    # <addr>:', Mail.ru "Четверг, 3 декабря 2026, 14:05 +03:00 от Имя <addr>:": a time, then
    # an address (bare or in angle brackets) and a colon at the end.
    re.compile(r"(?=.*\d{1,2}:\d{2}).*(?:<\s?[^\s<>@]+@[^\s<>]+\s?>|\s[^\s<>@]+@[^\s<>]+)\s?:"),
)
# Some of those patterns backtrack heavily ("(.+?\s?.+?)" inside a negative lookahead):
# 6,000 crafted 300-character lines took 84 s. So a candidate is at most 200
# characters, ends with a colon (every attribution form does) and holds a digit (clients
# write the date or time by default), and at most 100 candidates per mail meet the patterns.
# An undated "Name wrote:" / "Имя пишет:" counts only right before a quoted line.
_MAX_ATTRIBUTION = 200
_UNDATED_ATTRIBUTION = re.compile(
    r".{1,80}\s(?:wrote|пишет|писал\(а\)|написал\(а\)|написала?|писала?)\s?:", re.IGNORECASE
)
_MAX_PATTERN_CHECKS = 100
_SENTENCE_END = re.compile(r"[.!?…]$")

_SEPARATOR = re.compile(
    r"-{3,}\s*(?:Original Message|Исходное сообщение|Исходное письмо)\s*-{3,}", re.IGNORECASE
)
_UNDERSCORES = re.compile(r"_{10,}")
_HEADER_LINE = re.compile(r"\*?([A-Za-zА-Яа-яЁё]+)\*?\s?:\*?(?:\s|$)")
_FROM_NAMES = frozenset({"from", "от"})
_SENT_NAMES = frozenset({"sent", "date", "отправлено", "дата"})
_OTHER_NAMES = frozenset({"to", "subject", "cc", "кому", "тема", "копия"})

_FOOTER_PHRASES = "|".join(
    str(patterns["sent_from"]) for patterns in MAIL_LANGUAGES.values()
    if patterns.get("sent_from")
)
_MOBILE_FOOTERS = (
    # mail-parser-reply's form of a footer: the phrase, then a product name of a few words.
    re.compile(rf"(?:{_FOOTER_PHRASES}) ?(?:[\w.<>:/ ]+|(?:\w+ ){{1,3}})", re.IGNORECASE),
    # "Отправлено с iPhone", "Отправлено из мобильной Почты Mail.ru", "Отправлено из
    # мобильного приложения Яндекс Почты": the phrase and a device or mail product at the end.
    re.compile(r"Отправлено (?:с|со|из|через) .{0,60}(?:iPhone|iPad|Android|Яндекс|Yandex|"
               r"Mail\.ru|Почты|Outlook|Gmail|мобильного устройства|телефона)\S{0,20}",
               re.IGNORECASE),
)


def _is_quoted(line: str) -> bool:
    return line.lstrip(" \t").startswith(">")


class _Attributions:
    """Finds attribution lines in one mail's lines, with the pattern checks capped."""

    def __init__(self, lines: list[str]) -> None:
        self.lines = lines
        self.checks_left = _MAX_PATTERN_CHECKS
        self.known: dict[str, bool] = {}

    def matches(self, candidate: str) -> bool:
        if (len(candidate) > _MAX_ATTRIBUTION or not candidate.endswith((":", "\uff1a"))
                or not any(ch.isdigit() for ch in candidate)):
            return False
        if candidate in self.known:
            return self.known[candidate]
        if self.checks_left <= 0:
            return False  # hundreds of dated "…:" lines are no reply's structure: text
        self.checks_left -= 1
        flat = " ".join(candidate.split())
        found = (any(pattern.fullmatch(candidate) for pattern in _LIBRARY_ATTRIBUTIONS)
                 or any(pattern.fullmatch(flat) for pattern in _OWN_ATTRIBUTIONS))
        self.known[candidate] = found
        return found

    def span(self, index: int) -> int:
        """How many lines (0, 1 or 2) starting at ``index`` form an attribution line."""
        line = self.lines[index].strip()
        if not line:
            return 0
        if self.matches(line):
            return 1
        if _UNDATED_ATTRIBUTION.fullmatch(line):
            # Thunderbird set to "Anna wrote:" writes no date: taken only before a quote.
            following_line = _next_nonblank(self.lines, index + 1)
            if following_line is not None and _is_quoted(self.lines[following_line]):
                return 1
        if index + 1 >= len(self.lines):
            return 0
        following = self.lines[index + 1].strip()
        # A wrapped attribution: the first half holds the date, does not end a sentence, and
        # the second half is no attribution of its own (else the first line is the agent's).
        if (not following or _is_quoted(following) or _SENTENCE_END.search(line)
                or not any(ch.isdigit() for ch in line) or self.matches(following)):
            return 0
        return 2 if self.matches(f"{line}\n{following}") else 0


def _next_nonblank(lines: list[str], index: int) -> int | None:
    for position in range(index, len(lines)):
        if lines[position].strip():
            return position
    return None


def _header_name(line: str) -> str | None:
    match = _HEADER_LINE.match(line.strip())
    return match.group(1).lower() if match else None


def _is_header_block(lines: list[str], index: int) -> bool:
    """Outlook's "From:" line followed by "Sent:"/"Date:" and "To:"/"Subject:" lines.

    "From:" alone, or "From: Monday to Friday / To: Saturday", is an agent's text.
    """
    if _header_name(lines[index]) not in _FROM_NAMES:
        return False
    names: set[str] = set()
    position = index + 1
    while len(names) < 4:
        found = _next_nonblank(lines, position)
        if found is None or found > position + 1:  # at most one blank line between headers
            break
        name = _header_name(lines[found])
        if name is None:
            break
        names.add(name)
        position = found + 1
    return bool(names & _SENT_NAMES) and bool(names & _OTHER_NAMES)


def _starts_original(lines: list[str], index: int) -> bool:
    """An unquoted original mail starts here (Outlook separators and header blocks)."""
    line = lines[index].strip()
    if _SEPARATOR.fullmatch(line):
        return True
    if _UNDERSCORES.fullmatch(line):
        following = _next_nonblank(lines, index + 1)
        return following is not None and _is_header_block(lines, following)
    return _is_header_block(lines, index)


def _is_signature_separator(line: str) -> bool:
    # "-- " (RFC 3676 §4.3); "--" as well: HTML conversion and some clients drop the space.
    return line.rstrip(" ") == "--"


def _is_mobile_footer(line: str) -> bool:
    stripped = line.strip()
    return len(stripped) <= 120 and any(p.fullmatch(stripped) for p in _MOBILE_FOOTERS)


def _is_closing(line: str, starts: tuple[str, ...]) -> bool:
    folded = line.strip().casefold()
    return bool(folded) and any(folded.startswith(start.casefold()) for start in starts)


# -- the extractor --------------------------------------------------------------------------


def extract_reply(text: str, trimming: ReplyTrimming) -> str:
    """The agent's own lines of ``text`` (``\\n`` line breaks, already unflowed).

    Without any trimming asked for, ``text`` is returned as it is. Otherwise the kept lines
    are returned with trailing spaces removed, runs of blank lines made one, and no blank
    lines at either end. Without ``quoted``, a signature runs to the end of the text.
    """
    if not trimming.active:
        return text
    lines = text.split("\n")
    attributions = _Attributions(lines)
    kept: list[str] = []
    in_signature = False
    index = 0
    while index < len(lines):
        line = lines[index]
        if trimming.quoted:
            if _is_quoted(line):
                in_signature = False
                index += 1
                continue
            span = attributions.span(index)
            if span:
                in_signature = False
                following = _next_nonblank(lines, index + span)
                if following is None or not (_is_quoted(lines[following])
                                             or attributions.span(following)):
                    break  # an unmarked quote follows: the rest is the original
                index += span
                continue
            if _starts_original(lines, index):
                break
        if in_signature:
            index += 1
            continue
        if ((trimming.signature and _is_signature_separator(line))
                or _is_closing(line, trimming.signature_starts)):
            if not trimming.quoted:
                break
            in_signature = True  # until the next quote: Gmail puts it above a bottom-post
            index += 1
            continue
        if trimming.signature and _is_mobile_footer(line):
            index += 1
            continue
        kept.append(line.rstrip())
        index += 1
    return _tidy(kept)


def _tidy(lines: list[str]) -> str:
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    while out and not out[-1]:
        out.pop()
    return "\n".join(out)


# -- the refusal ----------------------------------------------------------------------------

_EXCERPT_CHARS = 120


def empty_reply_message(received: str) -> str:
    """The SMTP reply text for a reply with nothing of the agent's own left to send.

    It quotes the start of what was ``received`` (the mail's text before trimming), so the
    agent reading the bounce sees what the bridge saw. SMTP replies are ASCII and the
    sender's MTA copies this line into that bounce, so Cyrillic is transliterated rather
    than turned into "?"; whitespace is collapsed to one line, double quotes turned single,
    and the excerpt cut at 120 characters.
    """
    excerpt = " ".join(transliterate(received).replace('"', "'").split())
    excerpt = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in excerpt)
    if len(excerpt) > _EXCERPT_CHARS:
        excerpt = excerpt[: _EXCERPT_CHARS - 3].rstrip() + "..."
    return (
        "No text of your own left to send as an SMS: the reply holds only quoted text or a "
        "signature. Write your answer above or below the quote. "
        f'Received: "{excerpt}"'
    )
