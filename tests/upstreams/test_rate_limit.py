"""One rate limiter (``bridge/outbox/ratelimit.py``): the operator's ``rate_per_second`` for
any upstream, and a provider's own limit on all its calls, declared as a capability, kept by
the same bucket handed to the upstream as the gate every request waits on."""

from __future__ import annotations

from typing import Any

import httpx

from bridge.outbox.ratelimit import PROVIDER_LIMIT_SHARE, gates_requests, limiter_for
from bridge.settings import upstream_settings
from bridge.upstreams import registry
from bridge.upstreams.base import requests_per_second


def build(kind: str, **values: object) -> Any:
    settings = upstream_settings(kind=kind, base_url="http://127.0.0.1:9", login="l",
                                 password="p", api_key="1/k", client_id="c", **values)
    return registry.build("p", settings, httpx.AsyncClient())


def test_only_devino_declares_a_limit_on_all_its_calls() -> None:
    limits = {kind: requests_per_second(build(kind)) for kind in sorted(registry.kinds())
              if kind != "smpp"}
    assert limits == {kind: (10.0 if kind.startswith("devino") else 0.0) for kind in limits}


def test_a_declared_limit_becomes_the_upstreams_request_gate() -> None:
    upstream = build("devino_soap")
    bucket = limiter_for(upstream, 0.0)
    assert gates_requests(upstream) and upstream.request_gate is bucket
    assert (bucket.rate, bucket.burst) == (10.0 * PROVIDER_LIMIT_SHARE, 1.0)
    # the operator may ask for fewer; a cluster shares the rate, never bursting
    assert limiter_for(build("devino_rest"), 2.0).rate == 2.0
    bucket.set_rate(bucket.rate / 3)
    assert (bucket.rate, bucket.burst) == (3.0, 1.0)


def test_without_a_declared_limit_the_bucket_paces_the_dispatchers_sends_only() -> None:
    upstream = build("smstraffic_v1")
    bucket = limiter_for(upstream, 20.0)
    assert not gates_requests(upstream) and upstream.request_gate is None
    assert (bucket.rate, bucket.burst) == (20.0, 20.0)
    bucket.set_rate(5.0)
    assert (bucket.rate, bucket.burst) == (5.0, 5.0)
