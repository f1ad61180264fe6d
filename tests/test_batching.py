"""The dispatcher uses an upstream's batch endpoint: many SMS, one request."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import BOTH_STORES, BridgeFactory
from tests.doubles.smsc import SmscDouble
from tests.test_smtp_intake import mail, send, wait_status

# The behaviour holds on both stores.
pytestmark = BOTH_STORES


@pytest.fixture
async def double() -> AsyncIterator[SmscDouble]:
    async with SmscDouble() as provider:
        provider.success_form = "ids"  # replies name the id, so its mapping per phone shows
        yield provider


async def test_one_mail_to_five_numbers_is_one_provider_request(
    bridge_factory: BridgeFactory, double: SmscDouble
) -> None:
    bridge = await bridge_factory(
        upstreams={"p": {"kind": "smsc", "base_url": double.url, "login": "acme",
                         "password": "s3cret", "status_poll_interval": 0,
                         "originator": "ACME"}},
        accounts={"alerts": {"password": "pw", "upstream": "p"}},
    )
    phones = [f"7916123456{n}" for n in range(5)]
    code, reply = await send(bridge.smtp_port, mail("alerts@x", ", ".join(phones), "disk full"))
    assert code == 250, reply
    accepted = await double.wait_for_accepted(5)
    await wait_status(bridge, 5, "sent")
    sends = [r for r in double.requests if r.path == "/sys/send.php"]
    assert len(sends) == 1
    assert sorted(sends[0].form["phones"].split(",")) == phones
    assert sends[0].form["sender"] == "ACME"  # the upstream's default sender
    stored = {m.phone: m.upstream_ids for m in await bridge.store.list_messages()}
    assert stored == {a.phone: [a.provider_id] for a in accepted}


async def test_a_failed_batch_request_is_retried_per_message(
    bridge_factory: BridgeFactory, double: SmscDouble
) -> None:
    bridge = await bridge_factory(
        upstreams={"p": {"kind": "smsc", "base_url": double.url, "login": "acme",
                         "password": "s3cret", "status_poll_interval": 0}},
        accounts={"alerts": {"password": "pw", "upstream": "p", "originator": "ACME"}},
    )
    double.fail_next(1, "http500")
    phones = ["79161234560", "79161234561", "79161234562"]
    code, _ = await send(bridge.smtp_port, mail("alerts@x", ", ".join(phones), "retry me"))
    assert code == 250
    await wait_status(bridge, 3, "sent")
    assert sorted(a.phone for a in double.accepted) == phones
    events = [e["status"] for m in await bridge.store.list_messages()
              for e in await bridge.store.message_events(m.id)]
    assert events.count("retry") == 3 and events.count("sent") == 3
