"""SMPP 3.4 upstream for SMS Traffic (tests/specs/002_e7d2ff51d5c777f0.txt, line 1367).

Modules: :mod:`.pdu` (framing and PDUs), :mod:`.coding` (GSM 03.38 / UCS-2, UDH, receipt
text), :mod:`.session` (one bound connection: window, enquire_link, dead-link watchdog) and
:mod:`.upstream` (hosts, failover, reconnects, send, receipts and MO).

Why no SMPP library: the asyncio ones were read (source of the versions on PyPI) and none
fits what this upstream must guarantee, so the small part of SMPP 3.4 an ESME of SMS Traffic
uses (bind, unbind, enquire_link, submit_sm, deliver_sm, generic_nack and three TLVs) is
written here.

- ``aiosmpplib`` 0.7.4 (MIT, asyncio): no TLS (a plain ``asyncio.open_connection``); every
  deliver_sm is answered ``ESME_ROK`` after the application hook, so a message the store
  could not commit cannot be refused with a temporary error for the SMSC to deliver again;
  enquire_link only when the link is idle; its decoder raises on an unknown command id,
  command_status or TON (dropping the link where a generic_nack is due) and reads the 2-byte
  UDH reference with a 4-byte unpack; sending is a queue with hooks rather than a call that
  returns each submit_sm_resp.
- ``smpp34`` 1.5.0 (MIT, Rust core with a Python layer): the core acknowledges each
  deliver_sm itself before Python sees it (no "answer only after the commit"); the Python
  API sets neither the enquire_link nor the dead-link timers, nor a CA file for TLS.
- ``smpplib`` 2.2.4 (LGPL-3.0): blocking sockets and threads, no asyncio.
- ``naz`` 0.8.1: no release since 2020. ``smpp.pdu3`` 0.6: a codec only, no release since
  2021.
"""

from bridge.upstreams.smpp.upstream import SmppUpstream

__all__ = ["SmppUpstream"]
