"""``[upstreams.NAME]`` of kind ``smsc`` (``004_82738aa6f58320d8.txt``)."""

from __future__ import annotations

from typing import ClassVar, Literal
from urllib.parse import urlsplit

from bridge.upstreams.config import LoginSettings


class SmscSettings(LoginSettings):
    required: ClassVar[tuple[str, ...]] = ("base_url", "login", "password")
    kind: Literal["smsc"] = "smsc"
    # The absolute URL of the provider's status script (SMSC.ru convention:
    # https://smsc.ru/sys/status.php). Only with it are statuses polled and a retry asks
    # whether the earlier attempt arrived; the SMSC spec names no status script.
    status_url: str | None = None

    def check(self, name: str) -> None:
        super().check(name)
        if self.status_url is not None:
            url = urlsplit(self.status_url)
            if url.scheme not in ("http", "https") or not url.netloc:
                raise ValueError(
                    f"upstreams.{name}.status_url must be an absolute http(s) URL of the "
                    "status script, e.g. https://smsc.ru/sys/status.php (kind 'smsc')")
