"""The one redactor: what the bridge writes out of itself — log lines, stored error texts,
the CLI's output — loses every secret on the way.

Three kinds of secrets are recognised:

* configured ones (every ``SecretStr`` of the settings: source secrets, short-code
  passwords, the admin token, account and upstream passwords and keys, webhook and
  reply-script secrets), registered at start by :func:`register_settings` and masked
  wherever they appear, as they are or percent-encoded (a source secret holding ``/`` is
  sent as ``%2F`` in a path);
* the password of a URL's user info (``postgresql://bridge:***@db/x``);
* values of parameters whose name says secret (``password=``, ``psw=``, ``token=`` …), in
  URLs, in texts and in stored request parameters.

Inbound request paths are logged in one shape only, ``/in/SOURCE/********/KIND``, built
from the raw (undecoded) path, and never with their query string.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, quote_plus, unquote_to_bytes

from pydantic import BaseModel, SecretStr

MASK = "********"
# Shorter values are not masked in free text: "demo" would blank every mention of the demo
# account. They are still masked where they are known to be secrets (URLs, parameters).
MIN_SECRET_LENGTH = 4
# Parameter names whose values are secrets (compared in lower case). SMSC-style APIs call
# the password ``psw``.
SECRET_PARAMETERS = frozenset({
    "password", "passwd", "pass", "psw", "pwd", "secret", "token", "access_token",
    "api_key", "apikey", "key", "sign", "signature",
})

_registered: set[str] = set()
_spellings: tuple[str, ...] = ()

_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*):[^\s@/]*@")
_PARAMETER = re.compile(
    r"(?P<head>(?:^|(?<=[?&;\s]))(?:" + "|".join(sorted(SECRET_PARAMETERS, key=len,
                                                        reverse=True))
    + r")=)[^&\s#\"'<>]*",
    re.IGNORECASE,
)


def register_secrets(values: Iterable[str]) -> None:
    """Add configured secrets to the ones masked in every text (process-wide: a process
    may run several bridges, in tests; a secret once configured stays masked)."""
    global _spellings
    added = {v for v in values if len(v) >= MIN_SECRET_LENGTH} - _registered
    if not added:
        return
    _registered.update(added)
    spellings = {form for value in _registered for form in
                 (value, quote(value, safe=""), quote_plus(value, safe=""), quote(value))}
    # Longest first: a secret that contains another is masked whole.
    _spellings = tuple(sorted(spellings, key=len, reverse=True))


def secrets_of(value: Any) -> tuple[set[str], set[str]]:
    """Every ``SecretStr`` value in a settings tree, and every name (table key) in it."""
    secrets: set[str] = set()
    names: set[str] = set()

    def walk(item: Any) -> None:
        if isinstance(item, SecretStr):
            secrets.add(item.get_secret_value())
        elif isinstance(item, BaseModel):
            for field in type(item).model_fields:
                walk(getattr(item, field))
        elif isinstance(item, dict):
            names.update(str(key) for key in item)
            for sub in item.values():
                walk(sub)
        elif isinstance(item, list | tuple):
            for sub in item:
                walk(sub)

    walk(value)
    return secrets, names


def register_settings(settings: BaseModel) -> None:
    """Register the secrets of a configuration. A secret that is also a name in it (the
    ``demo`` account's password is ``demo``) is left out of free texts, where masking it
    would hide every mention of the name; it is still masked in URLs and parameters."""
    secrets, names = secrets_of(settings)
    register_secrets(secrets - names)


def _mask_registered(text: str, extra: Iterable[str] = ()) -> str:
    for secret in (*_spellings, *sorted(extra, key=len, reverse=True)):
        if secret in text:
            text = text.replace(secret, MASK)
    return text


def redact_text(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without configured secrets (and ``secrets``), URL passwords and values of
    secret parameters."""
    if "://" in text:
        text = _USERINFO.sub(rf"\g<head>:{MASK}@", text)
    if "=" in text:
        text = _PARAMETER.sub(rf"\g<head>{MASK}", text)
    return _mask_registered(text, (s for s in secrets if len(s) >= MIN_SECRET_LENGTH))


def redact_url(url: str, secrets: Iterable[str] = ()) -> str:
    """``url`` without the password of its user info (``postgresql://bridge:***@db/x``),
    without values of secret parameters in its query, and without any configured secret or
    one of ``secrets`` (a source secret in a callback URL's path)."""
    scheme, sep, rest = url.partition("://")
    if sep:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            userinfo, _, host = authority.rpartition("@")
            user, colon, _ = userinfo.partition(":")
            authority = f"{user}:{MASK}@{host}" if colon else f"{user}@{host}"
        url = f"{scheme}{sep}{authority}{slash}{path}"
    return redact_text(url, secrets)


_INBOUND_KINDS = frozenset({"mo", "shortcode", "dlr"})
_PUBLIC_PATH = re.compile(r"/(?:healthz|readyz|metrics|api/v1/reply-scripts(?:/[0-9]{1,12})?)")


def redact_path(target: str) -> str:
    """A request target as a log shows it, built from what may be shown only:

    * an inbound path as ``/in/SOURCE/********/KIND`` (or ``/in/SOURCE/KIND`` when the secret
      came in a header), cut on the raw target's ``/`` — so that a secret sent with ``%2F``
      in it is masked whole;
    * the bridge's other paths (health, readiness, metrics, admin API) as they are;
    * any other path as its first segment only (``/wp-admin/…``): what a client sends to a
      path the bridge does not serve may be anything;

    never a query string or fragment, and configured secrets masked in what is left.

    ``target`` must be the raw target (``request.raw_path``): the decoded path turns
    ``%2F`` into ``/`` and moves part of a secret out of its segment.
    """
    path = target.partition("?")[0].partition("#")[0]
    if "://" in path:  # absolute form: http://host/path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    parts = path.split("/")
    if len(parts) >= 4 and parts[0] == "" and parts[1] == "in":
        head, middle, last = ["", "in", parts[2][:64]], parts[3:-1], parts[-1]
        if last in _INBOUND_KINDS:
            path = "/".join([*head, MASK, last] if middle else [*head, last])
        else:
            path = "/".join([*head, MASK])
    elif not _PUBLIC_PATH.fullmatch(path):
        first = parts[1][:64] if len(parts) > 1 else ""
        path = f"/{first}/…" if len(parts) > 2 else f"/{first}"
    return "".join(ch if ch.isprintable() else "?" for ch in _mask_registered(path))


def redact_params(raw: bytes) -> bytes:
    """Form or query parameters (``a=1&password=x``) with the values of secret parameters
    replaced by the mask; everything else byte for byte as received. For storing a
    provider's request: a short-code hit carries the short code's ``password``."""
    if b"=" not in raw:
        return raw
    fields = raw.split(b"&")
    changed = False
    for index, field in enumerate(fields):
        name, equals, _ = field.partition(b"=")
        if equals and _parameter_name(name) in SECRET_PARAMETERS:
            fields[index] = name + b"=" + MASK.encode()
            changed = True
    return b"&".join(fields) if changed else raw


def _parameter_name(name: bytes) -> str:
    return unquote_to_bytes(name.replace(b"+", b" ")).decode("latin-1").strip().lower()


# A v2 body's ``password:`` field (002 "SMTP протокол (вариант 2)": ``field: value`` pairs
# separated by blank lines, a value continuing over single line breaks): the field up to
# the blank line that ends it.
_V2_PASSWORD = re.compile(
    rb"(?im)^(?P<head>[ \t]*password[ \t]*:)[^\r\n]*(?:\r?\n(?![ \t]*\r?\n)[^\r\n]*)*")
_ENCODED_BODY = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:[ \t]*"
                           rb"(?:base64|quoted-printable)")


def redact_mail(raw: bytes, *, v2_text: str | None, limit: int) -> bytes:
    """A received mail as the store may keep it for the operators' console: at most
    ``limit`` bytes, without configured secrets or URL passwords, and — for a v2 mail
    (``v2_text``: its decoded body) — without its ``password:`` field. A v2 body sent
    base64 or quoted-printable cannot be masked where it is encoded: its header block is
    kept with the decoded body, the password masked, in place of the original. (The text of
    a v1 mail is the sender's SMS, kept as written: ``token=…`` in it is not the bridge's.)"""
    head = raw[:limit + 4096]  # room for masks that are shorter or longer than what they hide
    if v2_text is not None:
        if _ENCODED_BODY.search(head):
            size = _header_block_size(head)
            note = (b"[the body as the bridge decoded it: the original, encoded, would show "
                    b"the v2 password]\r\n\r\n")
            head = head[:size] + b"\r\n\r\n" + note + v2_text.encode("utf-8", "replace")
        head = _V2_PASSWORD.sub(rb"\g<head> " + MASK.encode(), head)
    text = _mask_known(head.decode("utf-8", "surrogateescape"))
    return text.encode("utf-8", "surrogateescape")[:limit]


def _mask_known(text: str) -> str:
    """Configured secrets and URL passwords (the cheap part of :func:`redact_text`)."""
    if "://" in text:
        text = _USERINFO.sub(rf"\g<head>:{MASK}@", text)
    return _mask_registered(text)


def _header_block_size(raw: bytes) -> int:
    found = [i for i in (raw.find(b"\r\n\r\n"), raw.find(b"\n\n")) if i >= 0]
    return min(found) if found else len(raw)


# Credentials in provider requests and answers besides the configured ones: fields of JSON
# and XML bodies and of queries that name a password, key, token or session (a session id
# of Devino's APIs stands for the login and password that obtained it).
_CREDENTIAL_NAMES = (r"password|passwd|psw|pwd|secret|token|access_token|api_?key|apikey|"
                     r"session_?id|GetSessionIDResult")
_CREDENTIAL_JSON = re.compile(
    r'(?i)("(?:' + _CREDENTIAL_NAMES + r')"\s*:\s*)("(?:[^"\\]|\\.)*"|[^\s,}\]]+)')
_CREDENTIAL_XML = re.compile(
    r"(?i)(<(?:[\w-]+:)?(?P<name>" + _CREDENTIAL_NAMES + r")\b[^>]*>)[^<]*(</)")
# Every ``name=value`` pair (a character class first: a scan, where an alternation of names
# would be tried at every position), masked when the name is a credential's.
_PAIR = re.compile(r"(?<![\w.-])([A-Za-z_][\w.-]*)=([^&\s#\"'<>]*)")
_CREDENTIAL_NAME = re.compile(r"(?i)(?:" + _CREDENTIAL_NAMES + r")\Z")


def _mask_pair(match: re.Match[str]) -> str:
    if _CREDENTIAL_NAME.match(match.group(1)) or match.group(1).lower() in SECRET_PARAMETERS:
        return f"{match.group(1)}={MASK}"
    return match.group(0)


def redact_exchange(data: bytes, limit: int) -> bytes:
    """A provider request or answer (URL, form, JSON or XML body) as the store may keep it
    for the operators' console: at most ``limit`` bytes, with every credential masked —
    configured secrets, URL passwords, and the values of fields that name a password, key,
    token or session id."""
    text = data[:limit + 4096].decode("utf-8", "surrogateescape")
    if '"' in text:
        text = _CREDENTIAL_JSON.sub(rf'\1"{MASK}"', text)
    if "<" in text:
        text = _CREDENTIAL_XML.sub(rf"\g<1>{MASK}\3", text)
    if "=" in text:
        text = _PAIR.sub(_mask_pair, text)
    return _mask_known(text).encode("utf-8", "surrogateescape")[:limit]
