"""plan_mappings: rules C1-C5 (flat view -> Unicorn mappings)."""

from __future__ import annotations

import pytest

from memexpose.machine import plan_mappings
from memexpose.machine.mapping import KIND_DEVICE, KIND_DIRECT, KIND_GENERIC
from memexpose.memory import (
    AccessConstraints,
    AddressSpace,
    MemoryRegion,
    MemoryRegionOps,
)

PAGE = 0x1000


class Ops(MemoryRegionOps):
    pass


class WideOps(MemoryRegionOps):
    impl = AccessConstraints(4, 8)


def _plan(*regions: tuple[int, MemoryRegion], page: int = PAGE):
    root = MemoryRegion.init_container("system", 1 << 64)
    as_ = AddressSpace(root, "memory")
    for addr, mr in regions:
        root.add_subregion(addr, mr)
    return [(m.kind, m.start, m.size) for m in plan_mappings(as_.flatview.ranges, page)], \
        plan_mappings(as_.flatview.ranges, page)


def test_ram_is_direct_and_rom_read_only() -> None:
    ram = MemoryRegion.init_ram("ram", 0x4000)
    rom = MemoryRegion.init_rom("rom", 0x2000)
    kinds, plan = _plan((0x10000, ram), (0x20000, rom))
    assert kinds == [(KIND_DIRECT, 0x10000, 0x4000), (KIND_DIRECT, 0x20000, 0x2000)]
    assert [m.writable for m in plan] == [True, False]
    assert plan[0].hostmem is ram.hostmem and plan[0].host_offset == 0


def test_device_pages_and_partial_pages_are_generic() -> None:
    dev = MemoryRegion.init_io("dev", 0x2000, Ops())
    small = MemoryRegion.init_io("small", 0x10, Ops())
    kinds, plan = _plan((0x10000, dev), (0x20008, small))
    assert kinds == [(KIND_DEVICE, 0x10000, 0x2000), (KIND_GENERIC, 0x20000, 0x1000)]
    assert plan[0].delta == -0x10000


def test_unaligned_ram_keeps_its_whole_pages_direct() -> None:
    ram = MemoryRegion.init_ram("ram", 0x3000)
    kinds, plan = _plan((0x10800, ram))
    assert kinds == [(KIND_GENERIC, 0x10000, 0x1000), (KIND_DIRECT, 0x11000, 0x2000),
                     (KIND_GENERIC, 0x13000, 0x1000)]
    assert plan[1].host_offset == 0x800


def test_finer_pages_need_no_generic_mapping() -> None:
    ram = MemoryRegion.init_ram("ram", 0x3000)
    kinds, _ = _plan((0x10800, ram), page=0x400)
    assert kinds == [(KIND_DIRECT, 0x10800, 0x3000)]


def test_adjacent_direct_ranges_of_one_backing_merge() -> None:
    ram = MemoryRegion.init_ram("ram", 0x4000)
    a = MemoryRegion.init_alias("a", ram, 0, 0x2000)
    b = MemoryRegion.init_alias("b", ram, 0x2000, 0x2000)
    kinds, _ = _plan((0x0, a), (0x2000, b))
    assert kinds == [(KIND_DIRECT, 0x0, 0x4000)]


def test_overlap_splits_ram_around_a_device() -> None:
    root = MemoryRegion.init_container("system", 1 << 64)
    as_ = AddressSpace(root, "memory")
    ram = MemoryRegion.init_ram("ram", 0x10000)
    root.add_subregion(0, ram)
    root.add_subregion_overlap(0x4000, MemoryRegion.init_io("dev", 0x1000, WideOps()), 1)
    plan = plan_mappings(as_.flatview.ranges, PAGE)
    assert [(m.kind, m.start, m.size, m.wide) for m in plan] == [
        (KIND_DIRECT, 0, 0x4000, False), (KIND_DEVICE, 0x4000, 0x1000, True),
        (KIND_DIRECT, 0x5000, 0xB000, False)]
    assert plan[2].host_offset == 0x5000


@pytest.mark.parametrize("page", [0x400, 0x1000])
def test_plan_is_sorted_aligned_and_disjoint(page: int) -> None:
    regions = [(0x100, MemoryRegion.init_io("a", 0x100, Ops())),
               (0x300, MemoryRegion.init_ram("b", 0x2200)),
               (0x3000, MemoryRegion.init_io("c", 0x1100, WideOps())),
               (0x8000, MemoryRegion.init_rom("d", 0x800))]
    _, plan = _plan(*regions, page=page)
    end = 0
    for m in plan:
        assert m.start % page == 0 and m.size % page == 0 and m.start >= end
        end = m.end


def test_background_region_is_clipped() -> None:
    kinds, _ = _plan((0, MemoryRegion.init_io("everything", 1 << 64, Ops())))
    assert kinds == [(KIND_DEVICE, 0, 1 << 48)]
