"""memexpose.link.codec: frames round-trip, and anything malformed is a ProtocolError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memexpose.errors import HandshakeError, ProtocolError
from memexpose.link import codec
from memexpose.link.codec import (
    Bye,
    Hello,
    Interrupt,
    Invalidate,
    InvalidateAck,
    Read,
    ReadBlock,
    ReadBlockReply,
    ReadReply,
    ShareInfo,
    Write,
    WriteBlock,
    WriteBlockReply,
    WriteReply,
    decode_message,
    encode_message,
)
from memexpose.memory import MEMTXATTRS_UNSPECIFIED, MemTxAttrs

pytestmark = pytest.mark.timeout(60)

MAX_BLOCK = 4096
U64 = st.integers(0, (1 << 64) - 1)
IDS = st.integers(1, (1 << 64) - 1)
PRIOS = st.integers(0, 3)
RESULTS = st.integers(0, 7)
ATTRS = st.builds(lambda flags, rid: flags | rid << 16, st.integers(0, 15),
                  st.integers(0, 0xFFFF))


@st.composite
def shares(draw: st.DrawFn) -> ShareInfo | None:
    if draw(st.booleans()):
        return None
    size = draw(st.integers(1, 1 << 40))
    start = draw(st.integers(0, (1 << 64) - size))
    fd_offset = draw(st.integers(0, (1 << 64) - size))
    return ShareInfo(start, size, fd_offset, draw(st.booleans()))


@st.composite
def accesses(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, 8))
    return draw(st.integers(0, (1 << 64) - size)), size


@st.composite
def messages(draw: st.DrawFn) -> codec.Message:
    kind = draw(st.sampled_from(["hello", "bye", "read", "read_reply", "write", "write_reply",
                                 "read_block", "read_block_reply", "write_block",
                                 "write_block_reply", "invalidate", "ack", "interrupt"]))
    rid, prio = draw(IDS), draw(PRIOS)
    if kind == "hello":
        return Hello(draw(st.integers(0, 1)), draw(st.sampled_from([0, 1, 0xFF])),
                     draw(st.integers(0, 0xFFFFFFFF)), draw(st.integers(4096, MAX_BLOCK)),
                     draw(U64), draw(U64), draw(st.integers(0, 1)),
                     codec.PROTOCOL_MAJOR, draw(st.integers(0, 0xFFFF)))
    if kind == "bye":
        return Bye(draw(st.integers(0, 0xFFFFFFFF)))
    if kind == "read":
        addr, size = draw(accesses())
        return Read(rid, prio, addr, size, draw(ATTRS), draw(st.booleans()))
    if kind == "read_reply":
        return ReadReply(rid, prio, draw(RESULTS), draw(U64), draw(shares()))
    if kind == "write":
        addr, size = draw(accesses())
        value = draw(st.integers(0, (1 << (8 * size)) - 1))
        return Write(rid, prio, addr, value, size, draw(ATTRS), draw(st.booleans()))
    if kind == "write_reply":
        return WriteReply(rid, prio, draw(RESULTS), draw(shares()))
    if kind == "read_block":
        n = draw(st.integers(1, MAX_BLOCK))
        return ReadBlock(rid, prio, draw(st.integers(0, (1 << 64) - n)), n, draw(ATTRS),
                         draw(st.booleans()))
    if kind == "read_block_reply":
        return ReadBlockReply(rid, prio, draw(RESULTS), draw(st.binary(min_size=1, max_size=64)),
                              draw(shares()))
    if kind == "write_block":
        data = draw(st.binary(min_size=1, max_size=64))
        return WriteBlock(rid, prio, draw(st.integers(0, (1 << 64) - len(data))), data,
                          draw(ATTRS), draw(st.booleans()))
    if kind == "write_block_reply":
        return WriteBlockReply(rid, prio, draw(RESULTS), draw(shares()))
    if kind == "invalidate":
        size = draw(st.integers(1, 1 << 48))
        return Invalidate(rid, prio, draw(st.integers(0, (1 << 64) - size)), size)
    if kind == "ack":
        return InvalidateAck(rid, prio, draw(st.integers(0, 0xFFFFFFFF)))
    return Interrupt(draw(U64), draw(st.binary(min_size=128, max_size=128)))


@given(messages())
@settings(max_examples=600)
def test_every_message_round_trips(msg: codec.Message) -> None:
    frame = encode_message(msg)
    assert int.from_bytes(frame[:4], "little") == len(frame)
    assert decode_message(frame, max_block=MAX_BLOCK) == msg
    assert encode_message(decode_message(frame, max_block=MAX_BLOCK)) == frame


@given(st.binary(max_size=200))
@settings(max_examples=1500)
def test_random_bytes_decode_or_raise_protocol_error(data: bytes) -> None:
    try:
        msg = decode_message(data, max_block=MAX_BLOCK)
    except ProtocolError:
        return
    # Whatever decodes is canonical.
    assert encode_message(msg) == data


@given(messages(), st.data())
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_mutated_frames_decode_canonically_or_raise(msg: codec.Message, data: st.DataObject
                                                    ) -> None:
    frame = bytearray(encode_message(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        cut = data.draw(st.integers(0, len(frame)))
        frame = frame[:cut]
    try:
        decoded = decode_message(bytes(frame), max_block=MAX_BLOCK)
    except ProtocolError:
        return
    assert encode_message(decoded) == bytes(frame)


def _frame(fmt_body: str, ftype: int, *body: object, prio: int = 0, flags: int = 0,
           rid: int = 1, length: int | None = None) -> bytes:
    body_bytes = struct.pack("<" + fmt_body, *body)
    size = 16 + len(body_bytes) if length is None else length
    return struct.pack("<IBBHQ", size, ftype, prio, flags, rid) + body_bytes


@pytest.mark.parametrize(("frame", "words"), [
    (b"\x10\x00\x00\x00", "shorter than the 16-byte header"),
    (_frame("QBBHI", 0x10, 0, 4, 0, 0, 0, length=33), "always 32"),
    (_frame("", 0x7F, length=16), "unknown frame type 0x7f"),
    (_frame("QBBHI", 0x10, 0, 9, 0, 0, 0), "size 9"),
    (_frame("QBBHI", 0x10, 0, 0, 0, 0, 0), "size 0"),
    (_frame("QBBHI", 0x10, (1 << 64) - 2, 4, 0, 0, 0), "runs past 2**64"),
    (_frame("QBBHI", 0x10, 0, 4, 1, 0, 0), "reserved"),
    (_frame("QBBHI", 0x10, 0, 4, 0, 0, 0x10), "reserved bits"),
    (_frame("QBBHI", 0x10, 0, 4, 0, 0, 0, rid=0), "request id 0"),
    (_frame("QBBHI", 0x10, 0, 4, 0, 0, 0, flags=2), "unknown flags"),
    (_frame("QBBHI", 0x10, 0, 4, 0, 0, 0, prio=4), "priority 4"),
    (_frame("QQBBHI", 0x12, 0, 0x1FF, 1, 0, 0, 0), "wider than the access"),
    (_frame("IIQBBHIQQQ", 0x11, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0), "result 0x8"),
    (_frame("IIQBBHIQQQ", 0x11, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0), "kind NONE with non-zero"),
    (_frame("IIQBBHIQQQ", 0x11, 0, 0, 0, 2, 0, 0, 0, 0, 1, 0), "unknown kind"),
    (_frame("IIQBBHIQQQ", 0x11, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0), "empty"),
    (_frame("IIQBBHIQQQ", 0x11, 0, 0, 0, 1, 2, 0, 0, 0, 1, 0), "unknown flags"),
    (_frame("IIBBHIQQQ", 0x13, 0, 1, 0, 0, 0, 0, 0, 0, 0), "non-zero reserved"),
    (_frame("QQ", 0x20, 0, 0), "INVALIDATE start=0x0 size=0x0"),
    (_frame("II", 0x02, 0, 0, rid=3), "one-way"),
    (_frame("QII", 0x14, 0, 0, 0), "READ_BLOCK of 0 bytes"),
    (_frame("QII", 0x14, 0, MAX_BLOCK + 1, 0), "blocks hold"),
    (_frame("QII", 0x16, 0, 3, 0, length=34) + b"ab", "says 3 bytes but carries 2"),
    (_frame("QII", 0x16, 0, 3, 0, length=32 + MAX_BLOCK + 64), "larger than the largest"),
    (_frame("QII", 0x16, 0, 3, 0), "carries no data"),
    (_frame("4sHHBBHIIQQI", 0x01, b"MXPL", 1, 0, 2, 0, 0, 0, 4096, 1, 0, 0, rid=0),
     "unknown channel"),
    (_frame("4sHHBBHIIQQI", 0x01, b"MXPL", 1, 0, 0, 7, 0, 0, 4096, 1, 0, 0, rid=0),
     "sub-priority 7"),
    (_frame("4sHHBBHIIQQI", 0x01, b"MXPL", 1, 0, 0, 0, 0, 0, 100, 1, 0, 0, rid=0),
     "max_block 100"),
])
def test_malformed_frames_say_what_is_wrong(frame: bytes, words: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_message(frame, max_block=MAX_BLOCK)
    assert words in str(info.value), str(info.value)


def test_hello_with_wrong_magic_or_major_is_a_handshake_error() -> None:
    good = encode_message(Hello(0, 0xFF, 3, 4096, 5, 0x1000))
    assert decode_message(good) == Hello(0, 0xFF, 3, 4096, 5, 0x1000)
    with pytest.raises(HandshakeError, match="not a memexpose peer"):
        decode_message(good[:16] + b"XXXX" + good[20:])
    newer = encode_message(Hello(0, 0xFF, 3, 4096, 5, 0x1000, major=2))
    with pytest.raises(HandshakeError, match="protocol 2.0, we speak 1.0"):
        decode_message(newer)


def test_frame_and_buffer_length_must_agree() -> None:
    frame = encode_message(Read(1, 0, 0x10, 4))
    with pytest.raises(ProtocolError, match="the buffer holds 33"):
        decode_message(frame + b"\0")


def test_attrs_round_trip_and_unspecified_is_a_fixed_code() -> None:
    assert codec.encode_attrs(MEMTXATTRS_UNSPECIFIED) == codec.ATTRS_UNSPECIFIED_CODE
    assert codec.decode_attrs(codec.ATTRS_UNSPECIFIED_CODE) is MEMTXATTRS_UNSPECIFIED
    for attrs in (MemTxAttrs(), MemTxAttrs(secure=True, requester_id=0x1234),
                  MemTxAttrs(user=True, memory=True)):
        assert codec.decode_attrs(codec.encode_attrs(attrs)) == attrs
    with pytest.raises(ValueError, match="16 bits"):
        codec.encode_attrs(MemTxAttrs(requester_id=0x10000))


@pytest.mark.parametrize(("mine", "theirs", "expect"), [
    ((0, 1), (1, 2), (0, 1)),
    ((1, 1), (0, 2), (1, 0)),
    ((0xFF, 1), (0, 2), (1, 0)),
    ((1, 1), (0xFF, 2), (1, 0)),
    ((0xFF, 9), (0xFF, 2), (1, 0)),
    ((0xFF, 2), (0xFF, 9), (0, 1)),
    ((0, 9), (0, 2), (1, 0)),
    ((1, 2), (1, 9), (0, 1)),
])
def test_sub_priorities_always_differ_and_both_sides_agree(
        mine: tuple[int, int], theirs: tuple[int, int], expect: tuple[int, int]) -> None:
    got = codec.resolve_sub_priorities(*mine, *theirs)
    assert got == expect
    assert codec.resolve_sub_priorities(*theirs, *mine) == expect[::-1]


def test_equal_nonces_cannot_break_a_tie() -> None:
    with pytest.raises(HandshakeError, match="same nonce"):
        codec.resolve_sub_priorities(0xFF, 5, 0xFF, 5)


def test_priorities_put_invalidation_above_every_access() -> None:
    access = {codec.request_priority(codec.ACCESS_CLASS, s) for s in (0, 1)}
    inval = {codec.request_priority(codec.INVALIDATE_CLASS, s) for s in (0, 1)}
    assert max(access) < min(inval)
    assert len(access | inval) == 4


def test_interrupt_data_must_be_exactly_128_bytes() -> None:
    with pytest.raises(ValueError, match="exactly 128"):
        encode_message(Interrupt(1, b"short"))


# -- the hot path's matchers decide exactly what the strict decoder decides ----------------


def _mutate(frame: bytes, data: st.DataObject) -> bytes:
    out = bytearray(frame)
    for _ in range(data.draw(st.sampled_from([0, 0, 1, 2, 3]))):
        i = data.draw(st.integers(0, len(out) - 1))
        out[i] = data.draw(st.sampled_from([0, 1, 2, 4, 7, 8, 0x10, 0x11, 0x13, 0x20, 0x80,
                                            0xFF]))
    return bytes(out)


@given(messages(), st.data())
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_the_fast_matchers_accept_exactly_the_plain_frames_the_decoder_accepts(
        msg: codec.Message, data: st.DataObject) -> None:
    frame = _mutate(encode_message(msg), data)
    try:
        decoded: codec.Message | None = decode_message(frame, max_block=MAX_BLOCK)
    except ProtocolError:
        decoded = None
    # Mostly what the frame carries, so that both answers are common.
    rid = data.draw(st.just(getattr(msg, "id", 1)) | IDS)
    prio = data.draw(st.just(getattr(msg, "prio", 0)) | PRIOS)
    if len(frame) == codec.READ_REPLY_LEN:
        size = data.draw(st.integers(1, 8))
        got = codec.match_read_reply(frame, 0, codec.head_word(codec.T_READ_REPLY, prio), rid,
                                     size)
        plain = (isinstance(decoded, ReadReply) and decoded.id == rid and decoded.prio == prio
                 and decoded.share is None and decoded.value < 1 << (8 * size))
        assert (got is not None) == plain
        if plain:
            assert got == (decoded.value, decoded.result)
    if len(frame) == codec.RESULT_SHARE_LEN:
        got = codec.match_write_reply(frame, 0, codec.head_word(codec.T_WRITE_REPLY, prio), rid)
        plain = (isinstance(decoded, WriteReply) and decoded.id == rid and decoded.prio == prio
                 and decoded.share is None)
        assert (got is not None) == plain
        if plain:
            assert got == decoded.result
    if len(frame) == codec.READ_LEN:
        got = codec.match_read(frame, 0, codec.head_word(codec.T_READ, prio,
                                                         codec.FLAG_WANT_SHARE))
        plain = isinstance(decoded, Read) and decoded.prio == prio
        assert (got is not None) == plain
        if plain:
            assert got == (decoded.id, int(decoded.want_share), decoded.addr, decoded.size,
                           decoded.attrs)
    if len(frame) == codec.WRITE_LEN:
        got = codec.match_write(frame, 0, codec.head_word(codec.T_WRITE, prio,
                                                          codec.FLAG_WANT_SHARE))
        plain = isinstance(decoded, Write) and decoded.prio == prio
        assert (got is not None) == plain
        if plain:
            assert got == (decoded.id, int(decoded.want_share), decoded.addr, decoded.value,
                           decoded.size, decoded.attrs)


def test_the_plain_reply_layouts_encode_what_the_message_api_encodes() -> None:
    head = codec.head_word(codec.T_READ_REPLY, 3)
    assert codec.READ_REPLY_PLAIN.pack(head, 7, 2, 0x1234) == \
        encode_message(ReadReply(7, 3, 2, 0x1234))
    head = codec.head_word(codec.T_WRITE_REPLY, 1)
    assert codec.WRITE_REPLY_PLAIN.pack(head, 9, 4) == encode_message(WriteReply(9, 1, 4))
