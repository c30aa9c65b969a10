"""memexpose.link.session: scheduling, concurrency, failures, strictness.

Invariant 4 (two peers hammering each other never deadlock and never mix up
a request with a reply) and invariant 5 (a dead peer never hangs the
survivor) of ARCHITECTURE.md, with the peers in two processes.
"""

from __future__ import annotations

import gc
import os
import signal
import struct
import threading
import time

import pytest

from memexpose.errors import LinkTimeoutError, ProtocolError
from memexpose.link import LinkState, codec
from memexpose.memory import MEMTX_ERROR, MEMTX_OK
from tests.link.peer import RAM, SLOW, WINDOW_BASE, default_spec, hammer, run_in_thread

pytestmark = pytest.mark.timeout(60)


def test_both_peers_hammering_each_other_never_deadlock_or_mix_up_replies(pair) -> None:
    me, other = pair()
    n = 3000
    other.send("hammer", n, 1)
    errors = hammer(me.as_, n, 2)
    assert errors == 0
    assert other.result(timeout=60) == 0
    mine, theirs = me.ep.statistics(), other.call("stats")
    assert mine.forwarded_writes == n and theirs["forwarded_writes"] == n
    assert mine.served_requests == theirs["forwarded_reads"] + theirs["forwarded_writes"]
    # Both sides waited at the same moment often enough to defer requests.
    assert mine.deferred_requests + theirs["deferred_requests"] > 0
    me.do_check()
    other.call("check")


def test_several_local_threads_and_the_peer_all_at_once(pair) -> None:
    me, other = pair()
    other.send("hammer", 1500, 1)
    threads = [run_in_thread(hammer, me.as_, 500, seed) for seed in (1, 2, 3)]
    for thread, out in threads:
        thread.join(60)
        assert out == [0]
    assert other.result(timeout=60) == 0


def test_simultaneous_invalidations_from_both_sides_do_not_deadlock(pair) -> None:
    # The local side has the lower sub-priority, so it is the one that must
    # serve the peer's INVALIDATE inside its own commit and revoke (P15).
    me, other = pair(local_over={"role": 0}, peer_over={"role": 1})
    me.do_add_ram("ram2", None, 0x10000, "memfd", 0xBB)
    other.call("add_ram", "ram2", None, 0x10000, "memfd", 0xBB)
    value = {"ram": 0x11, "ram2": 0xBB}
    theirs_now = "ram"
    checked = 0
    for _ in range(40):
        # Both import the other's RAM directly...
        assert me.as_.read(WINDOW_BASE + RAM, 1) == (value[theirs_now], MEMTX_OK)
        assert other.call("read", WINDOW_BASE + RAM, 1)[1] == MEMTX_OK
        assert me.ep.importer.mappings and other.call("mappings")
        # ...then both change their maps at the same moment. Holding our lock
        # keeps our server thread from reaping a revoked mapping meanwhile.
        other.send("toggle", "ram", "ram2")
        with me.lock:
            me.do_toggle("ram", "ram2")
            if me.ep.importer._zombies:
                # Revoked: reads there are forwarded to the peer's new map
                # (its commit finished before it acknowledged ours).
                forwarded = me.ep.statistics().forwarded_reads
                expect = value["ram2" if theirs_now == "ram" else "ram"]
                assert me.as_.read(WINDOW_BASE + RAM + 1, 1) == (expect, MEMTX_OK)
                assert me.ep.read_bytes(RAM + 2, 4) == (bytes([expect]) * 4, MEMTX_OK)
                assert me.ep.statistics().forwarded_reads == forwarded + 1
                checked += 1
        theirs_now = other.result()
    deadline = time.monotonic() + 5
    while me.ep.importer._zombies and time.monotonic() < deadline:
        time.sleep(0.01)
    mine, theirs = me.ep.statistics(), other.call("stats")
    assert mine.invalidations_sent >= 40 and theirs["invalidations_sent"] >= 40
    assert checked >= 1 and mine.revoked_in_commit >= checked
    assert theirs["revoked_in_commit"] == 0
    assert me.ep.connected and other.call("state")[0] == "CONNECTED"
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (value[theirs_now], MEMTX_OK)
    me.do_check()
    other.call("check")


def test_a_peer_dying_mid_access_fails_the_access_fast_and_enable_reconnects(
        sockdir, local, peer) -> None:
    path = os.path.join(sockdir, "link")
    me = local(default_spec("local", ("unix", path, True)))
    victim = peer(default_spec("victim", ("unix", path, False)))
    victim.send("enable")
    me.ep.enable()
    victim.result()
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    assert me.ep.importer.mappings
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(0.3)
        killed_at.append(time.monotonic())
        victim.kill()

    killer = threading.Thread(target=kill_soon)
    killer.start()
    value, result = me.as_.read(WINDOW_BASE + SLOW, 4)  # the peer sleeps 30 s in there
    done = time.monotonic()
    killer.join()
    assert result == MEMTX_ERROR
    assert done - killed_at[0] < 1.0
    deadline = time.monotonic() + 2
    while me.ep.importer.mappings and time.monotonic() < deadline:
        time.sleep(0.01)
    assert me.ep.state is LinkState.DISCONNECTED
    assert me.ep.importer.mappings == []
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0, MEMTX_ERROR) or \
        me.as_.read(WINDOW_BASE + RAM, 1)[1] != MEMTX_OK
    # A new peer, and the survivor enables again.
    second = peer(default_spec("second", ("unix", path, False)))
    second.send("enable")
    me.ep.enable()
    assert second.result() == "CONNECTED"
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    assert me.ep.statistics().connects == 2


def test_a_hung_peer_times_out(sockdir, local, peer) -> None:
    path = os.path.join(sockdir, "link")
    me = local(default_spec("local", ("unix", path, True), timeout=0.4))
    frozen = peer(default_spec("frozen", ("unix", path, False)))
    frozen.send("enable")
    me.ep.enable()
    frozen.result()
    os.kill(frozen.pid, signal.SIGSTOP)
    _wait_stopped(frozen.pid)
    try:
        start = time.monotonic()
        assert me.as_.read(WINDOW_BASE + RAM, 4) == (0, MEMTX_ERROR)
        assert 0.3 < time.monotonic() - start < 1.5
        assert me.ep.state is LinkState.DISCONNECTED
        assert isinstance(me.ep.last_error, LinkTimeoutError)
        assert "did not answer" in str(me.ep.last_error)
    finally:
        os.kill(frozen.pid, signal.SIGCONT)


def _wait_stopped(pid: int) -> None:
    """Wait until every thread of ``pid`` is stopped (SIGSTOP is asynchronous)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        states = []
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                stat = f.read()
            states.append(stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3])
        if all(st in (b"T", b"t") for st in states):
            return
        time.sleep(0.005)
    raise AssertionError(f"process {pid} did not stop")


def _raw(sockdir, local, peer, raw_role=codec.ROLE_ANY, **local_over):
    path = os.path.join(sockdir, "raw")
    me = local(default_spec("local", ("unix", path, True), **local_over))
    raw = peer({"name": "raw", "transport": ("unix", path, False)}, raw=True)
    raw.send("connect", role=raw_role)
    me.ep.enable()
    info = raw.result()
    return me, raw, info


def _wait_state(ep, state, timeout=5.0):
    deadline = time.monotonic() + timeout
    while ep.state is not state and time.monotonic() < deadline:
        time.sleep(0.005)
    return ep.state


@pytest.mark.parametrize(("frame", "words"), [
    (struct.pack("<IBBHQ", 3, 0x10, 0, 0, 1), "frame of 3 bytes"),
    (struct.pack("<IBBHQ", 16, 0x66, 0, 0, 1), "unknown frame type 0x66"),
    (codec.encode_message(codec.Write(1, 9, RAM, 0x99, 1)), "priority 9"),
    (codec.encode_message(codec.ReadReply(77, 0, 0, 0)), "nobody is waiting"),
    (codec.encode_message(codec.Interrupt(1)), "does not belong on the memory channel"),
    (struct.pack("<IBBHQQQBBHI", 40, 0x12, 0, 0, 1, RAM, 0x99, 1, 1, 0, 0), "reserved"),
])
def test_a_malformed_frame_closes_the_link_naming_the_peer_and_touches_nothing(
        sockdir, local, peer, frame, words) -> None:
    me, raw, info = _raw(sockdir, local, peer)
    before = me.as_.read_bytes(RAM, 0x10)
    raw.call("send", frame)
    assert _wait_state(me.ep, LinkState.DISCONNECTED) is LinkState.DISCONNECTED
    err = me.ep.last_error
    assert isinstance(err, ProtocolError)
    assert words in str(err), str(err)
    assert f"pid {raw.call('pid')}" in str(err) and err.peer is not None
    assert raw.call("is_closed")
    assert me.as_.read_bytes(RAM, 0x10) == before
    assert me.ep.statistics().served_requests == 0


def test_a_request_with_the_right_priority_is_served_by_a_raw_peer(sockdir, local, peer) -> None:
    me, raw, info = _raw(sockdir, local, peer)
    prio = info["sub_priority"]
    raw.call("send", codec.encode_message(codec.Write(1, prio, RAM + 4, 0x99, 1)))
    assert "WriteReply(id=1" in raw.call("recv")
    assert me.as_.read(RAM + 4, 1) == (0x99, MEMTX_OK)
    assert me.ep.connected


def test_a_malformed_reply_fails_the_access_and_closes_the_link(sockdir, local, peer) -> None:
    me, raw, info = _raw(sockdir, local, peer)
    raw.send("answer_read", 0x1_0000)  # wider than the 1-byte read
    assert me.as_.read(WINDOW_BASE + 0, 1) == (0, MEMTX_ERROR)
    raw.result()
    assert me.ep.state is LinkState.DISCONNECTED
    assert "wider than the 1-byte read" in str(me.ep.last_error)


@pytest.mark.parametrize("raw_role", [0, 1])
def test_a_reply_in_pieces_or_after_a_request_of_the_peer_completes_the_access(
        sockdir, local, peer, raw_role) -> None:
    """The forwarded access's fast path hands anything but one whole plain reply on."""
    me, raw, info = _raw(sockdir, local, peer, raw_role=raw_role)
    assert info["sub_priority"] == raw_role == 1 - me.ep.peer.sub_priority
    raw.send("answer_read_as", "split", 0x42)
    assert me.as_.read(WINDOW_BASE + 0, 1) == (0x42, MEMTX_OK)
    raw.result()
    raw.send("answer_read_as", "request_first", 0x43)
    assert me.as_.read(WINDOW_BASE + 1, 1) == (0x43, MEMTX_OK)
    raw.result()
    # The raw peer's WRITE was served: nested if it outranks our read, else deferred.
    assert "WriteReply(id=1" in raw.call("recv")
    assert me.as_.read(RAM + 8, 1) == (0x5A, MEMTX_OK)
    stats = me.ep.statistics()
    assert stats.served_requests == 1
    assert stats.deferred_requests == (1 if raw_role == 0 else 0)
    assert me.ep.connected


@pytest.mark.parametrize(("how", "words"), [
    ("fd", "an fd came with a READ_REPLY that announces none"),
    ("other_id", "nobody is waiting"),
])
def test_a_plain_looking_reply_that_breaks_a_rule_closes_the_link(
        sockdir, local, peer, how, words) -> None:
    me, raw, info = _raw(sockdir, local, peer)
    raw.send("answer_read_as", how, 0x42)
    assert me.as_.read(WINDOW_BASE + 0, 1) == (0, MEMTX_ERROR)
    raw.result()
    assert me.ep.state is LinkState.DISCONNECTED
    assert isinstance(me.ep.last_error, ProtocolError)
    assert words in str(me.ep.last_error), str(me.ep.last_error)


def test_an_fd_with_a_frame_that_announces_none_is_refused_before_serving(
        sockdir, local, peer) -> None:
    me, raw, info = _raw(sockdir, local, peer)
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    write = codec.Write(1, info["sub_priority"], RAM + 4, 0x99, 1)
    raw.call("send_with_fd", codec.encode_message(write))
    assert _wait_state(me.ep, LinkState.DISCONNECTED) is LinkState.DISCONNECTED
    assert "an fd came with request type 0x12" in str(me.ep.last_error)
    assert me.as_.read(RAM + 4, 1) == (0x11, MEMTX_OK)  # the write was not done
    me.ep.disable()  # joins the dead link's threads
    gc.collect()
    # The stray fd is closed, and so are the link's 2 sockets, epoll and pipe.
    assert len(os.listdir("/proc/self/fd")) == before - 5


def test_a_peer_with_another_major_version_is_refused(sockdir, local, peer) -> None:
    from memexpose.errors import ConnectError, HandshakeError

    path = os.path.join(sockdir, "raw")
    me = local(default_spec("local", ("unix", path, True)))
    raw = peer({"name": "raw", "transport": ("unix", path, False)}, raw=True)
    raw.send("connect", major=2)
    with pytest.raises(ConnectError) as info:
        me.ep.enable(timeout=3)
    assert isinstance(info.value.__cause__, HandshakeError)
    assert "protocol 2.0" in str(info.value)
    assert me.ep.state is LinkState.DISABLED
    raw.result()
