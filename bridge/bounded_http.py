"""Reading HTTP answers with a cap on the bytes received and on the bytes decoded.

``response.content`` (httpx) reads an answer whole and inflates any ``Content-Encoding`` it
names: a 100 KB gzip answer inflating to 100 MB froze a process for 27 s and took 1.2 GB.
So an answer from a server we do not control is read here instead:

* the request asks for ``Accept-Encoding: identity`` (RFC 9110 §12.5.3: the answer then
  carries no content coding), httpx's default ``gzip, deflate[, br, zstd]`` is dropped;
* a server that compresses anyway is decoded with a running cap (gzip and deflate, the
  codings of RFC 9110 §8.4.1, inflated at most ``max_bytes`` at a time); any other coding,
  or several stacked, is refused;
* at most ``max_bytes`` are read off the wire and kept decoded: an announced
  ``Content-Length`` above the cap is refused before any body byte is read, and a longer
  body is refused (or, for a caller that only needs the status, cut) at the cap.

Usable by any outgoing call: :func:`request_bounded` for a plain client call (provider
APIs), :func:`read_bounded` for a response already opened with ``stream=True``.
"""

from __future__ import annotations

import zlib
from collections.abc import AsyncIterator
from typing import Any

import httpx

from bridge.errors import AnswerRefused as AnswerRefused
from bridge.errors import AnswerTooLarge as AnswerTooLarge

DEFAULT_MAX_ANSWER_BYTES = 64 * 1024

# Hop-by-hop or body-framing headers that no longer describe a body read (and decoded) here.
_FRAMING_HEADERS = ("content-encoding", "content-length", "transfer-encoding")


class _Inflater:
    """A gzip or deflate decoder that never produces more than it is asked for.

    ``deflate`` is the zlib format (RFC 9110 §8.4.1.2), but some servers send raw deflate:
    like httpx, the raw form is tried when the first bytes are not a zlib header."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        wbits = zlib.MAX_WBITS | 16 if coding == "gzip" else zlib.MAX_WBITS
        self._zlib = zlib.decompressobj(wbits)
        self._started = False

    def feed(self, data: bytes, limit: int) -> bytes:
        """Inflate ``data``; at most ``limit`` bytes come out (more waiting = overflow)."""
        try:
            out = self._zlib.decompress(data, limit)
        except zlib.error:
            if self.coding != "deflate" or self._started:
                raise
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
            out = self._zlib.decompress(data, limit)
        self._started = True
        return out

    @property
    def has_more(self) -> bool:
        """Input left that did not fit under the limit."""
        return bool(self._zlib.unconsumed_tail)


def _content_coding(response: httpx.Response) -> str:
    value = ",".join(response.headers.get_list("content-encoding")).strip().lower()
    codings = [c.strip() for c in value.split(",") if c.strip() and c.strip() != "identity"]
    if not codings:
        return "identity"
    if len(codings) > 1:
        raise AnswerRefused(f"answer in stacked content codings refused: {value!r}")
    coding = "gzip" if codings[0] == "x-gzip" else codings[0]  # RFC 9110 §8.4.1.3
    if coding not in ("gzip", "deflate"):
        raise AnswerRefused(f"answer in content coding {coding!r} refused "
                            "(identity was asked for)")
    return coding


async def read_bounded(
    response: httpx.Response, max_bytes: int = DEFAULT_MAX_ANSWER_BYTES, *,
    truncate: bool = False,
) -> bytes:
    """The decoded body of ``response`` (opened with ``stream=True``), at most ``max_bytes``.

    Raises :class:`AnswerTooLarge` when the body is longer, on the wire or decoded, or
    returns its first ``max_bytes`` when ``truncate`` (for a caller that only needs the
    status). Raises :class:`AnswerRefused` for a content coding other than gzip or deflate.
    Stops reading at the cap; the caller closes the response.
    """
    coding = _content_coding(response)
    declared = response.headers.get("content-length", "")
    if not truncate and declared.isdigit() and int(declared) > max_bytes:
        raise AnswerTooLarge(f"answer larger than {max_bytes} bytes "
                             f"(Content-Length: {declared})")
    inflater = _Inflater(coding) if coding != "identity" else None
    body = bytearray()
    received = 0
    if response.is_stream_consumed:
        # Read and decoded already (a transport that hands out finished responses, as
        # httpx's MockTransport does): the same cap on what is there.
        chunks: Any = _already_read(response)
        inflater = None
    else:
        chunks = response.aiter_raw()
    async for chunk in chunks:
        received += len(chunk)
        room = max_bytes - len(body)
        if inflater is None:
            data, overflow = chunk[: room + 1], len(chunk) > room
        else:
            try:
                data = inflater.feed(chunk, room + 1)
            except zlib.error as exc:
                raise AnswerRefused(f"answer is not valid {coding}: {exc}") from None
            overflow = len(data) > room or inflater.has_more
        body += data[:room]
        if overflow or received > max_bytes:
            if truncate:
                return bytes(body)
            raise AnswerTooLarge(f"answer larger than {max_bytes} bytes"
                                 + (f" decoded from {coding}" if inflater else ""))
    return bytes(body)


async def _already_read(response: httpx.Response) -> AsyncIterator[bytes]:
    yield response.content


def identity_headers(headers: Any = None) -> httpx.Headers:
    """``headers`` asking for an answer without content coding."""
    merged = httpx.Headers(headers)
    merged["Accept-Encoding"] = "identity"
    return merged


async def send_bounded(
    client: httpx.AsyncClient, request: httpx.Request,
    max_bytes: int = DEFAULT_MAX_ANSWER_BYTES, *, truncate: bool = False,
    auth: httpx.Auth | tuple[str | bytes, str | bytes] | None = None,
) -> httpx.Response:
    """Send ``request`` (built with :func:`identity_headers`) and read its answer with
    :func:`read_bounded`. Redirects are not followed. The response returned holds the
    decoded body; its headers no longer name a content coding or length, so nothing
    decodes it again."""
    response = await client.send(request, stream=True, follow_redirects=False,
                                 **({"auth": auth} if auth is not None else {}))
    try:
        body = await read_bounded(response, max_bytes, truncate=truncate)
    finally:
        await response.aclose()
    headers = [(name, value) for name, value in response.headers.multi_items()
               if name.lower() not in _FRAMING_HEADERS]
    kept: dict[str, Any] = {key: response.extensions[key]
                            for key in ("http_version", "reason_phrase")
                            if key in response.extensions}
    return httpx.Response(response.status_code, headers=headers, content=body,
                          request=request, extensions=kept)


async def request_bounded(
    client: httpx.AsyncClient, method: str, url: str | httpx.URL, *,
    max_bytes: int = DEFAULT_MAX_ANSWER_BYTES, truncate: bool = False,
    timeout: float | httpx.Timeout | None = None, **kwargs: Any,
) -> httpx.Response:
    """``client.request(method, url, **kwargs)`` with the answer read by
    :func:`read_bounded`. ``timeout`` (seconds, or an :class:`httpx.Timeout`) is given to
    every phase of this call (connect, write, read, pool): without it the client's default
    (httpx: 5 s) would govern them, whatever deadline the caller keeps around the call."""
    headers = identity_headers(kwargs.pop("headers", None))
    auth = kwargs.pop("auth", None)  # a property of sending, not of the request built
    if timeout is not None:
        kwargs["timeout"] = timeout if isinstance(timeout, httpx.Timeout) \
            else httpx.Timeout(timeout)
    request = client.build_request(method, url, headers=headers, **kwargs)
    return await send_bounded(client, request, max_bytes, truncate=truncate, auth=auth)
