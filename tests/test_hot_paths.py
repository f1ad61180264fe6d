"""The cheap forms of per-request work on the hot paths answer exactly as the full ones.

Each shortcut (a substring test before a regex, a cached value of a frozen one, a validity
check on joined parts) must not change what a mail or a request gets: these tests compare
the shortcut with the work it spares over every case that matters.
"""

from __future__ import annotations

import itertools

from bridge.smtp.handler import _SMUGGLED_END, smuggled_end


def test_smuggled_end_shortcut_agrees_with_the_regex_on_every_short_sequence() -> None:
    # Every sequence of up to six bytes out of CR, LF, "." and a letter, alone and inside
    # a mail's text: the substring test may only skip bodies the regex finds nothing in.
    alphabet = [b"\r", b"\n", b".", b"x"]
    for length in range(1, 7):
        for parts in itertools.product(alphabet, repeat=length):
            body = b"".join(parts)
            for raw in (body, b"Subject: a\r\n\r\ntext" + body + b"more\r\n"):
                assert smuggled_end(raw) == (_SMUGGLED_END.search(raw) is not None), raw


def test_a_mail_without_a_dot_line_is_not_refused_and_a_smuggled_end_is() -> None:
    assert not smuggled_end(b"Subject: a\r\n\r\nno dot line here.\r\n")
    assert smuggled_end(b"Subject: a\r\n\r\ntext\n.\r\nMAIL FROM:<x@y>\r\n")


def test_stored_options_read_back_the_same_each_time_as_text_or_bytes() -> None:
    from bridge.models import SendOptions

    options = SendOptions(originator="Shop", flash=True, fallbacks=("b", "c"))
    text = options.to_json()
    for _ in range(3):  # the second read comes from the cache: the same value
        assert SendOptions.from_json(text) == options
        assert SendOptions.from_json(text.encode()) == options
    assert SendOptions.from_json('{"flash": null}') == SendOptions()


def test_an_email_jobs_payload_is_the_json_dumps_of_its_fields() -> None:
    import json

    from bridge.models import InboundMessage
    from bridge.relays.forward import message_from_payload, message_payload

    texts = ["", "plain", "Привет, мир", 'quote " and \\ back', "tab\tnew\nline\x00\x1f\u2028",
             "emoji \U0001f600", "\ufffd"]
    for text in texts:
        for sms_id, recipient in ((None, None), ("id-1", "7900"), ('"x"', "")):
            for charset_error in (False, True):
                message = InboundMessage(source="src", kind="mo", sms_id=sms_id,
                                         phone="79161234567", text=text, recipient=recipient,
                                         charset="windows-1251", charset_error=charset_error)
                for received_at in (None, 1700000000.123456, 0.1 + 0.2, 5.0, 17):
                    expected = json.dumps({
                        "source": "src", "kind": "mo", "sms_id": sms_id,
                        "phone": "79161234567", "text": text, "recipient": recipient,
                        "charset": "windows-1251", "charset_error": charset_error,
                        "received_at": received_at,
                    }, ensure_ascii=False).encode("utf-8")
                    payload = message_payload(message, received_at)
                    assert payload == expected
                    assert message_from_payload(payload).text == text
