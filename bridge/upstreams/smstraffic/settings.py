"""``[upstreams.NAME]`` of the SMS Traffic kinds (``002_e7d2ff51d5c777f0.txt``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import SecretStr

from bridge.upstreams.config import LoginSettings, UpstreamSettings


class SmsTrafficV1Settings(LoginSettings):
    required: ClassVar[tuple[str, ...]] = ("base_url", "login", "password")
    kind: Literal["smstraffic_v1"] = "smstraffic_v1"


class SmsTrafficV2Settings(UpstreamSettings):
    required: ClassVar[tuple[str, ...]] = ("base_url", "api_key")
    kind: Literal["smstraffic_v2"] = "smstraffic_v2"
    api_key: SecretStr | None = None


class SmsTrafficSoapSettings(LoginSettings):
    required: ClassVar[tuple[str, ...]] = ("base_url", "login", "password")
    kind: Literal["smstraffic_soap"] = "smstraffic_soap"
