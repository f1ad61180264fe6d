"""The bridge's exception tree: every error it raises on purpose, in one place.

::

    BridgeError
    ├── ListenError              a port cannot be listened on: one line at start, exit 1
    ├── IntakeError              a mail (or one recipient) that cannot be accepted; carries the
    │                            SMTP reply and, where one fits, the spec's API error code
    │                            (002, "Коды ошибок API", line 1988)
    ├── InboundError             a provider push refused: HTTP status + JSON body naming the field
    ├── StoreUnavailable         the store cannot commit now: answer 451 4.3.0 / 503, lose nothing
    ├── AnswerRefused            an HTTP answer not read: over the byte cap, or in a content
    │   │                        coding the bridge refuses
    │   └── AnswerTooLarge       over the cap, on the wire or decoded
    ├── EgressRefused            an outgoing call to a user-registered URL (webhook, reply script)
    │   │                        refused by the egress guard: never retried
    │   └── ResolutionFailed     its host name did not resolve now: retried
    ├── ReplyScriptFailed        a reply script answered other than 2xx: the fallback reply goes
    ├── WebhookFailed            a webhook answered other than 2xx (or 410): retried, after its
    │                            Retry-After if it gave one
    ├── PermanentForwardError    no later attempt of a forward can succeed: dead-lettered at once
    │   ├── TargetGone           the webhook answered 410 Gone: disabled until enabled again
    │   ├── TargetDisabled       the webhook is disabled (after a 410)
    │   └── TargetNotConfigured  the configuration no longer names the webhook
    ├── SoapFault                a provider's SOAP service answered a Fault; the provider maps
    │                            it to an UpstreamError, so it never leaves the provider
    └── UpstreamError            a provider call failed
        ├── TransientUpstreamError   try again later (connection, timeout, 5xx, 429, code 1000)
        │   └── SessionFault         the provider refused the session id: renew it, repeat once
        └── PermanentUpstreamError   never retried (bad number, auth, balance …)

Each is mapped at its boundary: an IntakeError to an SMTP reply, an InboundError to an HTTP
answer, an UpstreamError to the outbox's retry decision, a forward's error to a retry or a
dead letter. Retry is decided from the class and the provider's code, never from message text;
an exception outside this tree (a KeyError, a LookupError) is a bug, never a verdict on the
target, so the workers retry it.
"""

from __future__ import annotations

import re
from typing import Any


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


class ListenError(BridgeError):
    """A port cannot be listened on (in use, no permission, unknown host): one line."""


class IntakeError(BridgeError):
    """A refusal during the SMTP transaction.

    ``smtp_code`` and ``enhanced`` form the reply (``550 5.1.1``); ``api_code`` is the spec's
    error code shown in the reply text so a sender sees the same code the provider API gives.
    """

    def __init__(
        self, smtp_code: int, enhanced: str, text: str, api_code: int | None = None
    ) -> None:
        super().__init__(text)
        self.smtp_code = smtp_code
        self.enhanced = enhanced
        self.text = text
        self.api_code = api_code
        # A mail to send back to the sender about this refusal (SMTP v2 ``reply_to_email``).
        self.reply: Any = None

    @property
    def reason(self) -> str:
        """A short label for metrics and logs."""
        return f"api_{self.api_code}" if self.api_code else f"smtp_{self.smtp_code}"

    def smtp_reply(self) -> str:
        # Reply text is one line of printable ASCII: values quoted from the mail are sanitised
        # by the caller, and CR/LF here would let a sender forge extra reply lines.
        text = "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in self.text)[:400]
        if self.api_code is not None:
            text = f"{self.api_code} {text}"
        return f"{self.smtp_code} {self.enhanced} {text}"


class InboundError(BridgeError):
    """A provider's push that cannot be accepted: an HTTP status and a JSON body naming the
    field at fault (``{"error": "...", "field": "phone"}``)."""

    def __init__(self, status: int, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field

    def body(self) -> dict[str, str]:
        body = {"error": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class StoreUnavailable(BridgeError):
    """The store could not commit; nothing was promised to the client."""


class AnswerRefused(BridgeError):
    """An answer was not read: larger than the cap, or in a content coding we refuse."""


class AnswerTooLarge(AnswerRefused):
    """The answer is larger than the cap, on the wire or decoded."""


class EgressRefused(BridgeError):
    """An outgoing call was refused: the target address (or URL) is not one we may reach."""


class ResolutionFailed(EgressRefused):
    """The target's name did not resolve (now): a resolver hiccup is temporary, so a
    forward retries it, while the admin API refuses a URL whose host does not resolve."""


class ReplyScriptFailed(BridgeError):
    """The script answered something other than 2xx."""


class WebhookFailed(BridgeError):
    """The webhook receiver did not answer 2xx; ``retry_after``: seconds it asked us to
    wait (429, 503); ``answer``: the start of its answer, for the attempt's history."""

    def __init__(self, status: int, retry_after: float | None = None,
                 answer: str = "") -> None:
        wait = f", Retry-After {retry_after:.0f} s" if retry_after is not None else ""
        super().__init__(f"webhook answered HTTP {status}{wait}")
        self.status = status
        self.retry_after = retry_after
        self.answer = answer


class PermanentForwardError(BridgeError):
    """No later attempt can succeed: the forward is dead-lettered at once."""


class TargetGone(PermanentForwardError):
    """The webhook answered 410 Gone: it is disabled until enabled again."""

    def __init__(self, message: str, answer: str = "") -> None:
        super().__init__(message)
        self.answer = answer


class TargetDisabled(PermanentForwardError):
    """The webhook was disabled after a 410 Gone."""


class TargetNotConfigured(PermanentForwardError):
    """The job names a webhook the configuration no longer has."""


class SoapFault(BridgeError):
    """A SOAP ``Fault`` answered by a provider's service: ``code`` is the local name of its
    code (1.2 ``Code/Value``: ``Sender``, ``Receiver``, ``VersionMismatch`` …; 1.1
    ``faultcode``: ``Client``, ``Server``), ``subcode`` that of ``Code/Subcode/Value`` if
    any, ``reason`` its text (1.2 ``Reason/Text``, 1.1 ``faultstring``)."""

    def __init__(self, code: str, reason: str, subcode: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.subcode = subcode
        self.reason = reason

    @property
    def message(self) -> str:
        """The service's own message: ASP.NET services write ``Server was unable to process
        request. ---> <exception message>`` (``&gt;`` being the ``>``)."""
        return re.split(r"-+\s*>", self.reason)[-1].strip()


class UpstreamError(BridgeError):
    """A provider call failed. ``code`` is the provider's own error code when it gave one."""

    def __init__(
        self,
        text: str,
        code: int | str | None = None,
        *,
        retry_after: float | None = None,
        ambiguous: bool = False,
    ) -> None:
        super().__init__(text)
        self.text = text
        self.code = code
        self.retry_after = retry_after
        # ambiguous: the request may have reached the provider (read timeout, 5xx after send)
        self.ambiguous = ambiguous

    def __str__(self) -> str:
        return f"{self.code} {self.text}" if self.code is not None else self.text


class TransientUpstreamError(UpstreamError):
    """Worth retrying later, possibly on the backup host or a fallback upstream."""


class SessionFault(TransientUpstreamError):
    """The provider refused the session id: renew it and repeat the call once."""


class PermanentUpstreamError(UpstreamError):
    """Retrying cannot help; the message fails and its sender gets a bounce."""
