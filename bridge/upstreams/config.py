"""An upstream's settings (``[upstreams.NAME]``): the fields every provider has. Each provider
package adds its own model (``bridge/upstreams/<vendor>/settings.py``) with its ``kind`` and
its keys; the bridge's settings compose them as one union discriminated by ``kind``
(``bridge/settings.py``). Provider modules know no configuration file.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class UpstreamSettings(BaseModel):
    """One SMS provider endpoint: what the dispatcher and the pollers read of any kind."""

    model_config = ConfigDict(extra="forbid")

    #: The keys a configuration of this kind must set.
    required: ClassVar[tuple[str, ...]] = ()

    kind: str = "dryrun"
    base_url: str | None = None
    backup_url: str | None = None
    originator: str | None = None
    concurrency: int = Field(8, ge=1, le=1024)
    rate_per_second: float = Field(0.0, ge=0)
    batch_size: int | None = Field(None, ge=1)
    timeout: float = Field(15.0, gt=0)
    status_poll_interval: float = Field(60.0, ge=0)
    status_poll_max: float = Field(259200.0, gt=0)
    inbound_poll_interval: float = Field(0.0, ge=0)

    def check(self, name: str) -> None:
        """Raise ``ValueError`` naming the first key of ``upstreams.NAME`` that is missing
        or wrong (called when the settings are loaded, and by ``Upstream.validate``)."""
        for key in self.required:
            if getattr(self, key) in (None, ""):
                raise ValueError(f"upstreams.{name}.{key} is required for kind {self.kind!r}")


class LoginSettings(UpstreamSettings):
    """A provider that signs in with a login and a password."""

    login: str | None = None
    password: SecretStr | None = None
