"""Status polling one id per request (Kcell's ``/dr/{id}/simple``, Devino's ``Sms/State``)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from bridge.errors import UpstreamError
from bridge.models import DeliveryReport


async def poll_each(provider_ids: Sequence[str],
                    ask: Callable[[str], Awaitable[DeliveryReport | None]], *, concurrency: int,
                    unknown: Callable[[UpstreamError], bool] = lambda exc: False,
                    ) -> list[DeliveryReport]:
    """The reports of ``provider_ids``, ``concurrency`` requests at a time. An id ``ask``
    answers None for, or whose error is ``unknown`` (the provider does not know the id), is
    left out; an error is raised only when no id could be asked for (errors and no report).
    Anything but an :class:`UpstreamError` is a fault of ours and raised."""
    semaphore = asyncio.Semaphore(concurrency)

    async def one(provider_id: str) -> DeliveryReport | None:
        async with semaphore:
            return await ask(provider_id)

    outcomes = await asyncio.gather(*(one(p) for p in provider_ids), return_exceptions=True)
    reports: list[DeliveryReport] = []
    errors: list[UpstreamError] = []
    for outcome in outcomes:
        if isinstance(outcome, DeliveryReport):
            reports.append(outcome)
        elif isinstance(outcome, UpstreamError):
            if not unknown(outcome):
                errors.append(outcome)
        elif isinstance(outcome, BaseException):
            raise outcome
    if errors and not reports:
        raise errors[0]
    return reports
