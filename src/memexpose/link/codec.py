"""The memexpose wire format: frames, their fields, and strict decoding.

docs/protocol.md is the specification; this module is its only encoder and
decoder. Every frame is a 16-byte little-endian header followed by a body
whose layout the type fixes (P1-P4 in the document)::

    offset size field
    0      4    length   u32  whole frame, header included (16 .. max_frame)
    4      1    type     u8   MsgType
    5      1    prio     u8   priority of the exchange (P10); 0 for one-way frames
    6      2    flags    u16  FLAG_WANT_SHARE on access requests, else 0
    8      8    id       u64  request id; a reply repeats it; 0 on one-way frames

Decoding is strict (P5): a wrong length for the type, an unknown type or
flag, a reserved field that is not zero, a size outside 1..8, a value wider
than its access, a result with unknown bits, an inconsistent share block:
each is a ``ProtocolError``, and the session closes the link. Encoding is
canonical, so ``encode_message(decode_message(frame)) == frame`` for every frame that decodes.

Two APIs over the same tables:

* hot path (session): the precompiled ``struct.Struct`` objects ``*_FRAME``
  pack a whole frame in one call, and ``unpack_*`` functions validate and
  return plain tuples, with no per-frame objects;
* cold path (tests, tools): ``encode_message`` and ``decode_message`` over
  the frozen message classes (``Read``, ``ReadReply``, ...).
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from memexpose.errors import HandshakeError, ProtocolError
from memexpose.memory import MEMTXATTRS_UNSPECIFIED, MemTxAttrs

__all__ = [
    "ACCESS_CLASS",
    "ATTRS_UNSPECIFIED_CODE",
    "CAP_BLOCK",
    "CAP_FD_PASSING",
    "CHANNEL_INTERRUPT",
    "CHANNEL_MEMORY",
    "DEFAULT_MAX_BLOCK",
    "FLAG_WANT_SHARE",
    "HEADER",
    "HEADER_SIZE",
    "HELLO_READONLY",
    "INTERRUPT_DATA_SIZE",
    "INVALIDATE_CLASS",
    "MAGIC",
    "PROTOCOL_MAJOR",
    "PROTOCOL_MINOR",
    "ROLE_ANY",
    "Bye",
    "Hello",
    "Interrupt",
    "InvalidateAck",
    "Invalidate",
    "Message",
    "MsgType",
    "Read",
    "ReadBlock",
    "ReadBlockReply",
    "ReadReply",
    "ShareInfo",
    "Write",
    "WriteBlock",
    "WriteBlockReply",
    "WriteReply",
    "decode_message",
    "decode_attrs",
    "encode_message",
    "encode_attrs",
    "max_frame",
    "request_priority",
    "resolve_sub_priorities",
]

PROTOCOL_MAJOR = 1
PROTOCOL_MINOR = 0
MAGIC = b"MXPL"

HEADER = struct.Struct("<IBBHQ")
HEADER_SIZE = HEADER.size  # 16

INTERRUPT_DATA_SIZE = 128
DEFAULT_MAX_BLOCK = 256 * 1024
_MIN_MAX_BLOCK = 4096
_MAX_MAX_BLOCK = 16 * 1024 * 1024
_SPACE_END = 1 << 64
_U64 = (1 << 64) - 1


class MsgType(enum.IntEnum):
    """Frame types (docs/protocol.md, P3)."""

    HELLO = 0x01
    BYE = 0x02
    READ = 0x10
    READ_REPLY = 0x11
    WRITE = 0x12
    WRITE_REPLY = 0x13
    READ_BLOCK = 0x14
    READ_BLOCK_REPLY = 0x15
    WRITE_BLOCK = 0x16
    WRITE_BLOCK_REPLY = 0x17
    INVALIDATE = 0x20
    INVALIDATE_ACK = 0x21
    INTERRUPT = 0x30


# Plain ints for the hot path (IntEnum attribute lookups cost).
T_HELLO = 0x01
T_BYE = 0x02
T_READ = 0x10
T_READ_REPLY = 0x11
T_WRITE = 0x12
T_WRITE_REPLY = 0x13
T_READ_BLOCK = 0x14
T_READ_BLOCK_REPLY = 0x15
T_WRITE_BLOCK = 0x16
T_WRITE_BLOCK_REPLY = 0x17
T_INVALIDATE = 0x20
T_INVALIDATE_ACK = 0x21
T_INTERRUPT = 0x30

REQUEST_TYPES = frozenset({T_READ, T_WRITE, T_READ_BLOCK, T_WRITE_BLOCK, T_INVALIDATE})
REPLY_TYPES = frozenset({T_READ_REPLY, T_WRITE_REPLY, T_READ_BLOCK_REPLY, T_WRITE_BLOCK_REPLY,
                         T_INVALIDATE_ACK})
REPLY_OF = {T_READ: T_READ_REPLY, T_WRITE: T_WRITE_REPLY, T_READ_BLOCK: T_READ_BLOCK_REPLY,
            T_WRITE_BLOCK: T_WRITE_BLOCK_REPLY, T_INVALIDATE: T_INVALIDATE_ACK}

# Header flags.
FLAG_WANT_SHARE = 0x0001
"""On an access request: the requester can map shared memory (send an fd)."""

# HELLO fields.
CHANNEL_MEMORY = 0
CHANNEL_INTERRUPT = 1
ROLE_ANY = 0xFF
HELLO_READONLY = 0x0001
"""HELLO flag: the exposed window is read-only."""
CAP_FD_PASSING = 0x0001
"""Capability: this side sends and accepts fds (UNIX sockets only)."""
CAP_BLOCK = 0x0002
"""Capability: this side serves READ_BLOCK / WRITE_BLOCK."""

# Priority classes (P10): priority = 2 * class + sub-priority of the requester.
ACCESS_CLASS = 0
INVALIDATE_CLASS = 1
_MAX_PRIO = 2 * INVALIDATE_CLASS + 1

# Share kinds (P4).
SHARE_NONE = 0
SHARE_FD = 1
SHARE_READONLY = 0x01

# MemTxAttrs on the wire (P6): flag bits, then the requester id in bits 16..31.
ATTR_SECURE = 0x1
ATTR_USER = 0x2
ATTR_MEMORY = 0x4
ATTR_UNSPECIFIED = 0x8
_ATTR_KNOWN = 0xFFFF000F
ATTRS_UNSPECIFIED_CODE = ATTR_UNSPECIFIED

# -- body layouts ------------------------------------------------------------

HELLO_BODY = struct.Struct("<4sHHBBHIIQQI")
BYE_BODY = struct.Struct("<II")
READ_BODY = struct.Struct("<QBBHI")
WRITE_BODY = struct.Struct("<QQBBHI")
BLOCK_REQ_BODY = struct.Struct("<QII")
SHARE = struct.Struct("<BBHIQQQ")
READ_REPLY_BODY = struct.Struct("<IIQBBHIQQQ")
RESULT_SHARE_BODY = struct.Struct("<IIBBHIQQQ")  # WRITE_REPLY, WRITE_BLOCK_REPLY, READ_BLOCK_REPLY
INVALIDATE_BODY = struct.Struct("<QQ")
INVALIDATE_ACK_BODY = struct.Struct("<II")
INTERRUPT_BODY = struct.Struct("<Q128s")

# Whole frames, packed in one call on the hot path.
HELLO_FRAME = struct.Struct("<IBBHQ" + HELLO_BODY.format[1:])
BYE_FRAME = struct.Struct("<IBBHQ" + BYE_BODY.format[1:])
READ_FRAME = struct.Struct("<IBBHQ" + READ_BODY.format[1:])
WRITE_FRAME = struct.Struct("<IBBHQ" + WRITE_BODY.format[1:])
BLOCK_REQ_FRAME = struct.Struct("<IBBHQ" + BLOCK_REQ_BODY.format[1:])
READ_REPLY_FRAME = struct.Struct("<IBBHQ" + READ_REPLY_BODY.format[1:])
RESULT_SHARE_FRAME = struct.Struct("<IBBHQ" + RESULT_SHARE_BODY.format[1:])
INVALIDATE_FRAME = struct.Struct("<IBBHQ" + INVALIDATE_BODY.format[1:])
INVALIDATE_ACK_FRAME = struct.Struct("<IBBHQ" + INVALIDATE_ACK_BODY.format[1:])
INTERRUPT_FRAME = struct.Struct("<IBBHQ" + INTERRUPT_BODY.format[1:])

HELLO_LEN = HELLO_FRAME.size
BYE_LEN = BYE_FRAME.size
READ_LEN = READ_FRAME.size
WRITE_LEN = WRITE_FRAME.size
BLOCK_REQ_LEN = BLOCK_REQ_FRAME.size
READ_REPLY_LEN = READ_REPLY_FRAME.size
RESULT_SHARE_LEN = RESULT_SHARE_FRAME.size
INVALIDATE_LEN = INVALIDATE_FRAME.size
INVALIDATE_ACK_LEN = INVALIDATE_ACK_FRAME.size
INTERRUPT_LEN = INTERRUPT_FRAME.size

_FIXED_LEN = {
    T_HELLO: HELLO_LEN,
    T_BYE: BYE_LEN,
    T_READ: READ_LEN,
    T_READ_REPLY: READ_REPLY_LEN,
    T_WRITE: WRITE_LEN,
    T_WRITE_REPLY: RESULT_SHARE_LEN,
    T_READ_BLOCK: BLOCK_REQ_LEN,
    T_WRITE_BLOCK_REPLY: RESULT_SHARE_LEN,
    T_INVALIDATE: INVALIDATE_LEN,
    T_INVALIDATE_ACK: INVALIDATE_ACK_LEN,
    T_INTERRUPT: INTERRUPT_LEN,
}
# Block frames: a fixed part, then ``length`` data bytes.
_BLOCK_BASE = {T_WRITE_BLOCK: BLOCK_REQ_LEN, T_READ_BLOCK_REPLY: RESULT_SHARE_LEN}

_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))


def max_frame(max_block: int) -> int:
    """Return the largest legal frame for a link whose blocks hold ``max_block`` bytes."""
    return RESULT_SHARE_LEN + max_block


def request_priority(cls: int, sub_priority: int) -> int:
    """Return the priority of a request of class ``cls`` sent by a side with ``sub_priority``.

    Invalidations (class 1) outrank accesses (class 0); within a class the
    side with sub-priority 1 outranks the side with 0 (docs/protocol.md, P10).
    """
    return 2 * cls + sub_priority


def resolve_sub_priorities(my_role: int, my_nonce: int, peer_role: int,
                           peer_nonce: int) -> tuple[int, int]:
    """Return ``(mine, peer's)`` sub-priorities from the two HELLOs (P9).

    A side asking for 0 or 1 gets it unless both ask for the same one; a
    side saying ``ROLE_ANY`` takes what is left. Ties go to the larger nonce,
    which gets 1. Both sides compute the same answer.

    Raises:
        HandshakeError: equal nonces with a tie to break (retry the connect).
    """
    if my_role != ROLE_ANY and peer_role != ROLE_ANY and my_role != peer_role:
        return my_role, peer_role
    if my_role != ROLE_ANY and peer_role == ROLE_ANY:
        return my_role, 1 - my_role
    if my_role == ROLE_ANY and peer_role != ROLE_ANY:
        return 1 - peer_role, peer_role
    if my_nonce == peer_nonce:
        raise HandshakeError("both HELLOs carry the same nonce; cannot break the sub-priority "
                             "tie (reconnect: nonces are random)")
    mine = 1 if my_nonce > peer_nonce else 0
    return mine, 1 - mine


# -- attributes -----------------------------------------------------------------

_ATTRS_CACHE: dict[int, MemTxAttrs] = {ATTRS_UNSPECIFIED_CODE: MEMTXATTRS_UNSPECIFIED}


def encode_attrs(attrs: MemTxAttrs) -> int:
    """Return the 32-bit wire code of ``attrs`` (P6)."""
    if attrs is MEMTXATTRS_UNSPECIFIED:
        return ATTRS_UNSPECIFIED_CODE
    rid = attrs.requester_id
    if not 0 <= rid <= 0xFFFF:
        raise ValueError(f"requester_id {rid:#x} does not fit in 16 bits")
    return ((ATTR_SECURE if attrs.secure else 0) | (ATTR_USER if attrs.user else 0)
            | (ATTR_MEMORY if attrs.memory else 0)
            | (ATTR_UNSPECIFIED if attrs.unspecified else 0) | rid << 16)


def decode_attrs(code: int) -> MemTxAttrs:
    """Return the ``MemTxAttrs`` for a wire code that ``check_attrs`` accepted."""
    attrs = _ATTRS_CACHE.get(code)
    if attrs is None:
        attrs = MemTxAttrs(secure=bool(code & ATTR_SECURE), requester_id=code >> 16,
                           user=bool(code & ATTR_USER), memory=bool(code & ATTR_MEMORY),
                           unspecified=bool(code & ATTR_UNSPECIFIED))
        if len(_ATTRS_CACHE) < 4096:
            _ATTRS_CACHE[code] = attrs
    return attrs


# -- validation helpers (hot path: plain functions over ints) ------------------------


def bad(message: str) -> ProtocolError:
    """Return the ProtocolError for a malformed frame (the session adds the peer)."""
    return ProtocolError(message)


def parse_header(buf: bytes | bytearray | memoryview, off: int,
                 frame_limit: int) -> tuple[int, int, int, int, int]:
    """Unpack and check the header at ``buf[off:]``: ``(length, type, prio, flags, id)``.

    Checks the length against the type (exact for fixed frames, within
    ``frame_limit`` for block frames) and the flags against the type.

    Raises:
        ProtocolError: any rule of P2/P3 broken.
    """
    length, ftype, prio, flags, rid = HEADER.unpack_from(buf, off)
    fixed = _FIXED_LEN.get(ftype)
    if fixed is not None:
        if length != fixed:
            raise bad(f"{_type_name(ftype)} frame of {length} bytes; it is always {fixed}")
    else:
        base = _BLOCK_BASE.get(ftype)
        if base is None:
            raise bad(f"unknown frame type {ftype:#04x} (length {length})")
        if length <= base:
            raise bad(f"{_type_name(ftype)} frame of {length} bytes carries no data after its "
                      f"{base}-byte fixed part")
        if length > frame_limit:
            raise bad(f"{_type_name(ftype)} frame of {length} bytes is larger than the largest "
                      f"frame of this link ({frame_limit} bytes)")
    if flags and (flags & ~FLAG_WANT_SHARE
                  or ftype not in (T_READ, T_WRITE, T_READ_BLOCK, T_WRITE_BLOCK)):
        raise bad(f"{_type_name(ftype)} frame with unknown flags {flags:#06x}")
    if prio > _MAX_PRIO:
        raise bad(f"{_type_name(ftype)} frame with priority {prio}; priorities are 0..3")
    if ftype in REQUEST_TYPES or ftype in REPLY_TYPES:
        if rid == 0:
            raise bad(f"{_type_name(ftype)} frame with request id 0; ids start at 1")
    elif rid or prio:
        raise bad(f"one-way {_type_name(ftype)} frame with id {rid} / priority {prio}; "
                  "both must be 0")
    return length, ftype, prio, flags, rid


def _type_name(ftype: int) -> str:
    try:
        return MsgType(ftype).name
    except ValueError:
        return f"type {ftype:#04x}"


def _check_share(kind: int, sflags: int, r16: int, r32: int, start: int, size: int,
                 fd_offset: int) -> None:
    if r16 or r32:
        raise bad("share block with non-zero reserved fields")
    if kind == SHARE_NONE:
        if sflags or start or size or fd_offset:
            raise bad("share block of kind NONE with non-zero fields")
    elif kind == SHARE_FD:
        if sflags & ~SHARE_READONLY:
            raise bad(f"share block with unknown flags {sflags:#04x}")
        if size == 0 or start + size > _SPACE_END or fd_offset + size > _SPACE_END:
            raise bad(f"share block start={start:#x} size={size:#x} fd_offset={fd_offset:#x} "
                      "is empty or runs past 2**64")
    else:
        raise bad(f"share block of unknown kind {kind}")


def check_attrs(code: int) -> None:
    """Raise ProtocolError if reserved attribute bits are set."""
    if code & ~_ATTR_KNOWN:
        raise bad(f"attributes {code:#010x} set reserved bits")


def unpack_read(buf: bytes | bytearray | memoryview, off: int) -> tuple[int, int, int]:
    """Return ``(addr, size, attrs)`` of a READ body at ``off``."""
    addr, size, r8, r16, attrs = READ_BODY.unpack_from(buf, off)
    if r8 or r16 or attrs & ~_ATTR_KNOWN or not 1 <= size <= 8 or addr + size > _SPACE_END:
        _explain_access("READ", addr, size, r8 | r16, attrs)
    return addr, size, attrs


def unpack_write(buf: bytes | bytearray | memoryview, off: int) -> tuple[int, int, int, int]:
    """Return ``(addr, value, size, attrs)`` of a WRITE body at ``off``."""
    addr, value, size, r8, r16, attrs = WRITE_BODY.unpack_from(buf, off)
    if r8 or r16 or attrs & ~_ATTR_KNOWN or not 1 <= size <= 8 or addr + size > _SPACE_END:
        _explain_access("WRITE", addr, size, r8 | r16, attrs)
    if value & ~_MASKS[size]:
        raise bad(f"WRITE of {size} bytes with value {value:#x} wider than the access")
    return addr, value, size, attrs


def _explain_access(what: str, addr: int, size: int, reserved: int, attrs: int) -> None:
    if reserved:
        raise bad(f"{what} with non-zero reserved fields")
    check_attrs(attrs)
    if not 1 <= size <= 8:
        raise bad(f"{what} of size {size}; single accesses are 1..8 bytes (use blocks)")
    raise bad(f"{what} of {size} bytes at {addr:#x} runs past 2**64")


def unpack_block_request(buf: bytes | bytearray | memoryview, off: int, length: int,
                         ftype: int, max_block: int) -> tuple[int, int, int]:
    """Return ``(addr, length, attrs)`` of a READ_BLOCK or WRITE_BLOCK body.

    For WRITE_BLOCK the data follows at ``off + 16`` and its size must equal
    the length field.
    """
    addr, count, attrs = BLOCK_REQ_BODY.unpack_from(buf, off)
    check_attrs(attrs)
    if not 1 <= count <= max_block:
        raise bad(f"{_type_name(ftype)} of {count} bytes; blocks hold 1..{max_block} bytes")
    if addr + count > _SPACE_END:
        raise bad(f"{_type_name(ftype)} of {count} bytes at {addr:#x} runs past 2**64")
    if ftype == T_WRITE_BLOCK and length - BLOCK_REQ_LEN != count:
        raise bad(f"WRITE_BLOCK says {count} bytes but carries {length - BLOCK_REQ_LEN}")
    return addr, count, attrs


def unpack_read_reply(buf: bytes | bytearray | memoryview, off: int
                      ) -> tuple[int, int, int, int, int, int, bool]:
    """Return ``(result, value, share_kind, start, size, fd_offset, readonly)``."""
    result, res, value, kind, sflags, r16, r32, start, size, fdo = \
        READ_REPLY_BODY.unpack_from(buf, off)
    if res or result & ~7 or kind or sflags or r16 or r32 or start or size or fdo:
        if res or result & ~7:
            raise bad(f"READ_REPLY with result {result:#x} / reserved {res:#x}; results "
                      "are MemTxResult bits 0..2")
        _check_share(kind, sflags, r16, r32, start, size, fdo)
    return result, value, kind, start, size, fdo, bool(sflags)


def unpack_result_share(buf: bytes | bytearray | memoryview, off: int, ftype: int
                        ) -> tuple[int, int, int, int, int, int, bool]:
    """Return ``(result, count, share_kind, start, size, fd_offset, readonly)``.

    ``count`` is the data length of a READ_BLOCK_REPLY and 0 otherwise.
    """
    result, count, kind, sflags, r16, r32, start, size, fdo = \
        RESULT_SHARE_BODY.unpack_from(buf, off)
    if result & ~7:
        raise bad(f"{_type_name(ftype)} with result {result:#x}; results are MemTxResult "
                  "bits 0..2")
    if ftype != T_READ_BLOCK_REPLY and count:
        raise bad(f"{_type_name(ftype)} with non-zero reserved field")
    if kind or sflags or r16 or r32 or start or size or fdo:
        _check_share(kind, sflags, r16, r32, start, size, fdo)
    return result, count, kind, start, size, fdo, bool(sflags)


# -- fast matchers (hot path) ---------------------------------------------------------
#
# A matcher reads a whole frame of its type's length at ``buf[pos:]`` as
# little-endian 64-bit words and returns its fields only if it is the
# expected, plain frame and breaks no rule of P2-P6: exactly the checks that
# ``parse_header`` and the ``unpack_*`` function of that type make, plus the
# caller's expectations (id, priority, no share). Anything else gives None,
# and the caller hands the frame to the strict path, which serves it or
# raises the ProtocolError naming the broken rule. So a matcher decides
# nothing the strict path would decide differently; it only skips the
# general dispatch. The header's first word is ``length | type << 32 |
# prio << 40 | flags << 48`` (``head_word``), so one comparison checks four
# fields; a word that holds a u32 field and a reserved u32 is checked with
# one comparison too.

_W4 = struct.Struct("<4Q")
_W5 = struct.Struct("<5Q")
_W7 = struct.Struct("<7Q")
_W8 = struct.Struct("<8Q")
_WANT_SHARE_BIT = FLAG_WANT_SHARE << 48
# The last word of READ and WRITE: size u8, reserved u8 + u16, attrs u32.
_ACCESS_TAIL_BAD = 0xFFFF_FF00 | ((~_ATTR_KNOWN & 0xFFFF_FFFF) << 32)


# Share-less replies, packed from ``head_word``, the id, the result and (READ_REPLY) the
# value; the pad bytes (reserved fields, a share block of kind NONE) pack as zeros.
READ_REPLY_PLAIN = struct.Struct("<4Q32x")
WRITE_REPLY_PLAIN = struct.Struct("<3Q32x")


def head_word(ftype: int, prio: int, flags: int = 0) -> int:
    """Return the first header word of a fixed-length frame (for the matchers)."""
    return _FIXED_LEN[ftype] | ftype << 32 | prio << 40 | flags << 48


def match_read_reply(buf: bytes | bytearray | memoryview, pos: int, head: int, rid: int,
                     size: int) -> tuple[int, int] | None:
    """Return ``(value, result)`` if ``buf[pos:]`` is a share-less READ_REPLY to ``rid``.

    ``head`` is ``head_word(T_READ_REPLY, prio)`` for the request's priority.
    """
    w0, frid, result, value, s0, s1, s2, s3 = _W8.unpack_from(buf, pos)
    # result <= 7: MemTxResult bits only, and the reserved u32 above it is 0.
    if (w0 != head or frid != rid or result > 7 or s0 or s1 or s2 or s3
            or value > _MASKS[size]):
        return None
    return value, result


def match_write_reply(buf: bytes | bytearray | memoryview, pos: int, head: int,
                      rid: int) -> int | None:
    """Return the result if ``buf[pos:]`` is a share-less WRITE_REPLY to ``rid``."""
    w0, frid, result, s0, s1, s2, s3 = _W7.unpack_from(buf, pos)
    if w0 != head or frid != rid or result > 7 or s0 or s1 or s2 or s3:
        return None
    return result


def match_read(buf: bytes | bytearray | memoryview, pos: int,
               head: int) -> tuple[int, int, int, int, int] | None:
    """Return ``(id, flags, addr, size, attrs)`` if ``buf[pos:]`` is a valid READ.

    ``head`` is ``head_word(T_READ, prio, FLAG_WANT_SHARE)`` for the peer's
    access priority; the frame's flags may be 0 or ``FLAG_WANT_SHARE``.
    """
    w0, rid, addr, tail = _W4.unpack_from(buf, pos)
    size = tail & 0xFF
    if ((w0 | _WANT_SHARE_BIT) != head or not rid or tail & _ACCESS_TAIL_BAD
            or not 0 < size <= 8 or addr + size > _SPACE_END):
        return None
    return rid, w0 >> 48, addr, size, tail >> 32


def match_write(buf: bytes | bytearray | memoryview, pos: int,
                head: int) -> tuple[int, int, int, int, int, int] | None:
    """Return ``(id, flags, addr, value, size, attrs)`` if ``buf[pos:]`` is a valid WRITE.

    ``head`` is ``head_word(T_WRITE, prio, FLAG_WANT_SHARE)``, as for ``match_read``.
    """
    w0, rid, addr, value, tail = _W5.unpack_from(buf, pos)
    size = tail & 0xFF
    if ((w0 | _WANT_SHARE_BIT) != head or not rid or tail & _ACCESS_TAIL_BAD
            or not 0 < size <= 8 or addr + size > _SPACE_END or value > _MASKS[size]):
        return None
    return rid, w0 >> 48, addr, value, size, tail >> 32


def unpack_invalidate(buf: bytes | bytearray | memoryview, off: int) -> tuple[int, int]:
    """Return ``(start, size)`` of an INVALIDATE body."""
    start, size = INVALIDATE_BODY.unpack_from(buf, off)
    if size == 0 or start + size > _SPACE_END:
        raise bad(f"INVALIDATE start={start:#x} size={size:#x} is empty or runs past 2**64")
    return start, size


def unpack_invalidate_ack(buf: bytes | bytearray | memoryview, off: int) -> int:
    """Return the unmapped count of an INVALIDATE_ACK body."""
    unmapped, res = INVALIDATE_ACK_BODY.unpack_from(buf, off)
    if res:
        raise bad("INVALIDATE_ACK with non-zero reserved field")
    return unmapped


def unpack_bye(buf: bytes | bytearray | memoryview, off: int) -> int:
    """Return the reason code of a BYE body."""
    reason, res = BYE_BODY.unpack_from(buf, off)
    if res:
        raise bad("BYE with non-zero reserved field")
    return reason


def unpack_interrupt(buf: bytes | bytearray | memoryview, off: int) -> tuple[int, bytes]:
    """Return ``(type, data)`` of an INTERRUPT body (128 data bytes)."""
    return INTERRUPT_BODY.unpack_from(buf, off)  # type: ignore[return-value]


def unpack_hello(buf: bytes | bytearray | memoryview, off: int
                 ) -> tuple[int, int, int, int, int, int, int, int, int]:
    """Return ``(major, minor, channel, role, flags, caps, max_block, nonce, exposed)``.

    Raises:
        HandshakeError: wrong magic or an incompatible major version.
        ProtocolError: any other malformed field.
    """
    magic, major, minor, channel, role, flags, caps, max_block, nonce, exposed, res = \
        HELLO_BODY.unpack_from(buf, off)
    if magic != MAGIC:
        raise HandshakeError(f"HELLO with magic {magic!r}, expected {MAGIC!r}: not a memexpose "
                             "peer")
    if major != PROTOCOL_MAJOR:
        raise HandshakeError(f"peer speaks memexpose protocol {major}.{minor}, we speak "
                             f"{PROTOCOL_MAJOR}.{PROTOCOL_MINOR}; upgrade the older side")
    if channel not in (CHANNEL_MEMORY, CHANNEL_INTERRUPT):
        raise bad(f"HELLO for unknown channel {channel}")
    if role not in (0, 1, ROLE_ANY):
        raise bad(f"HELLO asks for sub-priority {role}; use 0, 1 or {ROLE_ANY} (any)")
    if flags & ~HELLO_READONLY or res:
        raise bad(f"HELLO with unknown flags {flags:#06x} or non-zero reserved field")
    if not _MIN_MAX_BLOCK <= max_block <= _MAX_MAX_BLOCK:
        raise bad(f"HELLO with max_block {max_block}; it must be in "
                  f"{_MIN_MAX_BLOCK}..{_MAX_MAX_BLOCK}")
    return major, minor, channel, role, flags, caps, max_block, nonce, exposed


# -- the cold-path message API --------------------------------------------------


@dataclass(frozen=True, slots=True)
class ShareInfo:
    """Where the flat range under an access lives in the fd sent with the reply.

    Attributes:
        start: first byte, relative to the exposed window.
        size: bytes (clipped to the window).
        fd_offset: offset of ``start`` in the fd.
        readonly: the importer must map it read-only.
    """

    start: int
    size: int
    fd_offset: int
    readonly: bool = False


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame on each channel (P8)."""

    channel: int
    role: int
    caps: int
    max_block: int
    nonce: int
    exposed_size: int
    flags: int = 0
    major: int = PROTOCOL_MAJOR
    minor: int = PROTOCOL_MINOR


@dataclass(frozen=True, slots=True)
class Bye:
    """Orderly end of the link (one-way)."""

    reason: int = 0


@dataclass(frozen=True, slots=True)
class Read:
    """Load ``size`` (1..8) bytes at window offset ``addr``."""

    id: int
    prio: int
    addr: int
    size: int
    attrs: int = ATTRS_UNSPECIFIED_CODE
    want_share: bool = False


@dataclass(frozen=True, slots=True)
class ReadReply:
    """Result and value of a READ; ``share`` when an fd travels with it."""

    id: int
    prio: int
    result: int
    value: int
    share: ShareInfo | None = None


@dataclass(frozen=True, slots=True)
class Write:
    """Store the low ``size`` bytes of ``value`` at window offset ``addr``."""

    id: int
    prio: int
    addr: int
    value: int
    size: int
    attrs: int = ATTRS_UNSPECIFIED_CODE
    want_share: bool = False


@dataclass(frozen=True, slots=True)
class WriteReply:
    """Result of a WRITE."""

    id: int
    prio: int
    result: int
    share: ShareInfo | None = None


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """Read ``length`` bytes from window offset ``addr`` (bulk, P7)."""

    id: int
    prio: int
    addr: int
    length: int
    attrs: int = ATTRS_UNSPECIFIED_CODE
    want_share: bool = False


@dataclass(frozen=True, slots=True)
class ReadBlockReply:
    """Result and data of a READ_BLOCK."""

    id: int
    prio: int
    result: int
    data: bytes
    share: ShareInfo | None = None


@dataclass(frozen=True, slots=True)
class WriteBlock:
    """Write ``data`` at window offset ``addr`` (bulk)."""

    id: int
    prio: int
    addr: int
    data: bytes
    attrs: int = ATTRS_UNSPECIFIED_CODE
    want_share: bool = False


@dataclass(frozen=True, slots=True)
class WriteBlockReply:
    """Result of a WRITE_BLOCK."""

    id: int
    prio: int
    result: int
    share: ShareInfo | None = None


@dataclass(frozen=True, slots=True)
class Invalidate:
    """The window range ``[start, start + size)`` changed on the exporter."""

    id: int
    prio: int
    start: int
    size: int


@dataclass(frozen=True, slots=True)
class InvalidateAck:
    """The importer dropped its mappings of the range (``unmapped`` of them)."""

    id: int
    prio: int
    unmapped: int = 0


@dataclass(frozen=True, slots=True)
class Interrupt:
    """An interrupt: a 64-bit type and exactly 128 data bytes (interrupt channel)."""

    type: int
    data: bytes = bytes(INTERRUPT_DATA_SIZE)


Message = (Hello | Bye | Read | ReadReply | Write | WriteReply | ReadBlock | ReadBlockReply
           | WriteBlock | WriteBlockReply | Invalidate | InvalidateAck | Interrupt)


def _share_fields(share: ShareInfo | None) -> tuple[int, int, int, int, int, int, int]:
    if share is None:
        return SHARE_NONE, 0, 0, 0, 0, 0, 0
    return (SHARE_FD, SHARE_READONLY if share.readonly else 0, 0, 0, share.start, share.size,
            share.fd_offset)


def _share_from(kind: int, start: int, size: int, fdo: int, ro: bool) -> ShareInfo | None:
    return ShareInfo(start, size, fdo, ro) if kind == SHARE_FD else None


def encode_message(msg: Message) -> bytes:
    """Return the frame for ``msg`` (the canonical encoding).

    Raises:
        struct.error / ValueError: a field that does not fit its wire width.
    """
    ws = FLAG_WANT_SHARE if getattr(msg, "want_share", False) else 0
    if isinstance(msg, Hello):
        return HELLO_FRAME.pack(HELLO_LEN, T_HELLO, 0, 0, 0, MAGIC, msg.major, msg.minor,
                                msg.channel, msg.role, msg.flags, msg.caps, msg.max_block,
                                msg.nonce, msg.exposed_size, 0)
    if isinstance(msg, Bye):
        return BYE_FRAME.pack(BYE_LEN, T_BYE, 0, 0, 0, msg.reason, 0)
    if isinstance(msg, Read):
        return READ_FRAME.pack(READ_LEN, T_READ, msg.prio, ws, msg.id, msg.addr, msg.size, 0, 0,
                               msg.attrs)
    if isinstance(msg, ReadReply):
        return READ_REPLY_FRAME.pack(READ_REPLY_LEN, T_READ_REPLY, msg.prio, 0, msg.id,
                                     msg.result, 0, msg.value, *_share_fields(msg.share))
    if isinstance(msg, Write):
        return WRITE_FRAME.pack(WRITE_LEN, T_WRITE, msg.prio, ws, msg.id, msg.addr, msg.value,
                                msg.size, 0, 0, msg.attrs)
    if isinstance(msg, WriteReply | WriteBlockReply):
        ftype = T_WRITE_REPLY if isinstance(msg, WriteReply) else T_WRITE_BLOCK_REPLY
        return RESULT_SHARE_FRAME.pack(RESULT_SHARE_LEN, ftype, msg.prio, 0, msg.id, msg.result,
                                       0, *_share_fields(msg.share))
    if isinstance(msg, ReadBlock):
        return BLOCK_REQ_FRAME.pack(BLOCK_REQ_LEN, T_READ_BLOCK, msg.prio, ws, msg.id, msg.addr,
                                    msg.length, msg.attrs)
    if isinstance(msg, ReadBlockReply):
        return RESULT_SHARE_FRAME.pack(RESULT_SHARE_LEN + len(msg.data), T_READ_BLOCK_REPLY,
                                       msg.prio, 0, msg.id, msg.result, len(msg.data),
                                       *_share_fields(msg.share)) + bytes(msg.data)
    if isinstance(msg, WriteBlock):
        return BLOCK_REQ_FRAME.pack(BLOCK_REQ_LEN + len(msg.data), T_WRITE_BLOCK, msg.prio, ws,
                                    msg.id, msg.addr, len(msg.data), msg.attrs) + bytes(msg.data)
    if isinstance(msg, Invalidate):
        return INVALIDATE_FRAME.pack(INVALIDATE_LEN, T_INVALIDATE, msg.prio, 0, msg.id,
                                     msg.start, msg.size)
    if isinstance(msg, InvalidateAck):
        return INVALIDATE_ACK_FRAME.pack(INVALIDATE_ACK_LEN, T_INVALIDATE_ACK, msg.prio, 0,
                                         msg.id, msg.unmapped, 0)
    if isinstance(msg, Interrupt):
        if len(msg.data) != INTERRUPT_DATA_SIZE:
            raise ValueError(f"interrupt data must be exactly {INTERRUPT_DATA_SIZE} bytes, "
                             f"got {len(msg.data)}")
        return INTERRUPT_FRAME.pack(INTERRUPT_LEN, T_INTERRUPT, 0, 0, 0, msg.type, msg.data)
    raise TypeError(f"cannot encode {type(msg).__name__}; pass one of the codec's messages")


def decode_message(frame: bytes | bytearray | memoryview, *,
           max_block: int = DEFAULT_MAX_BLOCK) -> Message:
    """Decode exactly one frame (the whole of ``frame``) into a message.

    Raises:
        ProtocolError: the bytes break any rule of docs/protocol.md (P2-P8),
            or hold more or less than one frame.
    """
    data = bytes(frame)
    if len(data) < HEADER_SIZE:
        raise bad(f"frame of {len(data)} bytes is shorter than the {HEADER_SIZE}-byte header")
    length, ftype, prio, flags, rid = parse_header(data, 0, max_frame(max_block))
    if length != len(data):
        raise bad(f"header says {length} bytes, the buffer holds {len(data)}")
    off = HEADER_SIZE
    ws = bool(flags & FLAG_WANT_SHARE)
    if ftype == T_HELLO:
        major, minor, channel, role, hflags, caps, mb, nonce, exposed = unpack_hello(data, off)
        return Hello(channel, role, caps, mb, nonce, exposed, hflags, major, minor)
    if ftype == T_BYE:
        return Bye(unpack_bye(data, off))
    if ftype == T_READ:
        addr, size, attrs = unpack_read(data, off)
        return Read(rid, prio, addr, size, attrs, ws)
    if ftype == T_READ_REPLY:
        result, value, kind, start, size, fdo, ro = unpack_read_reply(data, off)
        return ReadReply(rid, prio, result, value, _share_from(kind, start, size, fdo, ro))
    if ftype == T_WRITE:
        addr, value, size, attrs = unpack_write(data, off)
        return Write(rid, prio, addr, value, size, attrs, ws)
    if ftype in (T_WRITE_REPLY, T_WRITE_BLOCK_REPLY, T_READ_BLOCK_REPLY):
        result, count, kind, start, size, fdo, ro = unpack_result_share(data, off, ftype)
        share = _share_from(kind, start, size, fdo, ro)
        if ftype == T_WRITE_REPLY:
            return WriteReply(rid, prio, result, share)
        if ftype == T_WRITE_BLOCK_REPLY:
            return WriteBlockReply(rid, prio, result, share)
        if count != length - RESULT_SHARE_LEN:
            raise bad(f"READ_BLOCK_REPLY says {count} bytes but carries "
                      f"{length - RESULT_SHARE_LEN}")
        return ReadBlockReply(rid, prio, result, data[RESULT_SHARE_LEN:], share)
    if ftype in (T_READ_BLOCK, T_WRITE_BLOCK):
        addr, count, attrs = unpack_block_request(data, off, length, ftype, max_block)
        if ftype == T_READ_BLOCK:
            return ReadBlock(rid, prio, addr, count, attrs, ws)
        return WriteBlock(rid, prio, addr, data[BLOCK_REQ_LEN:], attrs, ws)
    if ftype == T_INVALIDATE:
        start, size = unpack_invalidate(data, off)
        return Invalidate(rid, prio, start, size)
    if ftype == T_INVALIDATE_ACK:
        return InvalidateAck(rid, prio, unpack_invalidate_ack(data, off))
    # parse_header admits no other type.
    itype, idata = unpack_interrupt(data, off)
    return Interrupt(itype, idata)
