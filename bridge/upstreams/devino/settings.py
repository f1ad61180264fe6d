"""``[upstreams.NAME]`` of the Devino kinds (``003_2ae1dc9e2c3c1732.txt``,
``001_600c633d74a81c97.txt``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from bridge.upstreams.config import LoginSettings


class DevinoRestSettings(LoginSettings):
    required: ClassVar[tuple[str, ...]] = ("base_url", "login", "password")
    kind: Literal["devino_rest"] = "devino_rest"
    #: The default ``SourceAddress`` for messages without an originator.
    client_id: str | None = None


class DevinoSoapSettings(LoginSettings):
    required: ClassVar[tuple[str, ...]] = ("base_url", "login", "password")
    kind: Literal["devino_soap"] = "devino_soap"
