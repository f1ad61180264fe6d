"""One ``send_batch`` for every provider with a batch endpoint (:class:`BatchSending`).

A batch from the dispatcher is split into requests: messages that share what a provider's
request carries once (a text, a sender, options) go together, each request answers for its
messages, and the outcomes come back in the batch's order. What differs between providers is
given as parameters:

* ``key``: what messages of one request must share;
* ``max_group``: the most messages one request carries;
* ``distinct_phones``: a phone at most once per request (where the answer is matched to
  messages by phone);
* ``settle``: a step before any request that may decide a message alone (a sender the
  provider would refuse, an earlier attempt found by a lookup);
* ``stop_after_transient``: after a transient failure no further request is made (a
  provider that blocks callers for repeated errors); the rest get a non-ambiguous transient
  error, as nothing was sent for them.

A failure of the batch's only request, when no message had another outcome, is raised: it is
the failure of the whole batch. Otherwise a failed request's messages each get its error, so
that what was sent is not sent again.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Hashable, Sequence

from bridge.errors import TransientUpstreamError, UpstreamError
from bridge.upstreams.base import OutboundSms, SendReceipt

Outcome = SendReceipt | UpstreamError
SendGroup = Callable[[list[OutboundSms]], Awaitable[Sequence[Outcome]]]
Settle = Callable[[OutboundSms], Awaitable[Outcome | None]]


def group_batch(batch: Sequence[OutboundSms], key: Callable[[OutboundSms], Hashable], *,
                max_group: int | None = None, distinct_phones: bool = False,
                skip: Sequence[int] = ()) -> list[list[int]]:
    """The batch's indexes (less ``skip``) in requests, each in the order of its first
    message: a message joins the first open request of its key that has room (and not yet
    its phone, with ``distinct_phones``), else opens one."""
    skipped = set(skip)
    groups: list[list[int]] = []
    by_key: dict[Hashable, list[list[int]]] = {}
    for index, sms in enumerate(batch):
        if index in skipped:
            continue
        candidates = by_key.setdefault(key(sms), [])
        for group in candidates:
            if max_group is not None and len(group) >= max_group:
                continue
            if distinct_phones and any(batch[i].phone == sms.phone for i in group):
                continue
            group.append(index)
            break
        else:
            group = [index]
            candidates.append(group)
            groups.append(group)
    return groups


async def send_grouped(batch: Sequence[OutboundSms], send_group: SendGroup, *,
                       key: Callable[[OutboundSms], Hashable], upstream: str,
                       max_group: int | None = None, distinct_phones: bool = False,
                       settle: Settle | None = None,
                       stop_after_transient: bool = False) -> list[Outcome]:
    """The outcome of each message of ``batch``, in order (see the module docstring)."""
    results: dict[int, Outcome] = {}
    if settle is not None:
        for index, sms in enumerate(batch):
            try:
                settled = await settle(sms)
            except UpstreamError as exc:
                settled = exc
            if settled is not None:
                results[index] = settled
    groups = group_batch(batch, key, max_group=max_group, distinct_phones=distinct_phones,
                         skip=list(results))
    alone = len(groups) == 1 and not results
    stop: TransientUpstreamError | None = None
    for group in groups:
        try:
            if stop is not None:
                raise TransientUpstreamError(f"{upstream}: not tried after: {stop.text}",
                                             stop.code, retry_after=stop.retry_after)
            outcomes: Sequence[Outcome] = await send_group([batch[i] for i in group])
        except UpstreamError as exc:
            if alone:
                raise
            if stop_after_transient and stop is None and isinstance(exc, TransientUpstreamError):
                stop = exc
            # One error each: an exception object is not shared between messages.
            outcomes = [copy.copy(exc) for _ in group]
        for index, outcome in zip(group, outcomes, strict=True):
            results[index] = outcome
    return [results[index] for index in range(len(batch))]
