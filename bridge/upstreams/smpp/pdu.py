"""SMPP 3.4 PDUs: framing, the few PDUs an ESME of SMS Traffic needs, and their TLVs.

Written here rather than taken from a library (see :mod:`bridge.upstreams.smpp`). The wire
format is SMPP v3.4 (Issue 1.2): section 3.2 (a 16-octet header of ``command_length``,
``command_id``, ``command_status``, ``sequence_number``, big-endian), 4.1 (bind), 4.4
(submit_sm), 4.6 (deliver_sm), 5.1.2 (command ids), 5.1.3 (command_status values) and 5.3
(TLVs). What SMS Traffic takes from it is in tests/specs/002_e7d2ff51d5c777f0.txt, "SMPP
протокол" (line 1367): Table 1 (bind), Table 2 (submit_sm), Table 3 (receipts).

Decoding never trusts a length: a body shorter than its fields, a C-Octet String without its
NULL or longer than its maximum, or a TLV running past the end is a :class:`PduError`
answered on the PDU; a ``command_length`` that cannot be framed is a :class:`FramingError`,
after which the stream cannot be resynchronised and the link is dropped.
"""

from __future__ import annotations

import asyncio
import struct
from dataclasses import dataclass, field

HEADER = struct.Struct(">IIII")
HEADER_LENGTH = HEADER.size
INTERFACE_VERSION = 0x34
# The largest PDU read: a deliver_sm with a full ``message_payload`` TLV (64 KiB, SMPP 3.4
# §5.3.2.32) and every other field at its maximum fits comfortably.
MAX_PDU_LENGTH = 70_000

# SMPP 3.4 §5.1.2 command_id values.
GENERIC_NACK = 0x80000000
BIND_RECEIVER = 0x00000001
BIND_TRANSMITTER = 0x00000002
SUBMIT_SM = 0x00000004
DELIVER_SM = 0x00000005
UNBIND = 0x00000006
BIND_TRANSCEIVER = 0x00000009
OUTBIND = 0x0000000B
ENQUIRE_LINK = 0x00000015
ALERT_NOTIFICATION = 0x00000102
DATA_SM = 0x00000103
RESPONSE = 0x80000000  # the bit set in every response's command_id

COMMAND_NAMES = {
    GENERIC_NACK: "generic_nack",
    BIND_RECEIVER: "bind_receiver",
    BIND_TRANSMITTER: "bind_transmitter",
    0x00000003: "query_sm",
    SUBMIT_SM: "submit_sm",
    DELIVER_SM: "deliver_sm",
    UNBIND: "unbind",
    0x00000007: "replace_sm",
    0x00000008: "cancel_sm",
    BIND_TRANSCEIVER: "bind_transceiver",
    OUTBIND: "outbind",
    ENQUIRE_LINK: "enquire_link",
    0x00000021: "submit_multi",
    ALERT_NOTIFICATION: "alert_notification",
    DATA_SM: "data_sm",
}

# SMPP 3.4 §5.1.3 command_status values the bridge acts on or names.
ESME_ROK = 0x00
STATUS_NAMES = {
    0x00: "ESME_ROK", 0x01: "ESME_RINVMSGLEN", 0x02: "ESME_RINVCMDLEN",
    0x03: "ESME_RINVCMDID", 0x04: "ESME_RINVBNDSTS", 0x05: "ESME_RALYBND",
    0x06: "ESME_RINVPRTFLG", 0x07: "ESME_RINVREGDLVFLG", 0x08: "ESME_RSYSERR",
    0x0A: "ESME_RINVSRCADR", 0x0B: "ESME_RINVDSTADR", 0x0C: "ESME_RINVMSGID",
    0x0D: "ESME_RBINDFAIL", 0x0E: "ESME_RINVPASWD", 0x0F: "ESME_RINVSYSID",
    0x11: "ESME_RCANCELFAIL", 0x13: "ESME_RREPLACEFAIL", 0x14: "ESME_RMSGQFUL",
    0x15: "ESME_RINVSERTYP", 0x33: "ESME_RINVNUMDESTS", 0x34: "ESME_RINVDLNAME",
    0x40: "ESME_RINVDESTFLAG", 0x42: "ESME_RINVSUBREP", 0x43: "ESME_RINVESMCLASS",
    0x44: "ESME_RCNTSUBDL", 0x45: "ESME_RSUBMITFAIL", 0x48: "ESME_RINVSRCTON",
    0x49: "ESME_RINVSRCNPI", 0x50: "ESME_RINVDSTTON", 0x51: "ESME_RINVDSTNPI",
    0x53: "ESME_RINVSYSTYP", 0x54: "ESME_RINVREPFLAG", 0x55: "ESME_RINVNUMMSGS",
    0x58: "ESME_RTHROTTLED", 0x61: "ESME_RINVSCHED", 0x62: "ESME_RINVEXPIRY",
    0x63: "ESME_RINVDFTMSGID", 0x64: "ESME_RX_T_APPN", 0x65: "ESME_RX_P_APPN",
    0x66: "ESME_RX_R_APPN", 0x67: "ESME_RQUERYFAIL", 0xC0: "ESME_RINVOPTPARSTREAM",
    0xC1: "ESME_ROPTPARNOTALLWD", 0xC2: "ESME_RINVPARLEN", 0xC3: "ESME_RMISSINGOPTPARAM",
    0xC4: "ESME_RINVOPTPARAMVAL", 0xFE: "ESME_RDELIVERYFAILURE", 0xFF: "ESME_RUNKNOWNERR",
}
ESME_RINVMSGLEN = 0x01
ESME_RINVCMDLEN = 0x02
ESME_RINVCMDID = 0x03
ESME_RALYBND = 0x05
ESME_RSYSERR = 0x08
ESME_RBINDFAIL = 0x0D
ESME_RINVPASWD = 0x0E
ESME_RINVSYSID = 0x0F
ESME_RMSGQFUL = 0x14
ESME_RTHROTTLED = 0x58
ESME_RX_T_APPN = 0x64  # "ESME Receiver Temporary App Error": the SMSC delivers again later
ESME_RX_P_APPN = 0x65  # "ESME Receiver Permanent App Error": the SMSC does not retry

# SMPP 3.4 §5.3.2 TLV tags.
TLV_RECEIPTED_MESSAGE_ID = 0x001E
TLV_SAR_MSG_REF_NUM = 0x020C
TLV_SAR_TOTAL_SEGMENTS = 0x020E
TLV_SAR_SEGMENT_SEQNUM = 0x020F
TLV_NETWORK_ERROR_CODE = 0x0423
TLV_MESSAGE_PAYLOAD = 0x0424
TLV_MESSAGE_STATE = 0x0427


def status_name(status: int) -> str:
    return STATUS_NAMES.get(status, f"0x{status:08X}")


def command_name(command_id: int) -> str:
    return COMMAND_NAMES.get(command_id) or (
        COMMAND_NAMES[command_id & ~RESPONSE] + "_resp"
        if command_id & RESPONSE and command_id & ~RESPONSE in COMMAND_NAMES
        else f"0x{command_id:08X}")


class PduError(ValueError):
    """A PDU whose body does not follow its definition: answered with an error status."""


class FramingError(PduError):
    """A ``command_length`` the stream cannot be framed by: the link must be dropped."""


@dataclass(frozen=True, slots=True)
class Pdu:
    command_id: int
    status: int
    sequence: int
    body: bytes = b""

    def encode(self) -> bytes:
        return HEADER.pack(HEADER_LENGTH + len(self.body), self.command_id, self.status,
                           self.sequence) + self.body

    @property
    def is_response(self) -> bool:
        return bool(self.command_id & RESPONSE)

    @property
    def name(self) -> str:
        return command_name(self.command_id)


async def read_pdu(reader: asyncio.StreamReader) -> Pdu:
    """One PDU from the stream. Raises ``asyncio.IncompleteReadError`` at a closed link and
    :class:`FramingError` at a ``command_length`` below the header or above the maximum."""
    header = await reader.readexactly(HEADER_LENGTH)
    length, command_id, status, sequence = HEADER.unpack(header)
    if length < HEADER_LENGTH or length > MAX_PDU_LENGTH:
        raise FramingError(f"command_length {length} outside {HEADER_LENGTH}..{MAX_PDU_LENGTH}")
    body = await reader.readexactly(length - HEADER_LENGTH) if length > HEADER_LENGTH else b""
    return Pdu(command_id, status, sequence, body)


def c_octet_string(value: str, max_octets: int, what: str) -> bytes:
    """A C-Octet String (SMPP 3.4 §3.1): ASCII, NULL-terminated, ``max_octets`` with it."""
    try:
        data = value.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"{what} must be ASCII") from None
    if b"\0" in data or len(data) + 1 > max_octets:
        raise ValueError(f"{what} is longer than {max_octets - 1} characters")
    return data + b"\0"


class BodyReader:
    """Reads the fields of a PDU body in order; every overrun is a :class:`PduError`."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.at = 0

    def u8(self) -> int:
        if self.at + 1 > len(self.body):
            raise PduError("body ends inside an integer field")
        self.at += 1
        return self.body[self.at - 1]

    def octets(self, count: int) -> bytes:
        if self.at + count > len(self.body):
            raise PduError(f"body ends inside a {count}-octet field")
        self.at += count
        return self.body[self.at - count:self.at]

    def c_string(self, max_octets: int, what: str) -> str:
        end = self.body.find(b"\0", self.at, self.at + max_octets)
        if end < 0:
            raise PduError(f"{what}: no NULL within {max_octets} octets")
        value = self.body[self.at:end]
        self.at = end + 1
        # Addresses and ids are ASCII by definition; a stray 8-bit byte is kept visible.
        return value.decode("ascii", errors="backslashreplace")

    def tlvs(self) -> dict[int, bytes]:
        """The optional parameters to the end of the body (SMPP 3.4 §3.2.4.1); a tag seen
        twice keeps its first value."""
        found: dict[int, bytes] = {}
        while self.at < len(self.body):
            if self.at + 4 > len(self.body):
                raise PduError("body ends inside a TLV header")
            tag, length = struct.unpack_from(">HH", self.body, self.at)
            self.at += 4
            found.setdefault(tag, self.octets(length))
        return found


# -- bind (SMPP 3.4 §4.1) ---------------------------------------------------------------------

def bind_body(system_id: str, password: str, system_type: str = "") -> bytes:
    """bind_transmitter/receiver/transceiver: 002 Table 1 — ``interface_version`` 0x34;
    system_type, addr_ton, addr_npi and address_range are ignored by SMS Traffic: empty."""
    return (c_octet_string(system_id, 16, "system_id")
            + c_octet_string(password, 9, "password")
            + c_octet_string(system_type, 13, "system_type")
            + bytes((INTERFACE_VERSION, 0, 0)) + b"\0")


def bind_resp_system_id(body: bytes) -> str:
    """The SMSC's ``system_id`` from a bind_*_resp (absent when the bind was refused)."""
    return BodyReader(body).c_string(16, "system_id") if body else ""


# -- submit_sm (SMPP 3.4 §4.4) ----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SubmitSm:
    """The fields of 002 Table 2; the rest ("Не поддерживается") stay empty or zero, and no
    TLV is sent (002 line 1379: "Не поддерживаются: … tlv (для SUBMIT_SM)")."""

    source_addr_ton: int
    source_addr_npi: int
    source_addr: str
    destination_addr: str
    short_message: bytes
    data_coding: int
    esm_class: int = 0
    registered_delivery: int = 1
    validity_period: str = ""
    protocol_id: int = 0
    dest_addr_ton: int = 1
    dest_addr_npi: int = 1

    def body(self) -> bytes:
        if len(self.short_message) > 254:
            raise ValueError("short_message is longer than 254 octets")
        return (b"\0"  # service_type
                + bytes((self.source_addr_ton, self.source_addr_npi))
                + c_octet_string(self.source_addr, 21, "source_addr")
                + bytes((self.dest_addr_ton, self.dest_addr_npi))
                + c_octet_string(self.destination_addr, 21, "destination_addr")
                + bytes((self.esm_class, self.protocol_id, 0))  # priority_flag
                + b"\0"  # schedule_delivery_time
                + c_octet_string(self.validity_period, 17, "validity_period")
                + bytes((self.registered_delivery, 0,  # replace_if_present_flag
                         self.data_coding, 0,  # sm_default_msg_id
                         len(self.short_message)))
                + self.short_message)


def message_id(body: bytes) -> str:
    """``message_id`` of a submit_sm_resp (C-Octet String, max 65)."""
    return BodyReader(body).c_string(65, "message_id")


# -- deliver_sm (SMPP 3.4 §4.6) ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DeliverSm:
    source_addr_ton: int
    source_addr_npi: int
    source_addr: str
    dest_addr_ton: int
    dest_addr_npi: int
    destination_addr: str
    esm_class: int
    protocol_id: int
    data_coding: int
    short_message: bytes
    tlvs: dict[int, bytes] = field(default_factory=dict)

    @property
    def message_type(self) -> int:
        """esm_class bits 5-2 (SMPP 3.4 §5.2.12): 0 a normal message, 0x04 an SMSC delivery
        receipt, 0x08/0x10 SME acknowledgements, 0x20 an intermediate notification."""
        return self.esm_class & 0x3C

    @property
    def udhi(self) -> bool:
        return bool(self.esm_class & 0x40)

    @property
    def payload(self) -> bytes:
        """The user data: ``short_message``, or the ``message_payload`` TLV when
        ``sm_length`` is 0 (SMPP 3.4 §5.3.2.32)."""
        if not self.short_message and TLV_MESSAGE_PAYLOAD in self.tlvs:
            return self.tlvs[TLV_MESSAGE_PAYLOAD]
        return self.short_message


def decode_deliver_sm(body: bytes) -> DeliverSm:
    fields = BodyReader(body)
    fields.c_string(6, "service_type")
    source_ton, source_npi = fields.u8(), fields.u8()
    source = fields.c_string(21, "source_addr")
    dest_ton, dest_npi = fields.u8(), fields.u8()
    destination = fields.c_string(21, "destination_addr")
    esm_class, protocol_id = fields.u8(), fields.u8()
    fields.u8()  # priority_flag
    fields.c_string(17, "schedule_delivery_time")
    fields.c_string(17, "validity_period")
    fields.u8()  # registered_delivery
    fields.u8()  # replace_if_present_flag
    data_coding = fields.u8()
    fields.u8()  # sm_default_msg_id
    length = fields.u8()
    if length > 254:
        raise PduError(f"sm_length {length} above 254")
    short_message = fields.octets(length)
    return DeliverSm(source_ton, source_npi, source, dest_ton, dest_npi, destination,
                     esm_class, protocol_id, data_coding, short_message, fields.tlvs())


def deliver_sm_resp_body() -> bytes:
    """deliver_sm_resp: ``message_id`` is unused and set to NULL (SMPP 3.4 §4.6.2)."""
    return b"\0"
