"""SMS Traffic (``002_e7d2ff51d5c777f0.txt``): HTTP API v1 (``v1``), HTTP API v2 (``v2``) and
the SOAP protocol (``soap``); SMPP is its own package (``bridge/upstreams/smpp``)."""

from bridge.upstreams.smstraffic.soap import SmsTrafficSoapUpstream
from bridge.upstreams.smstraffic.v1 import SmsTrafficV1Upstream
from bridge.upstreams.smstraffic.v2 import SmsTrafficV2Upstream

__all__ = ["SmsTrafficSoapUpstream", "SmsTrafficV1Upstream", "SmsTrafficV2Upstream"]
