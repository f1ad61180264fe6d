"""``[upstreams.NAME]`` of kind ``kcell`` (``000_11f12833dd23f0e5.txt``)."""

from __future__ import annotations

from typing import ClassVar, Literal

from bridge.upstreams.config import LoginSettings

# Table 5 (l. 833-841): ``callback_url`` is at most 256 characters.
MAX_CALLBACK_URL = 256


class KcellSettings(LoginSettings):
    required: ClassVar[tuple[str, ...]] = ("base_url", "login", "password", "client_id")
    kind: Literal["kcell"] = "kcell"
    client_id: str | None = None
    callback_url: str | None = None

    def check(self, name: str) -> None:
        super().check(name)
        if self.callback_url and len(self.callback_url) > MAX_CALLBACK_URL:
            raise ValueError(f"upstreams.{name}.callback_url is longer than {MAX_CALLBACK_URL} "
                             "characters (kind 'kcell', spec 000 table 5)")
