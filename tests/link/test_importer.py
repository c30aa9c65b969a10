"""memexpose.link.importer: the window, direct mappings, refused shares, fd hygiene."""

from __future__ import annotations

import gc
import os

import pytest

from memexpose.memory import MEMTX_DECODE_ERROR, MEMTX_ERROR, MEMTX_OK
from tests.link.peer import ANON, RAM, WINDOW_BASE, default_spec

pytestmark = pytest.mark.timeout(60)


def fds() -> int:
    """Open fds of this process, after collecting garbage of earlier tests."""
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def test_memory_both_ways_slow_path_first_then_direct(pair) -> None:
    me, other = pair()
    # Peer -> local RAM, read by the peer through its window.
    me.as_.write(RAM + 0x40, 0xDEADBEEF, 4)
    assert other.call("read", WINDOW_BASE + RAM + 0x40, 4) == (0xDEADBEEF, MEMTX_OK)
    me.as_.write(RAM + 0x40, 0xBABA1510, 4)
    assert other.call("read", WINDOW_BASE + RAM + 0x40, 4) == (0xBABA1510, MEMTX_OK)
    st = other.call("stats")
    assert (st["forwarded_reads"], st["direct_mappings"]) == (1, 1)
    # Local -> peer RAM, written through our window, read by the peer itself.
    assert me.as_.write(WINDOW_BASE + RAM + 0x80, 0xAAAAAAAA, 4) == MEMTX_OK
    assert other.call("read", RAM + 0x80, 4) == (0xAAAAAAAA, MEMTX_OK)
    assert me.as_.write(WINDOW_BASE + RAM + 0x80, 0xBBBBBBBB, 4) == MEMTX_OK
    assert other.call("read", RAM + 0x80, 4) == (0xBBBBBBBB, MEMTX_OK)
    st = me.ep.statistics()
    assert (st.forwarded_writes, st.direct_mappings, st.direct_bytes) == (1, 1, 0x10000)
    # Reads back through the direct mapping too.
    assert me.as_.read(WINDOW_BASE + RAM + 0x80, 4) == (0xBBBBBBBB, MEMTX_OK)
    assert me.ep.statistics().forwarded_reads == 0
    me.do_check()
    other.call("check")


def test_many_direct_mappings_at_once(pair) -> None:
    me, other = pair()
    for i in range(1, 6):
        other.call("add_ram", f"r{i}", 0x4_0000 + i * 0x1_0000, 0x2000, "memfd", i)
    for i in range(1, 6):
        assert me.as_.read(WINDOW_BASE + 0x4_0000 + i * 0x1_0000 + 5, 1) == (i, MEMTX_OK)
    for i in range(1, 6):
        assert me.as_.read(WINDOW_BASE + 0x4_0000 + i * 0x1_0000 + 0x1FFF, 1) == (i, MEMTX_OK)
    assert me.ep.importer.mappings == [(0x4_0000 + i * 0x1_0000, 0x2000, False)
                                       for i in range(1, 6)]
    st = me.ep.statistics()
    assert st.forwarded_reads == 5 and st.mappings_created == 5
    other.call("remove", "r3")
    assert len(me.ep.importer.mappings) == 4
    me.do_check()


def test_bulk_reads_and_writes_use_blocks_or_the_mapping(pair) -> None:
    me, other = pair()
    pattern = bytes(range(256)) * 16
    assert other.call("write_bytes", ANON, pattern) == MEMTX_OK
    data, result = me.ep.read_bytes(ANON, 0x1000)
    assert (data, result) == (pattern, MEMTX_OK)
    assert me.ep.write_bytes(ANON + 0x10, b"hello block") == MEMTX_OK
    assert other.call("read_bytes", ANON + 0x10, 11) == (b"hello block", MEMTX_OK)
    st = me.ep.statistics()
    assert st.forwarded_block_reads == 1 and st.forwarded_block_writes == 1
    # A large read crosses RAM (mapped after the first access) and a hole.
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    data, result = me.ep.read_bytes(RAM + 0xF000, 0x2000)
    assert data[:0x1000] == b"\x11" * 0x1000
    assert data[0x1000:] == bytes(0x1000) and result == MEMTX_DECODE_ERROR
    assert me.ep.statistics().forwarded_block_reads == 2  # only the hole travelled
    big = os.urandom(600_000)  # more than one block
    assert me.ep.write_bytes(RAM, big[:0x10000]) == MEMTX_OK
    assert other.call("read_bytes", RAM, 0x10000)[0] == big[:0x10000]


def test_window_accesses_while_disconnected_fail_without_waiting(pair) -> None:
    me, other = pair(enable=False)
    assert me.as_.read(WINDOW_BASE + RAM, 4) == (0, MEMTX_DECODE_ERROR)
    other.send("enable")
    me.ep.enable()
    other.result()
    assert me.as_.read(WINDOW_BASE + RAM, 4) == (0x11111111, MEMTX_OK)
    me.ep.disable()
    assert me.ep.importer.mappings == []
    assert me.as_.read(WINDOW_BASE + RAM, 4) == (0, MEMTX_DECODE_ERROR)


def _raw_exporter(sockdir, local, peer):
    path = os.path.join(sockdir, "raw")
    me = local(default_spec("local", ("unix", path, True), expose=None))
    raw = peer({"name": "raw", "transport": ("unix", path, False)}, raw=True)
    raw.send("connect", exposed=0x10000)
    me.ep.enable()
    raw.result()
    return me, raw


@pytest.mark.parametrize(("share", "why"), [
    ({"start": 0, "size": 0x20000, "fd_offset": 0, "file_size": 0x20000}, "past the window"),
    ({"start": 0, "size": 0x1000, "fd_offset": 0x1000, "file_size": 0x1000}, "file too short"),
    ({"start": 0, "size": 0x1000, "fd_offset": 0, "file_size": 0x1000, "seal": False},
     "file may shrink"),
])
def test_bad_shares_from_the_peer_are_refused_and_their_fds_closed(
        sockdir, local, peer, share, why) -> None:
    me, raw = _raw_exporter(sockdir, local, peer)
    before = fds()
    raw.send("serve_share", **share)
    assert me.as_.read(WINDOW_BASE + 0x10, 1) == (0x77, MEMTX_OK), why
    raw.result()
    st = me.ep.statistics()
    assert (st.shares_received, st.shares_refused, st.direct_mappings) == (1, 1, 0), why
    assert fds() == before, why
    assert me.ep.connected


def test_a_good_share_from_a_raw_exporter_is_mapped_at_its_offset(sockdir, local, peer) -> None:
    me, raw = _raw_exporter(sockdir, local, peer)
    raw.send("serve_share", start=0x1000, size=0x2000, fd_offset=0x3000, file_size=0x8000,
             fill=0x3C)
    assert me.as_.read(WINDOW_BASE + 0x1800, 1) == (0x3C, MEMTX_OK)
    raw.result()
    assert me.ep.importer.mappings == [(0x1000, 0x2000, False)]
    assert me.as_.read(WINDOW_BASE + 0x2FFF, 1) == (0x3C, MEMTX_OK)
    me.do_check()


@pytest.mark.slow
def test_fds_are_back_where_they_started_after_thousands_of_share_cycles(pair) -> None:
    me, other = pair()
    other.call("add_ram", "ram2", None, 0x10000, "memfd", 0xBB)
    mine, theirs = fds(), other.call("fds")
    current = 0x11
    for i in range(2000):
        assert me.as_.read(WINDOW_BASE + RAM + 8, 1) == (current, MEMTX_OK)
        other.call("swap", *(("ram", "ram2") if i % 2 == 0 else ("ram2", "ram")))
        current = 0xBB if i % 2 == 0 else 0x11
    st = me.ep.statistics()
    assert st.mappings_created == 2000 and st.mappings_removed == 2000
    assert st.direct_mappings == 0
    assert fds() == mine
    assert other.call("fds") == theirs


def test_fd_hygiene_quick(pair) -> None:
    me, other = pair()
    other.call("add_ram", "ram2", None, 0x10000, "memfd", 0xBB)
    mine, theirs = fds(), other.call("fds")
    for i in range(200):
        assert me.as_.read(WINDOW_BASE + RAM + 8, 1)[1] == MEMTX_OK
        other.call("swap", *(("ram", "ram2") if i % 2 == 0 else ("ram2", "ram")))
    assert fds() == mine
    assert other.call("fds") == theirs
    # Disconnecting with a mapping in place closes its fd too (the mapping holds
    # the received fd and the mmap's own duplicate).
    assert me.as_.read(WINDOW_BASE + RAM + 8, 1)[1] == MEMTX_OK
    assert fds() == mine + 2
    other.send("wait_state", "DISCONNECTED")
    me.ep.disable()
    assert other.result() == "DISCONNECTED"
    other.send("enable")
    me.ep.enable()
    other.result()
    assert fds() == mine


def test_a_window_access_with_the_link_down_is_an_error(pair) -> None:
    me, other = pair()
    other.call("disable")
    me.do_wait_state("DISCONNECTED")
    assert me.ep.importer.limit == 0
    value, result = me.ep.importer.read(0, 4)
    assert result in (MEMTX_ERROR, MEMTX_DECODE_ERROR)
