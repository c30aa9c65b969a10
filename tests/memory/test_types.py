"""Tests for memexpose.memory.types: ranges, results, attributes."""

from __future__ import annotations

import pytest

from memexpose.errors import InvalidAccessError
from memexpose.memory import (
    ADDR_SPACE_END,
    MEMTX_ACCESS_ERROR,
    MEMTX_DECODE_ERROR,
    MEMTX_ERROR,
    MEMTX_OK,
    MEMTXATTRS_UNSPECIFIED,
    AddrRange,
    Endianness,
    MemTxAttrs,
    MemTxResult,
)
from memexpose.memory.types import check_access


def test_memtx_values_are_qemus_and_or_together() -> None:
    assert (int(MEMTX_OK), int(MEMTX_ERROR), int(MEMTX_DECODE_ERROR),
            int(MEMTX_ACCESS_ERROR)) == (0, 1, 2, 4)
    combined = MEMTX_OK | MEMTX_DECODE_ERROR | MEMTX_ACCESS_ERROR
    assert isinstance(combined, MemTxResult) and int(combined) == 6
    assert [e.value for e in Endianness] == [0, 1, 2]


def test_attrs_defaults() -> None:
    assert MEMTXATTRS_UNSPECIFIED.unspecified and not MEMTXATTRS_UNSPECIFIED.memory
    attrs = MemTxAttrs(secure=True, requester_id=0x18)
    assert attrs.secure and attrs.requester_id == 0x18 and not attrs.unspecified
    with pytest.raises(AttributeError):
        attrs.secure = False  # type: ignore[misc]


def test_addr_range_edges() -> None:
    r = AddrRange(0x1000, 0x100)
    assert r.end == 0x1100 and r.last == 0x10FF
    assert r.contains(0x1000) and r.contains(0x10FF)
    assert not r.contains(0x1100) and not r.contains(0xFFF)
    assert AddrRange(5, 0).last == 5 and not AddrRange(5, 0).contains(5)
    whole = AddrRange(0, ADDR_SPACE_END)
    assert whole.last == ADDR_SPACE_END - 1 and whole.contains(ADDR_SPACE_END - 1)
    assert repr(r) == "AddrRange(0x1000, size=0x100)"


def test_addr_range_intersection() -> None:
    a = AddrRange(0x1000, 0x100)
    assert a.intersection(AddrRange(0x1080, 0x100)) == AddrRange(0x1080, 0x80)
    assert a.intersection(AddrRange(0x0, 0x2000)) == a
    assert a.intersection(AddrRange(0x1100, 0x10)) is None  # touching is not overlapping
    assert a.intersection(AddrRange(0x1000, 0)) is None


@pytest.mark.parametrize(("start", "size"), [(-1, 1), (0, -1), (ADDR_SPACE_END, 1),
                                             (1, ADDR_SPACE_END)])
def test_addr_range_rejects_ranges_outside_the_space(start: int, size: int) -> None:
    with pytest.raises(InvalidAccessError):
        AddrRange(start, size)


def test_check_access() -> None:
    check_access(0, 1)
    check_access(ADDR_SPACE_END - 8, 8)
    for addr, size in [(0, 0), (0, 9), (-1, 1), (ADDR_SPACE_END - 7, 8)]:
        with pytest.raises(InvalidAccessError) as info:
            check_access(addr, size)
        assert (info.value.addr, info.value.size) == (addr, size)
