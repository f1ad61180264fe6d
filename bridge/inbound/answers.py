"""The answers of the latest ``sms_id`` values, kept in memory by each process.

002 line 1897: a repeated ``sms_id`` gets the answer given the first time. That answer is
committed with the message and never changes afterwards (a short-code hit's answer is stored
once, by the first caller to complete it), so a copy held in memory can never disagree with
the store. A provider's retry that reaches the process which answered first is then answered
without a store read; one that reaches another instance, or comes after eviction, reads the
store as before. Only committed, final answers go in.
"""

from __future__ import annotations

from bridge.models import StoredResponse


class AnswerCache:
    """At most ``size`` answers by (source, sms_id); the oldest entry goes first (a retry
    comes soon after the first request, so insertion order is the order of usefulness)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._answers: dict[tuple[str, str], StoredResponse] = {}

    def __len__(self) -> int:
        return len(self._answers)

    def get(self, source: str, sms_id: str) -> StoredResponse | None:
        return self._answers.get((source, sms_id))

    def put(self, source: str, sms_id: str | None, answer: StoredResponse | None) -> None:
        if sms_id is None or answer is None or self.size == 0:
            return
        answers = self._answers
        answers[(source, sms_id)] = answer
        if len(answers) > self.size:
            del answers[next(iter(answers))]
