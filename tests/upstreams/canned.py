"""Canned provider answers for the table-driven payload tests: the examples quoted in the
provider specs (tests/specs/*.txt), kept verbatim under tests/upstreams/<vendor>/testdata/,
served to a real upstream object by an in-process transport (no socket, no double)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def payload(vendor: str, name: str) -> bytes:
    """The canned payload ``name`` of ``vendor`` (tests/upstreams/<vendor>/testdata/)."""
    return (HERE / vendor / "testdata" / name).read_bytes()


@dataclass
class Canned:
    """Answers every request with ``body`` (or ``answer(request)``), recording requests."""

    body: bytes = b""
    status: int = 200
    content_type: str = "text/xml"
    answer: Callable[[httpx.Request], httpx.Response] | None = None
    requests: list[httpx.Request] = field(default_factory=list)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.answer is not None:
            return self.answer(request)
        return httpx.Response(self.status, content=self.body,
                              headers={"Content-Type": self.content_type})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self.handle))
