"""Cluster coordination through the store: leases, heartbeats, once-per-cluster polls, and
rate limits shared out among the live processes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from bridge.models import MailEnvelope, SendRequest
from bridge.outbox.dispatcher import Dispatcher
from bridge.settings import load_settings
from bridge.store.sqlite import SqliteStore
from bridge.upstreams import registry
from tests.outcomes import mark_sent


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    opened = SqliteStore(tmp_path / "cluster.sqlite3")
    await opened.open()
    yield opened
    await opened.close()


async def test_a_named_lease_has_one_holder_at_a_time(store: SqliteStore) -> None:
    assert await store.acquire_lease("inbound-poll:p", "a", now=100.0, ttl=10.0)
    assert not await store.acquire_lease("inbound-poll:p", "b", now=105.0, ttl=10.0)
    assert await store.acquire_lease("inbound-poll:p", "a", now=105.0, ttl=10.0)  # renewal
    assert not await store.acquire_lease("inbound-poll:p", "b", now=114.0, ttl=10.0)
    assert await store.acquire_lease("inbound-poll:p", "b", now=116.0, ttl=10.0)  # expired
    await store.release_lease("inbound-poll:p", "a")  # not a's any more: no effect
    assert not await store.acquire_lease("inbound-poll:p", "a", now=117.0, ttl=10.0)
    await store.release_lease("inbound-poll:p", "b")
    assert await store.acquire_lease("inbound-poll:p", "a", now=118.0, ttl=10.0)


async def test_heartbeats_count_the_live_processes(store: SqliteStore) -> None:
    assert await store.heartbeat("a", now=100.0, ttl=15.0) == 1
    assert await store.heartbeat("b", now=101.0, ttl=15.0) == 2
    assert await store.heartbeat("a", now=110.0, ttl=15.0) == 2
    assert await store.heartbeat("a", now=120.0, ttl=15.0) == 1  # b fell silent


async def test_a_due_status_poll_is_claimed_once(store: SqliteStore) -> None:
    request = SendRequest(account="a", upstream="p", phone="79161234567", text="x", parts=1,
                          encoding="gsm7")
    envelope = MailEnvelope("s@x", ("a@x",), None, "127.0.0.1", "v1")
    result = await store.enqueue(envelope, [(None, [request])], now=1.0, dedup_window=0)
    [claimed] = await store.claim_due("owner", now=2.0, limit=10, lease_seconds=30)
    await mark_sent(store, claimed.id, "owner", "p", ["9001"], now=3.0, poll_at=10.0)
    assert await store.due_status_polls("p", now=11.0, limit=10) == [(result.message_ids[0],
                                                                       ["9001"], 0)]
    assert await store.due_status_polls("p", now=12.0, limit=10) == []  # claimed
    assert await store.due_status_polls("p", now=72.0, limit=10) != []  # claim expired


async def test_rate_limits_are_shared_out_among_live_processes(
    store: SqliteStore, tmp_path: Path
) -> None:
    settings = load_settings(
        None, store={"url": f"sqlite:///{tmp_path / 'r.sqlite3'}"},
        upstreams={"p": {"kind": "dryrun", "rate_per_second": 10}},
        accounts={"a": {"password": "x", "upstream": "p"}})
    async with httpx.AsyncClient() as client:
        upstream = registry.build("p", settings.upstreams["p"], client)
        dispatcher = Dispatcher(store, {"p": upstream}, settings, bridge_id="b")
        dispatcher.set_cluster_size(4)
        assert dispatcher._buckets["p"].rate == 2.5
        dispatcher.set_cluster_size(1)
        assert dispatcher._buckets["p"].rate == 10.0


def test_lease_owners_of_a_predecessor_with_the_same_pid_are_dead() -> None:
    """A restarted container often runs as the same PID (1) as the process before it: its
    leases are that predecessor's, not this process's, and are taken over at once."""
    import os
    import socket

    from bridge.outbox.leases import make_owner, owner_is_dead

    host, pid = socket.gethostname(), os.getpid()
    mine = make_owner()
    assert not owner_is_dead(mine)
    assert owner_is_dead(f"{host}:{pid}:0123abcd")  # same PID, not made here
    assert not owner_is_dead(f"other-host:{pid}:0123abcd")  # another host: unknown
    with open("/proc/sys/kernel/pid_max") as f:
        unused = int(f.read()) + 1  # no process can have it
    assert owner_is_dead(f"{host}:{unused}:0123abcd")
