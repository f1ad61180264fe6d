"""What the SMS Traffic interfaces share: the API error codes and how ids are asked in chunks.

Spec: ``002_e7d2ff51d5c777f0.txt``, API error codes (line 1988).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from bridge.errors import PermanentUpstreamError, TransientUpstreamError, UpstreamError
from bridge.models import DeliveryReport

# 002 line 1988. 1000 is "temporary problems on the server" (retry, or use the backup host).
# 415 (insufficient funds) is transient: the message waits, within ``give_up_after``, for a
# top-up instead of bouncing. Every other code describes the request itself: retrying the
# same request cannot succeed.
TRANSIENT_CODES = frozenset({1000, 415})

# 434: "no such message or it is not yours" (002 line 1988).
NO_SUCH_MESSAGE = 434

# Ids per status request (v1, v2 and SOAP give no limit).
STATUS_CHUNK = 500


def error_for_code(code: int, text: str, *, upstream: str) -> UpstreamError:
    message = f"{upstream}: {text}".strip()
    if code in TRANSIENT_CODES:
        return TransientUpstreamError(message, code)
    return PermanentUpstreamError(message, code)


def chunks(items: Sequence[str], size: int) -> list[list[str]]:
    unique = list(dict.fromkeys(i for i in items if i))
    return [unique[i:i + size] for i in range(0, len(unique), size)]


async def poll_in_chunks(
    provider_ids: Sequence[str],
    ask: Callable[[list[str]], Awaitable[tuple[int, str, list[DeliveryReport]]]], *,
    upstream: str,
) -> list[DeliveryReport]:
    """Statuses of ``provider_ids``, STATUS_CHUNK ids per request (``ask`` answers the code,
    its text and the reports of one). A whole-request 434 ("no such message", the answer for
    ids older than two days, 002 l. 1020) means none of that chunk's ids is known."""
    reports: list[DeliveryReport] = []
    for chunk in chunks(provider_ids, STATUS_CHUNK):
        code, description, found = await ask(chunk)
        if code == NO_SUCH_MESSAGE:
            continue
        if code != 0:
            raise error_for_code(code, description, upstream=upstream)
        reports.extend(found)
    return reports
