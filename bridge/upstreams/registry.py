"""Provider kinds → upstream classes. Adding a provider: one folder and one line here."""

from __future__ import annotations

import importlib
from typing import Any

import httpx

from bridge.upstreams.base import Upstream
from bridge.upstreams.config import UpstreamSettings

PROVIDERS: dict[str, str] = {
    "dryrun": "bridge.upstreams.dryrun:DryRunUpstream",
    "smstraffic_v1": "bridge.upstreams.smstraffic.v1:SmsTrafficV1Upstream",
    "smstraffic_v2": "bridge.upstreams.smstraffic.v2:SmsTrafficV2Upstream",
    "smstraffic_soap": "bridge.upstreams.smstraffic.soap:SmsTrafficSoapUpstream",
    "kcell": "bridge.upstreams.kcell.upstream:KcellUpstream",
    "devino_rest": "bridge.upstreams.devino.rest:DevinoRestUpstream",
    "devino_soap": "bridge.upstreams.devino.soap:DevinoSoapUpstream",
    "smsc": "bridge.upstreams.smsc.upstream:SmscUpstream",
    "smpp": "bridge.upstreams.smpp:SmppUpstream",
}


# Formats of delivery-report callbacks, for ``[inbound.sources.X] dlr_format``. A parser is
# ``(content_type, raw_query, body, charset) -> list[DeliveryReport]``.
DLR_FORMATS: dict[str, str] = {
    "smstraffic": "bridge.inbound.parsing:parse_smstraffic_dlr",
    "kcell": "bridge.upstreams.kcell.upstream:parse_delivery_reports",
}


def kinds() -> set[str]:
    return set(PROVIDERS)


def _load(target: str) -> Any:
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def provider_class(kind: str) -> Any:
    return _load(PROVIDERS[kind])


def dlr_parser(name: str) -> Any:
    return _load(DLR_FORMATS[name])


def validate(name: str, settings: UpstreamSettings) -> None:
    """Raise ``ValueError`` naming the missing or wrong key (the provider's settings model
    knows its keys)."""
    settings.check(name)


def build(name: str, settings: UpstreamSettings, client: httpx.AsyncClient) -> Upstream:
    upstream: Upstream = provider_class(settings.kind)(name, settings, client)
    return upstream
