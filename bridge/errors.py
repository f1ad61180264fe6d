"""The bridge's exception tree.

::

    BridgeError
    ├── IntakeError            a mail (or one recipient) that cannot be accepted; carries the
    │                          SMTP reply and, where one fits, the spec's API error code
    │                          (002, "Коды ошибок API", line 1988)
    ├── InboundError           a provider push refused: HTTP status + JSON body naming the field
    ├── StoreUnavailable       the store cannot commit now: answer 451 4.3.0 / 503, lose nothing
    └── UpstreamError          a provider call failed
        ├── TransientUpstreamError   try again later (connection, timeout, 5xx, 429, code 1000)
        └── PermanentUpstreamError   never retried (bad number, auth, balance …)

Retry is decided from the class and the provider's code, never from message text.
"""

from __future__ import annotations

from typing import Any


class BridgeError(Exception):
    """Root of every error the bridge raises on purpose."""


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


class PermanentUpstreamError(UpstreamError):
    """Retrying cannot help; the message fails and its sender gets a bounce."""
