"""Logging: JSON lines when not on a terminal, readable text on one. No secrets are logged:
settings hold them as ``SecretStr`` and log calls pass ids, never credentials or bodies; and
every record goes through :func:`bridge.redact.redact_text` on its way out
(:class:`RedactingFilter`), so that a configured secret quoted by a library's exception
text or a URL is masked all the same."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

from bridge.redact import redact_text

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, its extra fields, its exception and stack."""

    def __init__(self) -> None:
        super().__init__()
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken record is the handler's to report (handleError)
            return True
        clean = redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        for key, value in list(vars(record).items()):
            if key in _STANDARD or key.startswith("_") or value is None:
                continue
            text = value if isinstance(value, str) else str(value)
            clean = redact_text(text)
            if clean != text:
                setattr(record, key, clean)
        if record.exc_info and not record.exc_text:
            record.exc_text = self._formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact_text(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_text(record.stack_info)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "pid": record.process,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_text:  # set (and redacted) by RedactingFilter
            entry["exc"] = record.exc_text
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extra = {
            k: v for k, v in vars(record).items() if k not in _STANDARD and not k.startswith("_")
        }
        if extra:
            base += " " + " ".join(f"{k}={v}" for k, v in extra.items())
        return base


def setup_logging(level: str = "INFO", fmt: str = "auto", *, access_log: bool = False) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    text = TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(JsonFormatter() if use_json else text)
    handler.addFilter(RedactingFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiosmtpd logs every command at INFO/DEBUG with peer data; keep it to warnings.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, root.level))
    # One line per HTTP request (redacted) only when asked for: refusals are logged anyway.
    logging.getLogger("aiohttp.access").setLevel(root.level if access_log else logging.WARNING)
    # httpx logs every request URL at INFO; reply-script URLs may carry tokens.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
