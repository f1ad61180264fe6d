"""One conformance suite for every provider kind, each against its spec-built double: one SMS
sent, a batch sent (where the provider has a batch endpoint), a refusal that is permanent, and
a delivery status (polled, or received over the provider's own connection). What differs
between providers is in :data:`CASES`; what every provider must do is in the tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from bridge.errors import PermanentUpstreamError
from bridge.models import DeliveryReport
from bridge.settings import upstream_settings
from bridge.upstreams import registry
from bridge.upstreams.base import (
    BatchSending,
    OutboundSms,
    ReceivingUpstream,
    SendReceipt,
    StatusPolling,
    Upstream,
)
from tests.doubles.devino_rest import DevinoRestDouble
from tests.doubles.devino_soap import DevinoSoapDouble
from tests.doubles.kcell import KcellDouble
from tests.doubles.smpp_smsc import SmppSmscDouble
from tests.doubles.smsc import SmscDouble
from tests.doubles.smstraffic import SmsTrafficDouble
from tests.sms import outbound_sms
from tests.test_upstream_smpp import RecordingSink

LOGIN, PASSWORD = "acme", "s3cret"


@dataclass(frozen=True)
class Case:
    """How to run one provider kind against its double."""

    kind: str
    double: Callable[[], Any]  # an async context manager serving the provider's API
    settings: Callable[[Any], dict[str, Any]]  # the upstream table, given the double
    refuse: Callable[[Any], None]  # the next send is refused for good
    deliver: Callable[[Any, str], Any]  # the double reports the id delivered
    originator: str | None = None
    prepare: Callable[[Any], None] = lambda double: None  # before the upstream is built


def http_settings(double: Any, **extra: Any) -> dict[str, Any]:
    return {"base_url": double.url, "login": LOGIN, "password": PASSWORD, "timeout": 5.0,
            **extra}


CASES = [
    Case("smstraffic_v1", lambda: SmsTrafficDouble(login=LOGIN, password=PASSWORD),
         http_settings, lambda d: d.fail_next(1, "error", code=401),
         lambda d, pid: d.set_status(pid, "Delivered")),
    Case("smstraffic_v2", lambda: SmsTrafficDouble(api_key="1837/key"),
         lambda d: {"base_url": d.url, "api_key": "1837/key", "timeout": 5.0},
         lambda d: d.fail_next(1, "error", code=401),
         lambda d, pid: d.set_status(pid, "Delivered")),
    Case("smstraffic_soap", lambda: SmsTrafficDouble(login=LOGIN, password=PASSWORD),
         http_settings, lambda d: d.fail_next(1, "fault", code="Sender", text="bad request"),
         lambda d, pid: d.set_status(pid, "Delivered")),
    Case("kcell", lambda: KcellDouble(login=LOGIN, password=PASSWORD, client_id="acme"),
         lambda d: http_settings(d, client_id="acme"),
         lambda d: d.fail_next(1, "error", code=36024),
         lambda d, pid: d.set_status(pid, "delivered"), originator="ACME"),
    Case("devino_rest", lambda: DevinoRestDouble(login=LOGIN, password=PASSWORD),
         http_settings, lambda d: d.fail_next(1, "error", code=2),
         lambda d, pid: d.set_status(pid, 0), originator="ACME"),
    Case("devino_soap", lambda: DevinoSoapDouble(login=LOGIN, password=PASSWORD),
         http_settings,
         lambda d: d.fail_next(1, "fault", message="Invalid destination address",
                               code="Sender", status=400),
         lambda d, pid: d.set_status(pid, 0), originator="ACME"),
    Case("smsc", lambda: SmscDouble(login=LOGIN, password=PASSWORD, senders={"ACME"}),
         lambda d: http_settings(d, status_url=d.url + "/sys/status.php"),
         lambda d: d.fail_next(1, "error", code=7), lambda d, pid: d.set_status(pid, 1),
         # the SMSC.ru answer that names the message's id (004 promises only "a string")
         prepare=lambda d: setattr(d, "success_form", "ids")),
    Case("smpp", lambda: SmppSmscDouble(system_id=LOGIN, password=PASSWORD),
         lambda d: {"base_url": d.url, "login": LOGIN, "password": PASSWORD, "timeout": 5.0},
         lambda d: d.submit_script.append(0x0B),  # ESME_RINVDSTADR
         lambda d, pid: d.send_receipt(pid, "DELIVRD")),
]


def test_every_kind_has_a_case() -> None:
    assert {case.kind for case in CASES} == registry.kinds() - {"dryrun"}


@dataclass
class Running:
    case: Case
    double: Any
    upstream: Upstream
    sink: RecordingSink


@contextlib.asynccontextmanager
async def running(case: Case) -> AsyncIterator[Running]:
    async with contextlib.AsyncExitStack() as stack:
        double = await stack.enter_async_context(case.double())
        case.prepare(double)
        client = await stack.enter_async_context(httpx.AsyncClient(trust_env=False))
        settings = upstream_settings(kind=case.kind, **case.settings(double))
        registry.validate("p", settings)
        upstream = registry.build("p", settings, client)
        sink = RecordingSink()
        if isinstance(upstream, ReceivingUpstream):
            task = asyncio.create_task(upstream.run(sink))

            async def stop() -> None:
                await upstream.aclose()
                async with asyncio.timeout(5):
                    await task

            stack.push_async_callback(stop)
        else:
            stack.push_async_callback(upstream.aclose)
        yield Running(case, double, upstream, sink)


def sms(case: Case, n: int = 1, phone: str = "79161234567") -> OutboundSms:
    return outbound_sms(message_id=n, idempotency_key=f"conf-{n}", attempt=1, phone=phone,
                       text=f"hello {n}", encoding="gsm7", originator=case.originator)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.kind)
async def test_send_one(case: Case) -> None:
    async with running(case) as run:
        receipt = await run.upstream.send(sms(case))
    assert isinstance(receipt, SendReceipt) and receipt.provider_ids
    assert all(isinstance(pid, str) and pid for pid in receipt.provider_ids)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.kind)
async def test_send_a_batch(case: Case) -> None:
    async with running(case) as run:
        if not isinstance(run.upstream, BatchSending):
            pytest.skip(f"{case.kind} has no batch endpoint")
        batch = [sms(case, n, f"7916123456{n}") for n in range(1, 4)]
        results = await run.upstream.send_batch(batch)
    assert len(results) == len(batch)
    assert all(isinstance(r, SendReceipt) and r.provider_ids for r in results), results
    ids = [pid for r in results if isinstance(r, SendReceipt) for pid in r.provider_ids]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.kind)
async def test_a_refusal_is_permanent(case: Case) -> None:
    async with running(case) as run:
        case.refuse(run.double)
        with pytest.raises(PermanentUpstreamError):
            await run.upstream.send(sms(case))


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.kind)
async def test_a_delivery_status(case: Case) -> None:
    async with running(case) as run:
        receipt = await run.upstream.send(sms(case))
        provider_id = receipt.provider_ids[0]
        delivered = case.deliver(run.double, provider_id)
        if asyncio.iscoroutine(delivered):
            await delivered
        if isinstance(run.upstream, StatusPolling):
            reports = await run.upstream.poll_statuses([provider_id])
        else:
            assert isinstance(run.upstream, ReceivingUpstream)
            async with asyncio.timeout(5):
                while not run.sink.reports:
                    await run.sink.changed.wait()
                    run.sink.changed.clear()
            reports = run.sink.reports
    assert [(r.provider_id, r.status) for r in reports if isinstance(r, DeliveryReport)] == [
        (provider_id, "delivered")]
