"""``[upstreams.NAME]`` of kind ``smpp`` (002, "SMPP протокол"): ``base_url``/``backup_url``
are ``smpp://HOST:PORT`` or ``smpps://HOST:PORT`` for TLS, ``login`` is the system_id."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import Field

from bridge.upstreams.config import LoginSettings
from bridge.upstreams.smpp.wire import parse_host


class SmppSettings(LoginSettings):
    required: ClassVar[tuple[str, ...]] = ("base_url", "login", "password")
    kind: Literal["smpp"] = "smpp"
    # The binds held, the submit_sm outstanding at once, and the link timers (enquire_link
    # every 30 s, a link silent 2 min is dead).
    bind_mode: Literal["transceiver", "transmitter_receiver", "transmitter"] = "transceiver"
    window: int = Field(10, ge=1, le=1000)
    enquire_link_interval: float = Field(30.0, gt=0)
    link_dead_after: float = Field(120.0, gt=0)
    tls_ca_file: Path | None = None  # smpps://: CAs to verify the SMSC by (else the system's)

    def check(self, name: str) -> None:
        super().check(name)
        for key in ("base_url", "backup_url"):
            url = getattr(self, key)
            if url:
                try:
                    parse_host(url)
                except ValueError as exc:
                    raise ValueError(f"upstreams.{name}.{key}: {exc}") from None
        # SMPP 3.4 §4.1.1: system_id is at most 16 octets and password 9, NULL included.
        assert self.login is not None and self.password is not None
        if len(self.login) > 15 or not self.login.isascii():
            raise ValueError(f"upstreams.{name}.login: an SMPP system_id is at most 15 "
                             "ASCII characters")
        password = self.password.get_secret_value()
        if len(password) > 8 or not password.isascii():
            raise ValueError(f"upstreams.{name}.password: an SMPP password is at most 8 "
                             "ASCII characters")
        if self.link_dead_after <= self.enquire_link_interval:
            raise ValueError(f"upstreams.{name}.link_dead_after must be longer than "
                             "enquire_link_interval")
