"""memexpose.link.exporter: what the peer may reach, sharing, invalidation.

The peer process is the exporter here; the test process imports its window
at ``WINDOW_BASE``.
"""

from __future__ import annotations

import pytest

from memexpose.errors import ConfigError
from memexpose.link import Exposure, codec
from memexpose.memory import (
    MEMTX_ACCESS_ERROR,
    MEMTX_DECODE_ERROR,
    MEMTX_OK,
    AddressSpace,
    MemoryRegion,
    MemTxAttrs,
)
from tests.link.peer import ANON, COUNTER, RAM, WINDOW_BASE

pytestmark = pytest.mark.timeout(60)


def test_exposure_of_a_range_is_bounds_checked_and_shares_are_clipped(pair) -> None:
    me, other = pair(peer_over={"expose": (RAM + 0x1000, 0x2000)})
    assert me.ep.peer.exposed_size == 0x2000
    other.call("write", RAM + 0x1000, 0xA1, 1)
    other.call("write", RAM + 0x2FFF, 0xA2, 1)
    other.call("write", RAM + 0x3000, 0xA3, 1)
    assert me.as_.read(WINDOW_BASE + 0, 1) == (0xA1, MEMTX_OK)
    # The share covers the exposed part of the RAM range, no more.
    assert me.ep.importer.mappings == [(0, 0x2000, False)]
    assert other.call("shared") == [(0, 0x2000)]
    assert me.as_.read(WINDOW_BASE + 0x1FFF, 1) == (0xA2, MEMTX_OK)
    # Past the exposure: refused by the importer without a round trip.
    forwarded = me.ep.statistics().forwarded_reads
    assert me.as_.read(WINDOW_BASE + 0x2000, 1) == (0, MEMTX_DECODE_ERROR)
    assert me.as_.read(WINDOW_BASE + 0x1FFE, 4)[1] == MEMTX_DECODE_ERROR
    assert me.ep.statistics().forwarded_reads == forwarded


def test_exporter_refuses_out_of_window_requests_itself(sockdir, local, peer) -> None:
    import os

    from tests.link.peer import default_spec

    path = os.path.join(sockdir, "raw")
    me = local(default_spec("local", ("unix", path, True), expose=(RAM, 0x1000)))
    raw = peer({"name": "raw", "transport": ("unix", path, False)}, raw=True)
    raw.send("connect", exposed=0)
    me.ep.enable()
    assert raw.result()["peer_exposed"] == 0x1000
    prio = me.ep.peer.sub_priority ^ 1  # the raw peer's access priority
    raw.call("send", codec.encode_message(codec.Read(1, prio, 0xFFC, 8)))
    assert "result=2" in raw.call("recv")
    raw.call("send", codec.encode_message(codec.Read(2, prio, 0xFF0, 8)))
    assert "result=0" in raw.call("recv")
    assert me.ep.statistics().refused_requests == 1


def test_exposure_of_a_region_finds_where_it_sits(local, sockdir) -> None:
    import os

    from tests.link.peer import default_spec

    me = local(default_spec("m", ("unix", os.path.join(sockdir, "x"), True), expose=None))
    box = MemoryRegion.init_container("box", 0x10000)
    inner = MemoryRegion.init_ram("inner", 0x1000)
    box.add_subregion(0x3000, inner)
    me.root.add_subregion(0x8000_0000, box)
    exp = Exposure.region(me.as_, inner)
    assert (exp.start, exp.size) == (0x8000_3000, 0x1000)
    other = AddressSpace(MemoryRegion.init_container("other", 1 << 32), "other")
    with pytest.raises(ConfigError, match="is not inside"):
        Exposure.region(other, inner)
    with pytest.raises(ConfigError, match="empty or runs past"):
        Exposure.range(me.as_, (1 << 64) - 4, 8)


def test_mmio_of_the_exporter_through_the_window_has_its_side_effects_once(pair) -> None:
    me, other = pair()
    values = [me.as_.read(WINDOW_BASE + COUNTER, 4) for _ in range(3)]
    assert values == [(1, MEMTX_OK), (2, MEMTX_OK), (3, MEMTX_OK)]
    attrs = MemTxAttrs(secure=True, requester_id=0x42)
    assert me.as_.write(WINDOW_BASE + COUNTER + 8, 0x1122334455667788, 8, attrs) == MEMTX_OK
    reads, writes = other.call("counter")
    assert reads == 3
    assert writes == [(8, 0x1122334455667788, 8, (True, 0x42))]
    # MMIO is never shared.
    st = me.ep.statistics()
    assert st.direct_mappings == 0 and st.shares_received == 0 and st.forwarded_reads == 3


def test_anonymous_ram_is_served_only_by_forwarding(pair) -> None:
    me, other = pair()
    for i in range(10):
        assert me.as_.write(WINDOW_BASE + ANON + 8 * i, i * 0x0101, 2) == MEMTX_OK
        assert me.as_.read(WINDOW_BASE + ANON + 8 * i, 2) == (i * 0x0101, MEMTX_OK)
    st = me.ep.statistics()
    assert (st.forwarded_reads, st.forwarded_writes) == (10, 10)
    assert st.direct_mappings == 0 and st.shares_received == 0
    assert other.call("read", ANON + 8 * 9, 2) == (9 * 0x0101, MEMTX_OK)


def test_forwarded_accesses_to_ram_follow_every_map_change(pair) -> None:
    """The exporter's hot range (the RAM range served last) never outlives its view."""
    me, other = pair()
    assert me.as_.read(WINDOW_BASE + ANON + 4, 2) == (0x2222, MEMTX_OK)
    other.call("add_ram", "anon2", None, 0x1000, "anon", 0x33)
    other.call("swap", "anon", "anon2")
    assert me.as_.read(WINDOW_BASE + ANON + 4, 2) == (0x3333, MEMTX_OK)
    assert me.as_.write(WINDOW_BASE + ANON + 4, 0x4455, 2) == MEMTX_OK
    assert other.call("read", ANON + 4, 2) == (0x4455, MEMTX_OK)
    other.call("swap", "anon2", "anon")
    assert me.as_.read(WINDOW_BASE + ANON + 4, 2) == (0x2222, MEMTX_OK)
    # An access crossing the range's end is not served from it.
    assert me.as_.read(WINDOW_BASE + ANON + 0xFFE, 4)[1] != MEMTX_OK
    other.call("remove", "anon")
    assert me.as_.read(WINDOW_BASE + ANON + 4, 2) == (0, MEMTX_DECODE_ERROR)
    assert me.as_.write(WINDOW_BASE + ANON + 4, 1, 2) == MEMTX_DECODE_ERROR
    other.call("add", "anon", ANON)
    assert me.as_.read(WINDOW_BASE + ANON + 4, 2) == (0x2222, MEMTX_OK)
    assert me.ep.statistics().direct_mappings == 0


def test_readonly_exposure_refuses_writes_on_both_paths(pair) -> None:
    me, other = pair(peer_over={"readonly": True})
    assert me.ep.peer.readonly
    # Forwarded write: refused by the exporter.
    assert me.as_.write(WINDOW_BASE + ANON, 0x55, 1) == MEMTX_ACCESS_ERROR
    assert other.call("read", ANON, 1) == (0x22, MEMTX_OK)
    # The first read shares the RAM read-only; later reads are direct.
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    assert me.ep.importer.mappings == [(0, 0x10000, True)]
    assert me.as_.read(WINDOW_BASE + RAM + 1, 1) == (0x11, MEMTX_OK)
    assert me.ep.statistics().forwarded_reads == 1
    # A write to the read-only mapping goes to the exporter, which refuses it.
    assert me.as_.write(WINDOW_BASE + RAM, 0x99, 1) == MEMTX_ACCESS_ERROR
    assert me.ep.write_bytes(RAM, b"\x99\x99") == MEMTX_ACCESS_ERROR
    assert other.call("read", RAM, 2) == (0x1111, MEMTX_OK)
    # And the fd itself cannot be mapped writable: the memfd is sealed.
    assert me.do_try_writable_map(0).startswith("refused")


def test_readonly_share_policy_never_forwards_everything(pair) -> None:
    me, other = pair(peer_over={"readonly": True, "readonly_share": "never"})
    for _ in range(3):
        assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    st = me.ep.statistics()
    assert st.direct_mappings == 0 and st.forwarded_reads == 3


def test_rom_is_shared_read_only_from_a_writable_exposure(pair) -> None:
    me, other = pair()
    other.call("add_ram", "rom", None, 0x1000, "memfd", 0x5A)
    other.call("add", "rom", 0x4_0000)
    assert me.as_.read(WINDOW_BASE + 0x4_0000, 1) == (0x5A, MEMTX_OK)
    # Writable RAM elsewhere is shared writable.
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    assert sorted(me.ep.importer.mappings) == [(0, 0x10000, False), (0x4_0000, 0x1000, False)]


def test_an_access_into_the_exporters_own_link_window_is_refused(pair) -> None:
    # The peer exposes 8 GiB, which covers its own import window at 4 GiB.
    me, other = pair(peer_over={"expose": (0, 0x2_0000_0000)},
                     local_over={"window_size": 0x2_0000_0000})
    assert me.as_.read(WINDOW_BASE + WINDOW_BASE + RAM, 4) == (0, MEMTX_DECODE_ERROR)
    assert me.ep.read_bytes(WINDOW_BASE - 8, 16)[1] == MEMTX_DECODE_ERROR
    assert other.call("stats")["refused_requests"] == 2
    # The link still works.
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)


def test_moving_shared_ram_invalidates_before_the_exporters_commit_returns(pair) -> None:
    me, other = pair()
    other.call("write", RAM + 0x10, 0xCAFE, 2)
    assert me.as_.read(WINDOW_BASE + RAM + 0x10, 2) == (0xCAFE, MEMTX_OK)
    assert me.ep.statistics().direct_mappings == 1
    other.call("move", "ram", 0x4_0000)  # returns after the commit, so after the ACK
    st = me.ep.statistics()
    assert st.direct_mappings == 0 and st.invalidations_received == 1
    assert st.mappings_removed == 1
    assert other.call("stats")["invalidations_sent"] == 1
    assert other.call("shared") == []
    # Old place: now a hole on the exporter.
    assert me.as_.read(WINDOW_BASE + RAM + 0x10, 2) == (0, MEMTX_DECODE_ERROR)
    # New place: forwarded once, then direct again.
    assert me.as_.read(WINDOW_BASE + 0x4_0010, 2) == (0xCAFE, MEMTX_OK)
    assert me.ep.importer.mappings == [(0x4_0000, 0x10000, False)]


def test_removing_shared_ram_invalidates(pair) -> None:
    me, other = pair()
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    other.call("remove", "ram")
    assert me.ep.importer.mappings == []
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0, MEMTX_DECODE_ERROR)


def test_the_importer_never_sees_stale_data_after_a_swap(pair) -> None:
    me, other = pair()
    other.call("add_ram", "ram2", None, 0x10000, "memfd", 0xBB)
    current = 0x11
    for i in range(40):
        assert me.as_.read(WINDOW_BASE + RAM + 0x80, 1) == (current, MEMTX_OK)
        assert me.as_.read(WINDOW_BASE + RAM + 0x81, 1) == (current, MEMTX_OK)  # direct
        if i % 2 == 0:
            other.call("swap", "ram", "ram2")
            current = 0xBB
        else:
            other.call("swap", "ram2", "ram")
            current = 0x11
        assert me.ep.importer.mappings == []
    st = me.ep.statistics()
    assert st.invalidations_received == 40
    assert st.forwarded_reads == 40
    me.do_check()


def test_changes_that_overlap_nothing_shared_send_no_invalidation(pair) -> None:
    me, other = pair()
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    other.call("move", "anon", 0x6_0000)
    other.call("add_ram", "extra", 0x7_0000, 0x1000, "memfd", 0)
    assert other.call("stats")["invalidations_sent"] == 0
    assert me.ep.importer.mappings == [(0, 0x10000, False)]


def test_a_new_region_over_part_of_shared_ram_invalidates_only_that_mapping(pair) -> None:
    me, other = pair()
    other.call("add_ram", "far", 0x8_0000, 0x1000, "memfd", 0x44)
    assert me.as_.read(WINDOW_BASE + RAM, 1) == (0x11, MEMTX_OK)
    assert me.as_.read(WINDOW_BASE + 0x8_0000, 1) == (0x44, MEMTX_OK)
    assert len(me.ep.importer.mappings) == 2
    other.call("add_ram", "cover", None, 0x1000, "memfd", 0x66)
    other.call("add", "cover", RAM + 0x4000, 1)
    assert me.ep.importer.mappings == [(0x8_0000, 0x1000, False)]
    assert me.as_.read(WINDOW_BASE + RAM + 0x4000, 1) == (0x66, MEMTX_OK)
    assert me.as_.read(WINDOW_BASE + RAM + 0x3FFF, 1) == (0x11, MEMTX_OK)
