"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

Each webhook carries three headers: ``webhook-id`` (unique message id, constant across
retries), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature``: ``v1,`` followed by
the base64 HMAC-SHA256 of ``f"{msg_id}.{timestamp}.{body}"``. Several signatures may be
given, separated by spaces (during secret rotation); one valid ``v1`` signature suffices.

Secrets look like ``whsec_`` + base64 of the key; a secret without the prefix is used as its
raw UTF-8 bytes. The id and timestamp are signed with the body, and the timestamp is checked
against a tolerance, so a captured request cannot be replayed later or with another id.

Comparison is constant-time on bytes: :func:`hmac.compare_digest` raises ``TypeError`` on
non-ASCII ``str`` (``TypeError: comparing strings with non-ASCII characters is not
supported``), and a header value is attacker-controlled.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
_TIMESTAMP = re.compile(r"[0-9]{1,15}")  # ASCII digits only: int() would accept "٣" or " 1_0"


def _key(secret: str) -> bytes:
    """The HMAC key of ``secret``; a ``whsec_`` secret with bad base64 or no key after the
    prefix is a ValueError (an empty HMAC key would sign with nothing secret at all)."""
    if secret.startswith(SECRET_PREFIX):
        try:
            key = base64.b64decode(secret[len(SECRET_PREFIX):], validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("a 'whsec_' secret must go on with the base64 of the key; "
                             f"this one does not ({exc})") from None
        if not key:
            raise ValueError("a 'whsec_' secret must go on with the base64 of the key; "
                             "this one is empty")
        return key
    if not secret:
        raise ValueError("the secret is empty")
    return secret.encode("utf-8")


def check_secret(secret: str) -> str:
    """``secret`` if it can sign (the settings refuse a malformed one at start)."""
    _key(secret)
    return secret


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    # "surrogatepass": a received id may hold lone surrogates (surrogateescape-decoded header)
    signed = f"{msg_id}.{timestamp}.".encode("utf-8", "surrogatepass") + body
    return hmac.new(key, signed, hashlib.sha256).digest()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value for one message: ``"v1,<base64 HMAC-SHA256>"``."""
    digest = _digest(_key(secret), msg_id, timestamp, body)
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(
    secret: str, msg_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The three Standard Webhooks headers for sending ``body`` now (or at ``now``).

    ``msg_id`` goes into a header verbatim, so it must be printable ASCII (a CR/LF would
    forge headers) and must not contain ``.``, the separator of the signed content.
    """
    if not msg_id or not all(33 <= ord(ch) < 127 for ch in msg_id) or "." in msg_id:
        raise ValueError("webhook id must be non-empty printable ASCII without '.' or spaces")
    timestamp = int(time.time() if now is None else now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance: float = 300,
    now: float | None = None,
) -> bool:
    """True if ``headers`` carry a valid ``v1`` signature of ``body``, signed recently.

    Header names are matched case-insensitively. The timestamp must lie within
    ``tolerance`` seconds of ``now`` (either way: too old is a replay, far future is forged
    or a broken clock). Any one of several space-separated signatures may match; other
    versions are ignored. Malformed or non-ASCII values give False, never an exception;
    only a malformed ``whsec_`` secret (our configuration) raises ValueError.
    """
    key = _key(secret)
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id")
    raw_timestamp = lowered.get("webhook-timestamp")
    raw_signatures = lowered.get("webhook-signature")
    if not msg_id or raw_timestamp is None or not raw_signatures:
        return False
    if not _TIMESTAMP.fullmatch(raw_timestamp):
        return False
    timestamp = int(raw_timestamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        return False
    expected = base64.b64encode(_digest(key, msg_id, timestamp, body))
    valid = False
    for candidate in raw_signatures.split(" "):
        version, sep, value = candidate.partition(",")
        if sep != "," or version != "v1":
            continue
        # Bytes on both sides; "surrogatepass" so no str can make encode() raise.
        if hmac.compare_digest(expected, value.encode("utf-8", "surrogatepass")):
            valid = True  # no early exit: the time taken does not tell which one matched
    return valid
