"""Calling a short code's reply script (002 line 1976).

The call follows the spec's template — ``GET url?message=…&phone=…&sms_id=…&shortcode=…`` —
or sends the same fields as a POST form, UTF-8 encoded. It is signed like a Standard Webhook
(``webhook-id``, ``webhook-timestamp``, ``webhook-signature`` over the query string or the
form body) with the script's shared secret, so the script can check the caller. Outgoing
calls pass the SSRF guard of :mod:`bridge.relays.egress`.

The answer is SMS text, at most 255 parts of a few hundred bytes: more than
:data:`MAX_REPLY_ANSWER_BYTES` on the wire or decoded is refused (the fallback reply is
sent), so a hostile script cannot make the bridge inflate or clean megabytes.
"""

from __future__ import annotations

import re
from urllib.parse import urlencode

import httpx

from bridge.errors import ReplyScriptFailed
from bridge.models import InboundMessage
from bridge.parsing.mail import resolve_charset
from bridge.relays.egress import EgressPolicy, guarded_request
from bridge.relays.routing import ReplyScript
from bridge.relays.signing import signature_headers

MAX_REPLY_ANSWER_BYTES = 64 * 1024


async def call_reply_script(
    client: httpx.AsyncClient,
    egress: EgressPolicy,
    script: ReplyScript,
    message: InboundMessage,
    *,
    timeout: float,
) -> str:
    """The script's answer text; raises on refusal, timeout, a non-2xx answer, or an
    answer larger than :data:`MAX_REPLY_ANSWER_BYTES` (``AnswerTooLarge``)."""
    fields = urlencode(
        {
            "message": message.text,
            "phone": message.phone,
            "sms_id": message.sms_id or "",
            "shortcode": message.recipient or "",
        },
        encoding="utf-8",
    ).encode("ascii")
    headers: dict[str, str] = {}
    if script.secret:
        # Standard Webhooks ids are plain tokens; an sms_id may hold any character.
        token = re.sub(r"[^A-Za-z0-9_-]", "_", message.sms_id or "none")[:64]
        headers.update(signature_headers(script.secret, f"sms_{token}", fields))
    if script.method == "POST":
        headers["Content-Type"] = "application/x-www-form-urlencoded; charset=utf-8"
        response = await guarded_request(client, egress, "POST", script.url, timeout=timeout,
                                         content=fields, headers=headers,
                                         max_answer_bytes=MAX_REPLY_ANSWER_BYTES)
    else:
        separator = "&" if "?" in script.url else "?"
        url = script.url + separator + fields.decode("ascii")
        response = await guarded_request(client, egress, "GET", url, timeout=timeout,
                                         headers=headers,
                                         max_answer_bytes=MAX_REPLY_ANSWER_BYTES)
    if not 200 <= response.status_code < 300:
        raise ReplyScriptFailed(f"reply script answered HTTP {response.status_code}")
    charset = resolve_charset(response.charset_encoding) or "utf-8"
    return response.content.decode(charset, errors="replace")
