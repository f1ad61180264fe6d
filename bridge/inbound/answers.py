"""The answers of the latest ``sms_id`` values, kept in memory by each process.

002 line 1897: a repeated ``sms_id`` gets the answer given the first time. That answer is
committed with the message and never changes afterwards (a short-code hit's answer is stored
once, by the first caller to complete it), so a copy held in memory can never disagree with
the store. A provider's retry that reaches the process which answered first is then answered
without a store read; one that reaches another instance, or comes after eviction, reads the
store as before. Only committed, final answers go in.

Each answer is kept with a digest of the raw parameters of its request: a retry carries the
same bytes (002 line 1897's template: ``message``, ``phone``, ``sms_id``). A repeat with other
bytes is not answered from here but goes the store's way, where a repeat with other content
is noticed (and still gets the first answer). The digest is keyed (BLAKE2b in keyed mode, a
MAC like HMAC, three times faster on these short inputs) with a key of this process that is
never stored: the parameters of a short-code hit hold its ``password``, which is thus
neither kept in memory nor open to a dictionary attack on a digest.
"""

from __future__ import annotations

import hashlib
import secrets

from bridge.models import StoredResponse


class AnswerCache:
    """At most ``size`` answers by (source, kind, keyed digest of the request); the oldest
    entry goes first (a retry comes soon after the first request, so insertion order is the
    order of usefulness).

    Keyed by the digest rather than by ``sms_id``: a retry is recognised by one dictionary
    lookup, without reading its ``sms_id`` out of the parameters first. The raw parameters
    hold the ``sms_id``, so a hit is a request with the same ``sms_id`` and the same bytes,
    as before. Comparing digests in a dictionary is not constant-time; it needs not be: the
    key never leaves the process, so what a timing could tell about a digest of a request is
    worth nothing for forging another's."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._answers: dict[tuple[str, str, bytes], StoredResponse] = {}
        self._key = secrets.token_bytes(32)

    def digest(self, raw: bytes) -> bytes:
        """The keyed digest requests are compared by."""
        return hashlib.blake2b(raw, key=self._key, digest_size=16).digest()

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, source: str, kind: str, raw: bytes) -> StoredResponse | None:
        """The first answer to this very request (same parameters, so the same ``sms_id``),
        if it was answered by this process and is still kept."""
        if not self._answers:
            return None
        return self._answers.get((source, kind, self.digest(raw)))

    def put(self, source: str, kind: str, sms_id: str | None, answer: StoredResponse | None,
            raw: bytes) -> None:
        """Keep the answer to a request that carried ``sms_id`` (one without cannot be
        retried as such: it is deduplicated by content in the store)."""
        if sms_id is None or answer is None or self.size == 0:
            return
        answers = self._answers
        answers[(source, kind, self.digest(raw))] = answer
        if len(answers) > self.size:
            del answers[next(iter(answers))]
