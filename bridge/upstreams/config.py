"""An upstream's settings (``[upstreams.NAME]``): what every provider module is built from.

Owned by the providers' layer, so that provider modules know no configuration file: the
bridge's settings compose it (``bridge/settings.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr

UpstreamKind = str


class UpstreamSettings(BaseModel):
    """One SMS provider endpoint. ``kind`` names a registered provider module."""

    model_config = ConfigDict(extra="forbid")

    kind: UpstreamKind = "dryrun"
    base_url: str | None = None
    backup_url: str | None = None
    login: str | None = None
    password: SecretStr | None = None
    api_key: SecretStr | None = None
    client_id: str | None = None
    callback_url: str | None = None
    # kind "smsc": the absolute URL of the provider's status script (SMSC.ru convention:
    # https://smsc.ru/sys/status.php). Only with it are statuses polled and a retry asks
    # whether the earlier attempt arrived; the SMSC spec names no status script.
    status_url: str | None = None
    originator: str | None = None
    concurrency: int = Field(8, ge=1, le=1024)
    rate_per_second: float = Field(0.0, ge=0)
    batch_size: int | None = Field(None, ge=1)
    timeout: float = Field(15.0, gt=0)
    status_poll_interval: float = Field(60.0, ge=0)
    status_poll_max: float = Field(259200.0, gt=0)
    inbound_poll_interval: float = Field(0.0, ge=0)
    # kind "smpp" (base_url/backup_url are smpp://HOST:PORT or smpps://HOST:PORT for TLS,
    # login is the system_id): the binds held, the submit_sm outstanding at once, and the
    # link timers (002 "SMPP протокол": enquire_link every 30 s, a link silent 2 min is dead).
    bind_mode: Literal["transceiver", "transmitter_receiver", "transmitter"] = "transceiver"
    window: int = Field(10, ge=1, le=1000)
    enquire_link_interval: float = Field(30.0, gt=0)
    link_dead_after: float = Field(120.0, gt=0)
    tls_ca_file: Path | None = None  # smpps://: CAs to verify the SMSC by (else the system's)
