"""Devino Telecom: the REST API (``003_2ae1dc9e2c3c1732.txt``) and the SOAP 1.2 service
(``001_600c633d74a81c97.txt``) of the same backend."""

from bridge.upstreams.devino.rest import DevinoRestUpstream
from bridge.upstreams.devino.soap import DevinoSoapUpstream

__all__ = ["DevinoRestUpstream", "DevinoSoapUpstream"]
