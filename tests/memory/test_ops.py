"""Tests for memexpose.memory.ops: validity, size adjustment, byte order, guard."""

from __future__ import annotations

import pytest

from memexpose.memory import (
    MEMTX_ACCESS_ERROR,
    MEMTX_DECODE_ERROR,
    MEMTX_ERROR,
    MEMTX_OK,
    MEMTXATTRS_UNSPECIFIED,
    AccessConstraints,
    Endianness,
    MemoryRegion,
    MemoryRegionOps,
    MemTxAttrs,
    Owner,
    UnassignedIOOps,
    UnassignedOps,
    swap_bytes,
)
from memexpose.memory.ops import dispatch_read, dispatch_write

A = MEMTXATTRS_UNSPECIFIED
LE, BE = False, True  # target byte order arguments


class Recorder(MemoryRegionOps):
    """Reads return ``values[(offset, size)]`` (default 0); every call is recorded."""

    def __init__(self, values: dict[tuple[int, int], int] | None = None) -> None:
        self.values = values or {}
        self.calls: list[tuple] = []

    def read(self, offset: int, size: int) -> int:
        self.calls.append(("r", offset, size))
        return self.values.get((offset, size), 0)

    def write(self, offset: int, value: int, size: int) -> None:
        self.calls.append(("w", offset, value, size))


def dev(endianness=Endianness.NATIVE, valid=None, impl=None,
        values=None, base=Recorder):
    cls = type("Dev", (base,), {"endianness": endianness, "valid": valid or AccessConstraints(),
                                "impl": impl or AccessConstraints()})
    ops = cls(values)
    return ops, MemoryRegion.init_io("dev", 0x100, ops)


# -- swap_bytes and AccessConstraints --------------------------------------------


def test_swap_bytes() -> None:
    assert swap_bytes(0x12, 1) == 0x12
    assert swap_bytes(0x1234, 2) == 0x3412
    assert swap_bytes(0x12345678, 4) == 0x78563412
    assert swap_bytes(0x0102030405060708, 8) == 0x0807060504030201
    assert swap_bytes(0x00FF, 2) == 0xFF00


def test_access_constraints_validation() -> None:
    with pytest.raises(ValueError):
        AccessConstraints(3, 4)
    with pytest.raises(ValueError):
        AccessConstraints(8, 4)
    with pytest.raises(ValueError):
        AccessConstraints(0, 16)
    AccessConstraints(8, 0)  # max 0: unspecified; min is then not compared


# -- validity (reference 4.3 step 2) ---------------------------------------------


@pytest.mark.parametrize(("size", "offset", "ok"), [
    (1, 0, False), (2, 0, False), (4, 0, True), (8, 0, True), (4, 2, False), (4, 4, True),
    (8, 4, False),
])
def test_valid_sizes_and_alignment(size: int, offset: int, ok: bool) -> None:
    ops, mr = dev(valid=AccessConstraints(4, 8), impl=AccessConstraints(4, 8),
                  values={(offset, size): 0x5A})
    value, res = dispatch_read(mr, offset, size, A, LE)
    assert res == (MEMTX_OK if ok else MEMTX_DECODE_ERROR)
    assert value == (0x5A if ok else 0)
    assert bool(ops.calls) == ok
    assert dispatch_write(mr, offset, 1, size, A, LE) == (MEMTX_OK if ok else MEMTX_DECODE_ERROR)
    assert len(ops.calls) == (2 if ok else 0)


def test_valid_unaligned_allows_misaligned_offsets() -> None:
    ops, mr = dev(valid=AccessConstraints(1, 4, unaligned=True), impl=AccessConstraints(1, 4))
    assert dispatch_read(mr, 3, 4, A, LE)[1] == MEMTX_OK
    assert ops.calls == [("r", 3, 4)]


def test_valid_max_zero_accepts_every_aligned_size() -> None:
    ops, mr = dev(valid=AccessConstraints(4, 0))  # min is ignored when max is 0
    for size in (1, 2, 4, 8):
        assert dispatch_read(mr, 0, size, A, LE)[1] == MEMTX_OK
    assert dispatch_read(mr, 1, 2, A, LE) == (0, MEMTX_DECODE_ERROR)  # still aligned only


def test_accepts_is_consulted_first() -> None:
    class Picky(Recorder):
        def accepts(self, offset, size, is_write, attrs):
            self.calls.append(("accepts", offset, size, is_write))
            return not is_write

    ops, mr = dev(base=Picky)
    assert dispatch_read(mr, 0, 4, A, LE)[1] == MEMTX_OK
    assert dispatch_write(mr, 0, 1, 4, A, LE) == MEMTX_DECODE_ERROR
    assert ops.calls == [("accepts", 0, 4, False), ("r", 0, 4), ("accepts", 0, 4, True)]


def test_unassigned_ops() -> None:
    mr = MemoryRegion.init_io("u", 0x100, UnassignedOps())
    assert dispatch_read(mr, 0, 4, A, LE) == (0, MEMTX_DECODE_ERROR)
    assert dispatch_write(mr, 0, 1, 4, A, LE) == MEMTX_DECODE_ERROR
    io = MemoryRegion.init_io("io", 0x10000, UnassignedIOOps())
    assert dispatch_read(io, 0x1234, 1, A, LE) == (0xFF, MEMTX_OK)
    assert dispatch_read(io, 0x1234, 2, A, LE) == (0xFFFF, MEMTX_OK)
    assert dispatch_read(io, 0x1234, 4, A, LE) == (0xFFFFFFFF, MEMTX_OK)
    assert dispatch_read(io, 0x1238, 8, A, LE) == ((1 << 64) - 1, MEMTX_OK)
    assert dispatch_write(io, 0x1234, 5, 2, A, LE) == MEMTX_OK


def test_base_ops_read_zero_and_ignore_writes() -> None:
    mr = MemoryRegion.init_io("plain", 0x10, MemoryRegionOps())
    assert dispatch_read(mr, 0, 4, A, LE) == (0, MEMTX_OK)
    assert dispatch_write(mr, 0, 7, 4, A, LE) == MEMTX_OK


# -- impl: split and widen (reference 4.3 step 4) --------------------------------


def test_split_read_little_endian_device() -> None:
    values = {(0, 2): 0x1111, (2, 2): 0x2222, (4, 2): 0x3333, (6, 2): 0x4444}
    ops, mr = dev(Endianness.LITTLE, impl=AccessConstraints(1, 2), values=values)
    assert dispatch_read(mr, 0, 8, A, LE) == (0x4444333322221111, MEMTX_OK)
    assert ops.calls == [("r", 0, 2), ("r", 2, 2), ("r", 4, 2), ("r", 6, 2)]


def test_split_read_big_endian_device() -> None:
    values = {(0, 2): 0x1111, (2, 2): 0x2222, (4, 2): 0x3333, (6, 2): 0x4444}
    ops, mr = dev(Endianness.BIG, impl=AccessConstraints(1, 2), values=values)
    assert dispatch_read(mr, 0, 8, A, LE) == (0x1111222233334444, MEMTX_OK)


def test_split_order_follows_the_device_not_the_target() -> None:
    values = {(0, 1): 0xAA, (1, 1): 0xBB}
    _, native_on_be = dev(Endianness.NATIVE, impl=AccessConstraints(1, 1), values=values)
    _, native_on_le = dev(Endianness.NATIVE, impl=AccessConstraints(1, 1), values=values)
    _, le_on_be = dev(Endianness.LITTLE, impl=AccessConstraints(1, 1), values=values)
    assert dispatch_read(native_on_be, 0, 2, A, BE)[0] == 0xAABB
    assert dispatch_read(native_on_le, 0, 2, A, LE)[0] == 0xBBAA
    assert dispatch_read(le_on_be, 0, 2, A, BE)[0] == 0xBBAA


def test_split_write_little_and_big_endian_devices() -> None:
    ops, mr = dev(Endianness.LITTLE, impl=AccessConstraints(1, 1))
    assert dispatch_write(mr, 0x10, 0x11223344, 4, A, LE) == MEMTX_OK
    assert ops.calls == [("w", 0x10, 0x44, 1), ("w", 0x11, 0x33, 1), ("w", 0x12, 0x22, 1),
                         ("w", 0x13, 0x11, 1)]
    ops, mr = dev(Endianness.BIG, impl=AccessConstraints(1, 2))
    assert dispatch_write(mr, 0x10, 0x11223344, 4, A, LE) == MEMTX_OK
    assert ops.calls == [("w", 0x10, 0x1122, 2), ("w", 0x12, 0x3344, 2)]


def test_default_impl_max_is_four() -> None:
    ops, mr = dev(Endianness.LITTLE, values={(0, 4): 0x33221100, (4, 4): 0x77665544})
    assert dispatch_read(mr, 0, 8, A, LE) == (0x7766554433221100, MEMTX_OK)
    assert ops.calls == [("r", 0, 4), ("r", 4, 4)]


def test_widening_little_endian_keeps_low_bytes_at_unaligned_address() -> None:
    # impl.min 4: a 1-byte access at 1 calls read(1, 4), not read(0, 4) (QEMU FIXME).
    ops, mr = dev(Endianness.LITTLE, impl=AccessConstraints(4, 4),
                  values={(1, 4): 0xAABBCCDD, (2, 4): 0x11223344})
    assert dispatch_read(mr, 1, 1, A, LE) == (0xDD, MEMTX_OK)
    assert dispatch_read(mr, 2, 2, A, LE) == (0x3344, MEMTX_OK)
    assert ops.calls == [("r", 1, 4), ("r", 2, 4)]


def test_widening_big_endian_keeps_high_bytes() -> None:
    ops, mr = dev(Endianness.BIG, impl=AccessConstraints(4, 4),
                  values={(1, 4): 0xAABBCCDD, (2, 4): 0x11223344})
    assert dispatch_read(mr, 1, 1, A, LE) == (0xAA, MEMTX_OK)
    assert dispatch_read(mr, 2, 2, A, LE) == (0x1122, MEMTX_OK)
    assert ops.calls == [("r", 1, 4), ("r", 2, 4)]


def test_widening_writes() -> None:
    ops, mr = dev(Endianness.LITTLE, impl=AccessConstraints(4, 4))
    dispatch_write(mr, 1, 0x5A, 1, A, LE)
    ops_be, mr_be = dev(Endianness.BIG, impl=AccessConstraints(4, 4))
    dispatch_write(mr_be, 1, 0x5A, 1, A, LE)
    dispatch_write(mr_be, 2, 0x1234, 2, A, LE)
    assert ops.calls == [("w", 1, 0x5A, 4)]
    assert ops_be.calls == [("w", 1, 0x5A000000, 4), ("w", 2, 0x12340000, 4)]


def test_read_value_is_masked_to_the_access_size() -> None:
    ops, mr = dev(values={(0, 2): 0xFFFF_1234})
    assert dispatch_read(mr, 0, 2, A, LE) == (0x1234, MEMTX_OK)
    ops, mr = dev(impl=AccessConstraints(1, 1), values={(0, 1): 0x1FF, (1, 1): 0x102})
    assert dispatch_read(mr, 0, 2, A, LE) == (0x02FF, MEMTX_OK)


def test_write_value_is_masked_to_the_access_size() -> None:
    ops, mr = dev()
    dispatch_write(mr, 0, 0x123456, 2, A, LE)
    assert ops.calls == [("w", 0, 0x3456, 2)]


def test_with_attrs_results_are_ored() -> None:
    class Erring(Recorder):
        def read_with_attrs(self, offset, size, attrs):
            self.calls.append(("r", offset, size, attrs))
            return 0x11 * (offset + 1), (MEMTX_ERROR if offset == 1 else MEMTX_OK)

        def write_with_attrs(self, offset, value, size, attrs):
            self.calls.append(("w", offset, value, size))
            return MEMTX_ERROR if offset == 0 else MEMTX_OK

    attrs = MemTxAttrs(secure=True, requester_id=0x18)
    ops, mr = dev(Endianness.LITTLE, impl=AccessConstraints(1, 1), base=Erring)
    assert dispatch_read(mr, 0, 2, attrs, LE) == (0x2211, MEMTX_ERROR)
    assert ops.calls[0][3] is attrs
    assert dispatch_write(mr, 0, 0xFFFF, 2, attrs, LE) == MEMTX_ERROR
    assert dispatch_write(mr, 2, 0xFFFF, 2, attrs, LE) == MEMTX_OK


# -- re-entrancy guard -----------------------------------------------------------


def test_reentrancy_guard_blocks_nested_access_to_same_device() -> None:
    owner = Owner("dev", id="d0")
    other = Owner("dev", id="d1")
    nested: list = []

    class Outer(MemoryRegionOps):
        def read(self, offset, size):
            nested.append(dispatch_read(sibling, 0, 4, A, LE))
            nested.append(dispatch_write(sibling, 0, 1, 4, A, LE))
            nested.append(dispatch_read(foreign, 0, 4, A, LE))
            return 7

    class Inner(MemoryRegionOps):
        def read(self, offset, size):
            return 9

    outer = MemoryRegion.init_io("outer", 0x10, Outer(), owner=owner)
    sibling = MemoryRegion.init_io("sibling", 0x10, Inner(), owner=owner)
    foreign = MemoryRegion.init_io("foreign", 0x10, Inner(), owner=other)
    assert dispatch_read(outer, 0, 4, A, LE) == (7, MEMTX_OK)
    assert nested == [(0, MEMTX_ACCESS_ERROR), MEMTX_ACCESS_ERROR, (9, MEMTX_OK)]
    assert not owner.engaged_in_io
    assert dispatch_read(sibling, 0, 4, A, LE) == (9, MEMTX_OK)  # released afterwards


def test_reentrancy_guard_exemptions_and_release_on_exception() -> None:
    owner = Owner("dev", id="d0")
    nested: list = []

    class Outer(MemoryRegionOps):
        def read(self, offset, size):
            nested.append(dispatch_read(target, 0, 4, A, LE))
            return 0

    class Boom(MemoryRegionOps):
        def read(self, offset, size):
            raise RuntimeError("device bug")

    target = MemoryRegion.init_io("target", 0x10, MemoryRegionOps(), owner=owner)
    outer = MemoryRegion.init_io("outer", 0x10, Outer(), owner=owner)
    outer.disable_reentrancy_guard = True
    dispatch_read(outer, 0, 4, A, LE)
    assert nested == [(0, MEMTX_OK)]
    # Owners that are not devices have no guard.
    obj = Owner("obj", path="/machine/x")
    nested.clear()
    target2 = MemoryRegion.init_io("t2", 0x10, MemoryRegionOps(), owner=obj)
    outer2 = MemoryRegion.init_io("o2", 0x10, Outer(), owner=obj)
    target = target2
    dispatch_read(outer2, 0, 4, A, LE)
    assert nested == [(0, MEMTX_OK)]
    # The guard is released even when a callback raises.
    boom = MemoryRegion.init_io("boom", 0x10, Boom(), owner=owner)
    with pytest.raises(RuntimeError):
        dispatch_read(boom, 0, 4, A, LE)
    assert not owner.engaged_in_io


def test_invalid_access_does_not_engage_the_guard() -> None:
    owner = Owner("dev", id="d0")
    ops, mr = dev(valid=AccessConstraints(4, 4))
    mr.owner = owner
    assert dispatch_read(mr, 0, 1, A, LE) == (0, MEMTX_DECODE_ERROR)
    assert not owner.engaged_in_io
