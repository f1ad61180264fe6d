"""SMSC-style HTTP API (``004_82738aa6f58320d8.txt``)."""

from bridge.upstreams.smsc.upstream import SmscStatusUpstream, SmscUpstream

__all__ = ["SmscStatusUpstream", "SmscUpstream"]
