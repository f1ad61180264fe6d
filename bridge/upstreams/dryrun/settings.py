"""``[upstreams.NAME]`` of kind ``dryrun``: nothing beyond the common keys."""

from __future__ import annotations

from typing import Literal

from bridge.upstreams.config import UpstreamSettings


class DryRunSettings(UpstreamSettings):
    kind: Literal["dryrun"] = "dryrun"
