"""The one ``send_batch`` loop (``bridge/upstreams/_batch.py``) and the edge cases each
provider gives it as parameters; each provider's own tests run it against its double."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.upstreams._batch import group_batch, send_grouped
from bridge.upstreams.base import OutboundSms, SendReceipt
from tests.sms import outbound_sms


def sms(n: int, phone: str = "", text: str = "t", *, maybe_sent: int = 0) -> OutboundSms:
    return outbound_sms(message_id=n, idempotency_key=f"k{n}", attempt=1,
                       phone=phone or f"7916000000{n}", text=text, encoding="gsm7",
                       maybe_sent=maybe_sent)


def by_text(message: OutboundSms) -> str:
    return message.text


@pytest.mark.parametrize(
    ("batch", "options", "groups"),
    [
        # one request per key, in the order of each key's first message
        ([sms(0, text="a"), sms(1, text="b"), sms(2, text="a")], {}, [[0, 2], [1]]),
        # Devino SOAP: at most 1000 addresses per request
        ([sms(i) for i in range(5)], {"max_group": 2}, [[0, 1], [2, 3], [4]]),
        # Devino REST, SMSC: a phone once per request; it joins the next request with room
        ([sms(0, "7"), sms(1, "7"), sms(2, "8"), sms(3, "7")], {"distinct_phones": True},
         [[0, 2], [1], [3]]),
        # messages settled before any request stay out
        ([sms(0), sms(1), sms(2)], {"skip": [1]}, [[0, 2]]),
    ],
)
def test_groups(batch: list[OutboundSms], options: dict[str, object],
                groups: list[list[int]]) -> None:
    assert group_batch(batch, by_text, **options) == groups  # type: ignore[arg-type]


class Provider:
    """Answers each request by the first message's text: "fail-p" permanent, "fail-t"
    transient, else one receipt per message."""

    def __init__(self) -> None:
        self.requests: list[list[int]] = []

    async def send_group(self, group: list[OutboundSms]) -> Sequence[SendReceipt]:
        self.requests.append([m.message_id for m in group])
        if group[0].text == "fail-p":
            raise PermanentUpstreamError("refused", 7)
        if group[0].text == "fail-t":
            raise TransientUpstreamError("down", "http_500", ambiguous=True)
        return [SendReceipt((f"id{m.message_id}",)) for m in group]


async def test_the_only_requests_failure_is_raised() -> None:
    provider = Provider()
    with pytest.raises(PermanentUpstreamError):
        await send_grouped([sms(0, text="fail-p"), sms(1, text="fail-p")],
                           provider.send_group, key=by_text, upstream="p")


async def test_a_failed_request_fails_its_messages_alone_each_with_its_own_error() -> None:
    provider = Provider()
    results = await send_grouped(
        [sms(0, text="fail-p"), sms(1, text="ok"), sms(2, text="fail-p")],
        provider.send_group, key=by_text, upstream="p")
    first, second, third = results
    assert isinstance(first, PermanentUpstreamError) and isinstance(third, UpstreamError)
    assert first is not third and third.code == 7
    assert second == SendReceipt(("id1",))


async def test_a_settled_message_keeps_a_lone_request_from_raising() -> None:
    """Kcell's lookup, Devino SOAP's missing sender: decided before any request."""
    provider = Provider()

    async def settle(message: OutboundSms) -> SendReceipt | UpstreamError | None:
        if message.maybe_sent:
            return SendReceipt(("earlier",))
        return None

    results = await send_grouped([sms(0, maybe_sent=1), sms(1, text="fail-p")],
                                 provider.send_group, key=by_text, upstream="p", settle=settle)
    assert results[0] == SendReceipt(("earlier",))
    assert isinstance(results[1], PermanentUpstreamError)
    assert provider.requests == [[1]]


async def test_after_a_transient_failure_no_request_follows_where_asked() -> None:
    """SMSC: repeated errors get the caller's IP blocked."""
    provider = Provider()
    batch = [sms(0, text="fail-t"), sms(1, text="b"), sms(2, text="c")]
    results = await send_grouped(batch, provider.send_group, key=by_text, upstream="p",
                                 stop_after_transient=True)
    assert provider.requests == [[0]]
    assert all(isinstance(r, TransientUpstreamError) for r in results)
    assert [r.ambiguous for r in results if isinstance(r, UpstreamError)] == [True, False,
                                                                                False]
    provider = Provider()
    results = await send_grouped(batch, provider.send_group, key=by_text, upstream="p")
    assert provider.requests == [[0], [1], [2]]
    assert results[1:] == [SendReceipt(("id1",)), SendReceipt(("id2",))]
