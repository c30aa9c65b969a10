"""memexpose.link.transport: connecting, listening, socket files, fd bookkeeping."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from memexpose.errors import LinkClosedError, LinkError, ProtocolError
from memexpose.link import Channel, TcpTransport, UnixTransport, codec
from memexpose.link.transport import Cancellation
from tests.link.peer import default_spec

pytestmark = pytest.mark.timeout(60)


def test_the_connecting_side_waits_for_a_late_listener(sockdir, local, peer) -> None:
    path = os.path.join(sockdir, "late")
    me = local(default_spec("early", ("unix", path, False)))
    other = peer(default_spec("late", ("unix", path, True)))
    other.send("sleep", 0.3)
    done: list = []
    thread = threading.Thread(target=lambda: done.append(me.ep.enable(timeout=5)))
    thread.start()
    other.result()
    other.call("enable")
    thread.join(10)
    assert done == [None] and me.ep.connected


def test_unix_transport_replaces_a_stale_socket_file_and_removes_its_own(sockdir) -> None:
    path = os.path.join(sockdir, "stale")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(path)
    stale.close()
    transport = UnixTransport(path, listen=True)
    transport.open()
    transport.close()
    assert not os.path.exists(path)
    tcp = TcpTransport("127.0.0.1", 0, listen=True)
    tcp.open()
    assert tcp.address[1] != 0 and tcp.describe().startswith("tcp:127.0.0.1:")
    tcp.close()




def test_connecting_gives_up_at_the_deadline_with_a_useful_message(sockdir) -> None:
    transport = UnixTransport(os.path.join(sockdir, "nobody"), listen=False)
    with pytest.raises(LinkError, match="is the listening peer running"):
        transport.connection(time.monotonic() + 0.1)


def test_a_channel_cuts_the_stream_into_frames_however_it_arrives(sockdir, peer) -> None:
    # The raw peer writes three frames one byte at a time; the channel sees
    # each frame exactly once, whole.
    path = os.path.join(sockdir, "chan")
    listener = UnixTransport(path, listen=True)
    listener.open()
    raw = peer({"name": "raw", "transport": ("unix", path, False)}, raw=True)
    frames = [codec.encode_message(codec.Read(i, 0, 8 * i, 4)) for i in range(1, 4)]
    raw.send("dribble", b"".join(frames))
    sock = listener.connection(time.monotonic() + 10)
    chan = Channel(sock, fd_passing=True, peer="raw", frame_limit=codec.max_frame(4096))
    got = []
    try:
        while len(got) < 3:
            frame = chan.next_frame()
            if frame is None:
                chan.fill()
                continue
            length, ftype, prio, flags, rid, pos = frame
            got.append(bytes(chan.buf[pos:pos + length]))
        assert got == frames
        raw.result()
    finally:
        chan.close()
        listener.close()


def test_a_channel_refuses_a_bad_header_as_soon_as_it_arrives() -> None:
    a, b = socket.socketpair()
    chan = Channel(a, fd_passing=False, peer="test", frame_limit=codec.max_frame(4096))
    try:
        b.sendall((0xFFFFFFFF).to_bytes(4, "little") + bytes([0x16]) + bytes(11))
        chan.fill()
        with pytest.raises(ProtocolError, match="larger than the largest frame"):
            chan.next_frame()
    finally:
        chan.close()
        b.close()


def test_only_one_thread_may_read_a_channel() -> None:
    from memexpose.errors import LinkBusyError

    a, b = socket.socketpair()
    chan = Channel(a, fd_passing=False, peer="test", frame_limit=codec.max_frame(4096))
    started = threading.Event()
    try:
        a.settimeout(2)

        def reader() -> None:
            started.set()
            try:
                chan.fill()
            except Exception:  # noqa: BLE001 - EOF at teardown
                pass

        thread = threading.Thread(target=reader)
        thread.start()
        started.wait()
        deadline = time.monotonic() + 2
        while not chan._reading and time.monotonic() < deadline:
            pass
        with pytest.raises(LinkBusyError, match="two threads read"):
            chan.fill()
        b.sendall(b"x")
        thread.join(5)
    finally:
        chan.close()
        b.close()


@pytest.mark.parametrize("listen", [True, False])
def test_a_cancellation_ends_accept_and_connect_retries_at_once(sockdir, listen) -> None:
    # The endpoint's connect (not the public ``connection``) watches a
    # Cancellation: disable() and close() must not wait for the deadline.
    transport = UnixTransport(os.path.join(sockdir, "c"), listen=listen)
    cancel = Cancellation()
    timer = threading.Timer(0.05, cancel.set)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(LinkClosedError, match="connect cancelled"):
        transport._connect_or_accept(time.monotonic() + 5.0, cancel)
    assert time.monotonic() - t0 < 0.15
    timer.join()
    cancel.close()
    cancel.set()  # after close: harmless
    assert cancel.is_set() and cancel.fileno() == -1
    with pytest.raises(LinkClosedError):  # a cancelled attempt makes no connection
        transport._connect_or_accept(time.monotonic() + 5.0, cancel)
    transport.close()
