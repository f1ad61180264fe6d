"""Kcell / Sberbank-Telecom SC.CPA "JSONv2" (``000_11f12833dd23f0e5.txt``)."""

from bridge.upstreams.kcell.upstream import KcellUpstream, map_status, parse_delivery_reports

__all__ = ["KcellUpstream", "map_status", "parse_delivery_reports"]
