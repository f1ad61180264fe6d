"""Provider requests built by hand in tests: the options' fields as keywords, gathered into
the one :class:`SendOptions` value a request carries."""

from __future__ import annotations

from typing import Any

from bridge.models import OutboundSms, SendOptions

_OPTION_FIELDS = frozenset({"originator", "flash", "max_parts", "validity", "transliterate",
                            "two_byte_concat", "push_id", "not_before"})


def outbound_sms(*args: Any, **values: Any) -> OutboundSms:
    """``OutboundSms(...)`` where ``originator=``, ``flash=`` … stand for its options."""
    options = {name: values.pop(name) for name in list(values) if name in _OPTION_FIELDS}
    if options:
        assert "options" not in values, "give the options or their fields, not both"
        values["options"] = SendOptions(**options)
    return OutboundSms(*args, **values)
