"""``python -m bridge.healthcheck``: exit 0 when the bridge of this configuration is ready.

The Docker image's HEALTHCHECK. It reads the configuration the way ``sms-bridge serve`` does
(the file named by ``BRIDGE_CONFIG``, then ``BRIDGE_*`` variables), so it asks ``/readyz``
on the port the bridge was configured to listen on, not on a port written into the image.
"""

from __future__ import annotations

import os
import sys
import urllib.request

from bridge.settings import load_settings


def readyz_url(host: str, port: int) -> str:
    """Where this host's bridge answers: a wildcard listen address is reached on loopback."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}/readyz"


def main() -> int:
    try:
        settings = load_settings(os.environ.get("BRIDGE_CONFIG") or None)
    except Exception as exc:  # a broken configuration is "unhealthy", with the reason
        print(f"sms-bridge healthcheck: {exc}", file=sys.stderr)
        return 1
    url = readyz_url(settings.http.host, settings.http.port)
    # No proxy: HTTP_PROXY in the container's environment must not take the check elsewhere.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=2) as answer:
            return 0 if answer.status == 200 else 1
    except OSError as exc:  # refused, timed out, or an HTTP error status (HTTPError)
        print(f"sms-bridge healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
