"""The HTTP side: health, readiness and metrics (inbound SMS endpoints build on it)."""
