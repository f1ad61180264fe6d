"""Parsed mail → send requests, for SMTP v1 and v2. Pure functions over the account the mail
came for (:class:`SendingAccount`, what the parsers read of ``AccountSettings``).

Errors carry the spec's API codes (002, "Коды ошибок API", line 1988) so a mail sender sees
the same code the provider's HTTP API would give for the same mistake.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol, TypeVar

import phonenumbers
from pydantic import SecretStr

from bridge.errors import IntakeError
from bridge.models import SendOptions, SendRequest
from bridge.parsing.mail import ParsedMail, Recipient, receiver_tag
from bridge.parsing.phones import normalize_phone, split_phone_list, validate_originator
from bridge.parsing.replies import (
    ReplyTrimming,
    empty_reply_message,
    extract_reply,
    html_reply_text,
)
from bridge.parsing.text import count_segments, strip_controls, transliterate


class SendingAccount(Protocol):
    """What the parsers read of an account; the settings' ``AccountSettings`` is one. The
    parsers take it by its shape so they depend on the core alone."""

    @property
    def password(self) -> SecretStr: ...
    @property
    def upstream(self) -> str: ...
    @property
    def fallback_upstreams(self) -> Sequence[str]: ...
    @property
    def originator(self) -> str | None: ...
    @property
    def allowed_prefixes(self) -> Sequence[str]: ...
    @property
    def encoding(self) -> str: ...
    @property
    def max_parts(self) -> int: ...
    @property
    def trim_quoted(self) -> bool: ...
    @property
    def trim_signature(self) -> bool: ...
    @property
    def signature_starts(self) -> Sequence[str]: ...


AccountT = TypeVar("AccountT", bound=SendingAccount)
AccountT_co = TypeVar("AccountT_co", bound=SendingAccount, covariant=True)


class AccountBook(Protocol[AccountT_co]):
    """The accounts by login (the settings are one): a case-insensitive lookup and the
    login as configured."""

    def account(self, login: str) -> AccountT_co | None: ...
    def canonical_login(self, login: str) -> str: ...


class _UpstreamKind(Protocol):
    @property
    def kind(self) -> str: ...


class UpstreamKinds(Protocol):
    """The configured upstreams by name, of which the parsers read the kind."""

    @property
    def upstreams(self) -> Mapping[str, _UpstreamKind]: ...


# 002, HTTP API v1 ``start_date``: "ГГГГ-ММ-ДД ЧЧ:ММ:СС", time zone UTC+3.
PROVIDER_TZ = timezone(timedelta(hours=3))


def check_phone_allowed(account: SendingAccount, phone: str) -> None:
    """An account may be limited to phone prefixes (002 line 1768: "ограничить список")."""
    if account.allowed_prefixes and not any(
        phone.startswith(prefix) for prefix in account.allowed_prefixes
    ):
        raise IntakeError(550, "5.7.1", f"Phone {phone} is not allowed for this account", 419)


def make_request(
    login: str,
    account: SendingAccount,
    phone: str,
    text: str,
    *,
    originator: str | None,
    transliterated: bool,
    max_parts: int,
    flash: bool = False,
    not_before: float | None = None,
    validity: int | None = None,
    two_byte_concat: bool = False,
    push_id: str | None = None,
    individual: bool = False,
) -> SendRequest:
    """One checked request: number allowed, text present and within ``max_parts``.

    ``individual``: the text came from an ``individual_messages`` line, whose errors have
    their own codes (423 empty, 424 too long) in 002 line 1988.
    """
    check_phone_allowed(account, phone)
    if transliterated:
        text = transliterate(text)
    if not text.strip():
        raise IntakeError(550, "5.6.0", f"Empty message for phone {phone}",
                          423 if individual else 405)
    segments = count_segments(text, two_byte_concat=two_byte_concat)
    if segments.parts > max_parts:
        shown = text[:30] + ("…" if len(text) > 30 else "")
        raise IntakeError(
            550,
            "5.3.4",
            f'Message "{shown}" is too long: {segments.parts} parts, max_parts is {max_parts}',
            424 if individual else 420,
        )
    return SendRequest(
        account=login,
        upstream=account.upstream,
        phone=phone,
        text=text,
        parts=segments.parts,
        encoding=segments.encoding,
        options=SendOptions(
            originator=originator,
            flash=flash,
            max_parts=max_parts,
            not_before=not_before,
            validity=validity,
            transliterate=transliterated,
            two_byte_concat=two_byte_concat,
            push_id=push_id,
            fallbacks=tuple(account.fallback_upstreams),
        ),
    )


def clean_text(mail: ParsedMail, account: SendingAccount) -> str:
    """The mail's text as an SMS: with the account's trimming, only the agent's own words
    (:func:`bridge.parsing.replies.extract_reply`)."""
    trimming = ReplyTrimming(account.trim_quoted, account.trim_signature,
                             tuple(s for s in account.signature_starts if s.strip()))
    text = mail.text
    if trimming.quoted and mail.html is not None:
        text = strip_controls(html_reply_text(mail.html))  # its <blockquote>s marked as quotes
    return extract_reply(text, trimming).strip("\n").rstrip()


# The longest numeric sender a provider kind takes: 15 digits by 002 line 69 ("максимальная
# длина числового отправителя ограничена 15 цифрами"), Devino's SourceAddress ("не более 11
# латинских символов или 15 цифр", 003 and 001); Kcell's ``alpha_name`` has "Максимальная
# длина – 11 символов, может начинаться с цифры" whatever they are (000, table 5).
NUMERIC_SENDER_DIGITS = 15
_NUMERIC_SENDER_DIGITS_BY_KIND = {"kcell": 11}


def numeric_originator_max(settings: UpstreamKinds, account: SendingAccount) -> int:
    """The longest numeric originator every upstream the account may send through (its own
    and its fallbacks) takes: an answer must not fail on the fallback it is moved to."""
    names = [account.upstream, *account.fallback_upstreams]
    kinds = [settings.upstreams[name].kind for name in names if name in settings.upstreams]
    return min((_NUMERIC_SENDER_DIGITS_BY_KIND.get(kind, NUMERIC_SENDER_DIGITS)
                for kind in kinds), default=NUMERIC_SENDER_DIGITS)


def reply_originator(receiver: str | None, phone: str, longest: int, *,
                     tag: str | None = None, key: str | None = None,
                     login: str = "") -> str | None:
    """The number the customer texted, as the sender of the answer, when it may be one.

    002 line 817: "Если указан цифровой отправитель, абонент может отправить ответное
    сообщение" - only a numeric sender lets the customer reply. 002 line 69: a numeric
    sender has at most 15 digits (``longest``: fewer for some upstreams), and "На российские
    номера телефонов запрещена отправка сообщений с цифровым отправителем": to a Russian
    phone the account's (alphanumeric) originator is kept, or the answer would be refused.

    Only an address the bridge wrote counts: ``tag`` must be :func:`receiver_tag` of the
    reply account's ``key``, or anyone who may mail that account could pick any sender."""
    if receiver is None or not receiver.isascii() or not receiver.isdigit():
        return None
    if tag is None or key is None or not hmac.compare_digest(
            tag, receiver_tag(key, login, phone, receiver)):
        return None
    if len(receiver) > longest:
        return None
    try:
        number = phonenumbers.parse("+" + phone, None)
    except phonenumbers.NumberParseException:
        return None
    if phonenumbers.region_code_for_number(number) == "RU":
        return None
    return receiver


def build_v1_requests(
    login: str, account: SendingAccount, recipient: Recipient, mail: ParsedMail, *,
    numeric_originator_max: int = NUMERIC_SENDER_DIGITS,
) -> list[SendRequest]:
    """002 line 1768: phone in the address (Subject ignored) or in the Subject; body = text.

    An address that names the number the customer texted (``PHONE.login+NUMBER@``, the
    Reply-To of a forwarded SMS) answers from that number where :func:`reply_originator`
    allows it; otherwise the account's originator is the sender, as for any v1 mail."""
    if recipient.phone is not None:
        phones = [normalize_phone(recipient.phone)]
    else:
        if not mail.subject.strip():
            raise IntakeError(550, "5.1.3", "No phone number in the Subject", 403)
        phones = split_phone_list(mail.subject)
        if not phones:
            raise IntakeError(550, "5.1.3", "No phone number in the Subject", 403)
    text = clean_text(mail, account)
    if not text and mail.text.strip():
        # Quotes and signatures only: say so, and show what came, for the bounce the agent reads.
        raise IntakeError(550, "5.6.0", empty_reply_message(mail.text), 405)
    if not text:
        raise IntakeError(550, "5.6.0", "No message text", 405)
    originator = validate_originator(account.originator) if account.originator else None
    transliterated = account.encoding == "transliterate"
    return [
        make_request(
            login,
            account,
            phone,
            text,
            originator=reply_originator(
                recipient.receiver, phone, numeric_originator_max, tag=recipient.receiver_tag,
                key=account.password.get_secret_value(), login=login)
            or originator,
            transliterated=transliterated,
            max_parts=account.max_parts,
        )
        for phone in dict.fromkeys(phones)
    ]


@dataclass(frozen=True)
class V2Mail:
    login: str
    requests: list[SendRequest]
    reply_to_email: bool
    want_sms_ids: bool
    skipped_phones: list[str]


def _flag(fields: dict[str, str], name: str) -> bool:
    value = fields.get(name, "0").strip()
    if value not in ("0", "1", ""):
        raise IntakeError(550, "5.6.0", f"{name} must be 0 or 1", 404)
    return value == "1"


def _int(fields: dict[str, str], name: str, low: int, high: int, code: int) -> int | None:
    value = fields.get(name, "").strip()
    if not value:
        return None
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise IntakeError(550, "5.6.0", f"{name} must be a number from {low} to {high}", code)
    return int(value)


def parse_start_date(value: str, now: float) -> float | None:
    """``start_date`` "YYYY-MM-DD HH:MM:SS" in UTC+3 → epoch seconds (002, HTTP API v1)."""
    value = value.strip()
    if not value:
        return None
    try:
        moment = datetime.strptime(value, "%Y-%m-%d %H:%M:%S").replace(tzinfo=PROVIDER_TZ)
    except ValueError as exc:
        raise IntakeError(550, "5.6.0", f'Invalid start_date format: "{value[:25]}"', 416) from exc
    epoch = moment.timestamp()
    if epoch < now - 300:
        raise IntakeError(550, "5.6.0", f'start_date "{value}" is in the past', 417)
    return epoch


def authenticate_v2(
    settings: AccountBook[AccountT], fields: dict[str, str]
) -> tuple[str, AccountT]:
    login = fields.get("login", "").strip()
    if not login:
        raise IntakeError(550, "5.7.8", "login param is missing", 401)
    password = fields.get("password", "")
    if not password:
        raise IntakeError(550, "5.7.8", "password param is missing", 402)
    account = settings.account(login)
    # Compare bytes: hmac.compare_digest raises TypeError on non-ASCII str.
    expected = account.password.get_secret_value().encode() if account else b"\0invalid"
    if not hmac.compare_digest(password.encode(), expected) or account is None:
        raise IntakeError(550, "5.7.8", "Authentication failed: wrong login or password", 411)
    return settings.canonical_login(login), account


def _individual_pairs(
    fields: dict[str, str], with_push_id: bool
) -> list[tuple[str, str, str | None]]:
    """``phones`` with ``individual_messages=1``: "phone text" pairs (002, HTTP API v1)."""
    delimiter = fields.get("delimiter") or "\n"
    pairs: list[tuple[str, str, str | None]] = []
    for index, chunk in enumerate(fields.get("phones", "").split(delimiter), start=1):
        chunk = chunk.strip()
        if not chunk:
            continue
        head, _, text = chunk.partition(" ")
        push_id = None
        if with_push_id:
            push_id, colon, head = head.partition(":")
            if not colon:
                raise IntakeError(550, "5.6.0", f"Line {index}: push_id:phone expected", 422)
        if not head:
            raise IntakeError(550, "5.6.0", f'No phone in line {index}: "{chunk[:30]}"', 422)
        pairs.append((head, text.strip(), push_id))
    return pairs


def build_v2_requests(
    fields: dict[str, str], login: str, account: SendingAccount, now: float
) -> V2Mail:
    """002 line 1811: the body carries HTTP API v1 parameters as ``field: value`` pairs.

    ``fields`` come from :func:`parse_v2_body`, ``login``/``account`` from
    :func:`authenticate_v2`.
    """
    if fields.get("group", "").strip():
        raise IntakeError(550, "5.1.1", f'No such group: "{fields["group"][:40]}"', 413)
    individual = _flag(fields, "individual_messages")
    with_push_id = _flag(fields, "with_push_id")
    want_sms_ids = _flag(fields, "want_sms_ids")
    ignore_format = _flag(fields, "ignore_phone_format")
    rus = _int(fields, "rus", 0, 5, 404)
    if rus is not None and rus not in (0, 1, 5):
        raise IntakeError(550, "5.6.0", "rus must be 0, 1 or 5", 404)
    transliterated = rus == 0 if rus is not None else account.encoding == "transliterate"
    max_parts = _int(fields, "max_parts", 1, 255, 404) or account.max_parts
    validity = _int(fields, "timeout", 1, 86400, 404)
    not_before = parse_start_date(fields.get("start_date", ""), now)
    if want_sms_ids and not_before is not None and not_before > now + 300:
        raise IntakeError(550, "5.6.0", "ids are not given for delayed messages", 418)
    originator_field = fields.get("originator", "").strip()
    originator = originator_field or account.originator
    if originator:
        originator = validate_originator(originator)

    if individual:
        items = _individual_pairs(fields, with_push_id)
    else:
        if not fields.get("phones", "").strip():
            raise IntakeError(550, "5.1.3", "No phone numbers given", 403)
        message = fields.get("message", "")
        if not message.strip():
            raise IntakeError(550, "5.6.0", "No message text given", 405)
        raw_phones = [p for p in fields["phones"].replace("\n", ",").split(",") if p.strip()]
        items = [(p, message, None) for p in raw_phones]
    if not items:
        raise IntakeError(550, "5.1.3", "No phone numbers given", 407)

    requests: list[SendRequest] = []
    skipped: list[str] = []
    for raw_phone, text, push_id in items:
        try:
            phones = split_phone_list(raw_phone)
        except IntakeError:
            if ignore_format:
                skipped.append(raw_phone.strip())
                continue
            raise
        for phone in phones:
            requests.append(
                make_request(
                    login,
                    account,
                    phone,
                    text,
                    originator=originator,
                    transliterated=transliterated,
                    max_parts=max_parts,
                    flash=_flag(fields, "flash"),
                    not_before=not_before,
                    validity=validity,
                    two_byte_concat=_flag(fields, "two_byte_concat"),
                    push_id=push_id,
                    individual=individual,
                )
            )
    if not requests:
        raise IntakeError(550, "5.1.3", "No valid phone number given", 407)
    return V2Mail(login, requests, _flag(fields, "reply_to_email"), want_sms_ids, skipped)
