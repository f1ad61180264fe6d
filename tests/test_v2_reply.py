"""The SMTP v2 ``reply_to_email`` answer (002 line 1811) is built by the intake after the
store committed the messages, not by a callback inside the store's transaction: the store's
writer is never held up by building mail, and the answer carries the committed ids."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from bridge.models import OutboundMail
from bridge.smtp import handler
from tests.conftest import BridgeFactory
from tests.doubles.mailbox import MailboxDouble
from tests.test_smtp_intake import mail, send


async def test_the_reply_is_built_outside_the_store_transaction(
    bridge_factory: BridgeFactory, mailbox: MailboxDouble, monkeypatch: pytest.MonkeyPatch,
) -> None:
    built_on: list[threading.Thread] = []
    build = handler.build_v2_reply

    def recording(*args: Any, **kwargs: Any) -> OutboundMail:
        built_on.append(threading.current_thread())
        return build(*args, **kwargs)

    monkeypatch.setattr(handler, "build_v2_reply", recording)
    # SQLite commits in its writer thread: a reply built inside the transaction is built
    # there, one built by the intake on the event loop's thread.
    bridge = await bridge_factory(accounts={"alerts": {"password": "pw", "upstream": "dryrun"}},
                                  mail={"smarthost": "127.0.0.1",
                                        "smarthost_port": mailbox.port})
    body = ("login: alerts\n\npassword: pw\n\nphones: 79161234567,79161234568\n\n"
            "message: hi\n\nwant_sms_ids: 1\n\nreply_to_email: 1\n")
    code, text = await send(bridge.smtp_port, mail("multi@x", "s", body),
                            sender="erp@example.com")
    assert code == 250, text
    assert built_on == [threading.current_thread()]
    [reply] = await mailbox.wait_for(1)
    xml = reply.message.get_payload(decode=True)
    assert isinstance(xml, bytes)
    ids = sorted(m.id for m in await bridge.store.list_messages())
    assert all(f"<sms_id>{i}</sms_id>".encode() in xml for i in ids) and len(ids) == 2
