"""Lease owners: which process holds a claimed row.

An owner is ``host:pid:random``. A process restarted on the same host can tell its dead
predecessor's leases from those of live workers and take the rows over at once, instead of
waiting for the leases to expire.
"""

from __future__ import annotations

import os
import socket
import uuid

#: Owners made by this process. A restarted container often gets its predecessor's PID
#: (PID 1): an owner with this process's PID that it did not make is that predecessor's.
_MINE: set[str] = set()


def make_owner() -> str:
    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    _MINE.add(owner)
    return owner


def owner_is_dead(owner: str) -> bool:
    """True if a lease owner was a process on this host that no longer runs."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return owner not in _MINE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
