"""The C hot path (``memexpose.link._hotpath``): its matchers and its request().

The link tests that run peers run once on each hot path (conftest.py); here
the C matchers are checked against the codec's, frame by frame, and
``request`` against a real socket pair (what it leaves in the epoll, the
fds it hands over, EOF and timeouts).
"""

from __future__ import annotations

import array
import os
import select
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from memexpose.errors import ConfigError, LinkBusyError
from memexpose.link import codec, hotpath
from memexpose.link.codec import encode_message
from tests.link.test_codec import IDS, PRIOS, _mutate, messages

pytestmark = pytest.mark.timeout(60)

native = hotpath._native


def test_the_c_hot_path_is_built_where_ci_runs() -> None:
    # `make venv` builds it with the machine's gcc; CI must test it.
    if os.environ.get("CI") and native is None:
        pytest.fail("memexpose.link._hotpath was not built (pip install -e . with gcc)")
    if native is None:
        pytest.skip("the C hot path was not built here")


def test_the_environment_chooses_the_hot_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hotpath.ENV, "python")
    assert hotpath.selected() is None
    monkeypatch.setenv(hotpath.ENV, "auto")
    assert hotpath.selected() is native
    monkeypatch.setenv(hotpath.ENV, "fast")
    with pytest.raises(ConfigError, match="expected 'c', 'python' or 'auto'"):
        hotpath.selected()
    monkeypatch.setenv(hotpath.ENV, "c")
    if native is None:
        with pytest.raises(ConfigError, match="was not built"):
            hotpath.selected()
    else:
        assert hotpath.selected() is native


needs_native = pytest.mark.skipif(native is None, reason="the C hot path was not built")


@needs_native
@given(messages(), st.data())
@settings(max_examples=1500, suppress_health_check=[HealthCheck.too_slow])
def test_the_c_matchers_accept_exactly_what_the_codec_matchers_accept(
        msg: codec.Message, data: st.DataObject) -> None:
    frame = _mutate(encode_message(msg), data)
    rid = data.draw(st.just(getattr(msg, "id", 1)) | IDS)
    prio = data.draw(st.just(getattr(msg, "prio", 0)) | PRIOS)
    if len(frame) == codec.READ_REPLY_LEN:
        size = data.draw(st.integers(1, 8))
        head = codec.head_word(codec.T_READ_REPLY, prio)
        assert native.match_reply(frame, head, rid, (1 << (8 * size)) - 1) == \
            codec.match_read_reply(frame, 0, head, rid, size)
    if len(frame) == codec.RESULT_SHARE_LEN:
        head = codec.head_word(codec.T_WRITE_REPLY, prio)
        got = native.match_reply(frame, head, rid, 0)
        want = codec.match_write_reply(frame, 0, head, rid)
        assert (got is None) == (want is None)
        if got is not None:
            assert got == (0, want)
    read_head = codec.head_word(codec.T_READ, prio, codec.FLAG_WANT_SHARE)
    write_head = codec.head_word(codec.T_WRITE, prio, codec.FLAG_WANT_SHARE)
    got = native.match_access(frame, read_head, write_head)
    if len(frame) == codec.READ_LEN:
        assert got == codec.match_read(frame, 0, read_head)
    elif len(frame) == codec.WRITE_LEN:
        assert got == codec.match_write(frame, 0, write_head)
    else:
        assert got is None


@needs_native
@pytest.mark.parametrize("addr,size,ok", [
    ((1 << 64) - 8, 8, True),       # ends exactly at 2**64
    ((1 << 64) - 7, 8, False),      # one past it
    ((1 << 64) - 1, 1, True),
])
def test_the_c_access_matcher_bounds_the_address_space_as_the_codec(
        addr: int, size: int, ok: bool) -> None:
    frame = encode_message(codec.Read(5, 1, addr, size, 0, False))
    head = codec.head_word(codec.T_READ, 1, codec.FLAG_WANT_SHARE)
    assert (native.match_access(frame, head, 0) is not None) is ok
    assert native.match_access(frame, head, 0) == codec.match_read(frame, 0, head)


@pytest.fixture
def wire() -> Iterator[tuple[socket.socket, socket.socket, select.epoll]]:
    """A connected UNIX socket pair and an epoll with ours armed, as a Session has."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.settimeout(None)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.pack("ll", 0, 50_000))
    ep = select.epoll()
    ep.register(ours.fileno(), select.EPOLLIN)
    yield ours, theirs, ep
    ep.close()
    ours.close()
    theirs.close()


class _Chan:
    """The Channel fields request() keeps (transport.Channel has them all)."""

    def __init__(self) -> None:
        self.start = self.end = self.base = 0
        self._reading = False


def _request(ours: socket.socket, ep: select.epoll, rid: int, buf: bytearray,
             chan: _Chan | None = None) -> object:
    chan = chan or _Chan()
    return native.request(chan, ours.fileno(), ep.fileno(), True, memoryview(buf),
                          codec.head_word(codec.T_READ, 0, codec.FLAG_WANT_SHARE), rid, 0x40,
                          4, None, codec.READ_REPLY_LEN,
                          codec.head_word(codec.T_READ_REPLY, 0), 0xFFFF_FFFF)


def _armed(ep: select.epoll, theirs: socket.socket) -> bool:
    """Whether our socket wakes the epoll (probe: one byte, then drained by the caller)."""
    theirs.send(b"x")
    return bool(ep.poll(0.05))


@needs_native
def test_request_returns_the_plain_reply_and_rearms(wire) -> None:
    ours, theirs, ep = wire
    buf = bytearray(4096)
    head = codec.head_word(codec.T_READ_REPLY, 0)
    theirs.send(codec.READ_REPLY_PLAIN.pack(head, 9, 0, 0xCAFE))
    chan = _Chan()
    chan.start = chan.end = 64  # the last reply, consumed: request() rebases first
    assert _request(ours, ep, 9, buf, chan) == (0xCAFE, 0)
    assert (chan.start, chan.end, chan.base) == (0, 0, 128)
    assert theirs.recv(64) == encode_message(codec.Read(9, 0, 0x40, 4, 0, True))
    assert _armed(ep, theirs)


@needs_native
def test_request_leaves_anything_else_to_python_disarmed(wire) -> None:
    ours, theirs, ep = wire
    buf = bytearray(4096)
    head = codec.head_word(codec.T_READ_REPLY, 0)
    theirs.send(codec.READ_REPLY_PLAIN.pack(head, 8, 0, 1))  # another id
    chan = _Chan()
    assert _request(ours, ep, 9, buf, chan) == codec.READ_REPLY_LEN
    assert (chan.start, chan.end) == (0, codec.READ_REPLY_LEN)  # buffered for Python
    assert codec.match_read_reply(buf, 0, head, 8, 4) == (1, 0)
    assert not _armed(ep, theirs)  # the waiter reads on; the server stays out


@needs_native
def test_request_refuses_a_second_reader(wire) -> None:
    ours, _theirs, ep = wire
    chan = _Chan()
    chan._reading = True
    with pytest.raises(LinkBusyError, match="two threads"):
        _request(ours, ep, 1, bytearray(4096), chan)


@needs_native
def test_request_reports_a_timeout_and_the_peer_closing(wire) -> None:
    ours, theirs, ep = wire
    buf = bytearray(4096)
    assert _request(ours, ep, 1, buf) == 0  # SO_RCVTIMEO (50 ms) passed
    theirs.shutdown(socket.SHUT_WR)
    assert _request(ours, ep, 2, buf) == -1


@needs_native
def test_request_hands_over_fds_that_came_with_the_reply(wire) -> None:
    ours, theirs, ep = wire
    buf = bytearray(4096)
    r, w = os.pipe()
    try:
        head = codec.head_word(codec.T_READ_REPLY, 0)
        theirs.sendmsg([codec.READ_REPLY_PLAIN.pack(head, 3, 0, 7)],
                       [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))])
        got = _request(ours, ep, 3, buf)
        assert isinstance(got, list)
        n, anc, flags = got
        assert n == codec.READ_REPLY_LEN and not flags & socket.MSG_CTRUNC
        (level, kind, data), = anc
        assert (level, kind) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)
        fd = array.array("i", data)[0]
        try:
            os.write(w, b"!")
            assert os.read(fd, 1) == b"!"  # the very pipe, now ours
        finally:
            os.close(fd)
    finally:
        os.close(r)
        os.close(w)
