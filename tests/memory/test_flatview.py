"""Tests for memexpose.memory.flatview: rendering rules R1-R7, lookup."""

from __future__ import annotations

import pytest

from memexpose.memory import (
    ADDR_SPACE_END,
    AddressSpace,
    FlatView,
    HostMemory,
    MemoryRegion,
    MemoryRegionOps,
    MemorySystem,
    flatview_root,
    render_flatview,
)

KB = 1024


class Regs(MemoryRegionOps):
    pass


@pytest.fixture(scope="module")
def backing():
    with HostMemory.anonymous("backing", 64 * KB) as mem:
        yield mem


def ram(name: str, size: int, backing: HostMemory) -> MemoryRegion:
    return MemoryRegion.init_ram(name, size, hostmem=backing)


def io(name: str, size: int) -> MemoryRegion:
    return MemoryRegion.init_io(name, size, Regs())


def cont(name: str, size: int) -> MemoryRegion:
    return MemoryRegion.init_container(name, size)


def flat(view: FlatView) -> list[tuple]:
    """(start, last, name, offset, flags) for every range; flags: r=readonly, n=nonvolatile."""
    view._check_invariants()
    return [(fr.start, fr.end - 1, fr.mr.name, fr.offset_in_region,
             ("r" if fr.readonly else "") + ("n" if fr.nonvolatile else ""))
            for fr in view.ranges]


def render(root: MemoryRegion) -> list[tuple]:
    return flat(render_flatview(root))


# -- R4: priority and list order -----------------------------------------------


def test_higher_priority_wins_where_siblings_overlap() -> None:
    root = cont("root", 0x1000)
    low = io("low", 0x400)
    high = io("high", 0x100)
    root.add_subregion_overlap(0x100, low, 0)
    root.add_subregion_overlap(0x200, high, 1)
    assert render(root) == [
        (0x100, 0x1FF, "low", 0, ""),
        (0x200, 0x2FF, "high", 0, ""),
        (0x300, 0x4FF, "low", 0x200, ""),
    ]


def test_priority_order_is_independent_of_insertion_order() -> None:
    root = cont("root", 0x1000)
    high = io("high", 0x100)
    low = io("low", 0x400)
    root.add_subregion_overlap(0x200, high, 1)
    root.add_subregion_overlap(0x100, low, -5)
    assert [r[2] for r in render(root)] == ["low", "high", "low"]


def test_equal_priority_newest_wins() -> None:
    root = cont("root", 0x1000)
    first = io("first", 0x200)
    second = io("second", 0x200)
    root.add_subregion(0x000, first)
    root.add_subregion(0x100, second)
    assert render(root) == [
        (0x000, 0x0FF, "first", 0, ""),
        (0x100, 0x2FF, "second", 0, ""),
    ]
    # Re-adding the older one makes it the newest.
    root.del_subregion(first)
    root.add_subregion(0x000, first)
    assert render(root) == [
        (0x000, 0x1FF, "first", 0, ""),
        (0x200, 0x2FF, "second", 0x100, ""),
    ]


def test_set_address_makes_region_newest() -> None:
    sysmem = MemorySystem("m")
    root = cont("root", 0x1000)
    as_ = AddressSpace(root, "as", system=sysmem)
    a = io("a", 0x100)
    b = io("b", 0x100)
    root.add_subregion(0x000, a)
    root.add_subregion(0x080, b)  # b newer: wins 0x80-0xff
    assert [r[2] for r in flat(as_.flatview)] == ["a", "b"]
    a.set_address(0x040)  # a is now the newest and wins the overlap
    assert flat(as_.flatview) == [(0x40, 0x13F, "a", 0, ""), (0x140, 0x17F, "b", 0xC0, "")]


# -- R3: aliases ---------------------------------------------------------------


def test_alias_with_offset(backing) -> None:
    root = cont("root", 0x10000)
    r = ram("pc.ram", 0x1000, backing)
    root.add_subregion(0x5000, MemoryRegion.init_alias("win", r, 0x100, 0x200))
    assert render(root) == [(0x5000, 0x51FF, "pc.ram", 0x100, "")]


def test_alias_window_is_clipped_to_target_size(backing) -> None:
    root = cont("root", 0x10000)
    r = ram("pc.ram", 0x1000, backing)
    root.add_subregion(0x5000, MemoryRegion.init_alias("win", r, 0xF00, 0x400))
    assert render(root) == [(0x5000, 0x50FF, "pc.ram", 0xF00, "")]


def test_alias_ignores_target_addr(backing) -> None:
    # The target lives at 0x3000 in its own container; the alias shows it
    # from alias_offset at the alias's start anyway.
    root = cont("root", 0x10000)
    home = cont("home", 0x10000)
    r = ram("r", 0x1000, backing)
    home.add_subregion(0x3000, r)
    root.add_subregion(0x8000, MemoryRegion.init_alias("a", r, 0x10, 0x20))
    assert render(root) == [(0x8000, 0x801F, "r", 0x10, "")]


def test_alias_to_alias(backing) -> None:
    root = cont("root", 0x10000)
    r = ram("r", 0x1000, backing)
    a1 = MemoryRegion.init_alias("a1", r, 0x100, 0x800)
    a2 = MemoryRegion.init_alias("a2", a1, 0x10, 0x100)
    root.add_subregion(0x2000, a2)
    assert render(root) == [(0x2000, 0x20FF, "r", 0x110, "")]
    # The inner window clips the outer one.
    a3 = MemoryRegion.init_alias("a3", a1, 0x780, 0x100)
    root.add_subregion(0x3000, a3)
    assert render(root)[1] == (0x3000, 0x307F, "r", 0x880, "")


def test_alias_to_container_shows_its_holes_as_holes() -> None:
    root = cont("root", 0x10000)
    c = cont("c", 0x1000)
    c.add_subregion(0x000, io("x", 0x100))
    c.add_subregion(0x300, io("y", 0x100))
    below = io("below", 0x10000)
    root.add_subregion_overlap(0, below, -1)
    root.add_subregion(0x4000, MemoryRegion.init_alias("ac", c, 0x80, 0x300))
    assert render(root) == [
        (0x0000, 0x3FFF, "below", 0, ""),
        (0x4000, 0x407F, "x", 0x80, ""),
        (0x4080, 0x427F, "below", 0x4080, ""),  # hole of c: the lower sibling shows
        (0x4280, 0x42FF, "y", 0, ""),
        (0x4300, 0xFFFF, "below", 0x4300, ""),
    ]


def test_alias_subregions_are_ignored(backing) -> None:
    root = cont("root", 0x10000)
    r = ram("r", 0x100, backing)
    a = MemoryRegion.init_alias("a", r, 0, 0x100)
    a.add_subregion(0, io("ignored", 0x10))
    root.add_subregion(0, a)
    assert render(root) == [(0, 0xFF, "r", 0, "")]


def test_same_region_through_two_aliases_at_once(backing) -> None:
    root = cont("root", 0x10000)
    r = ram("r", 0x1000, backing)
    root.add_subregion(0x0000, MemoryRegion.init_alias("lo", r, 0, 0x1000))
    root.add_subregion(0x8000, MemoryRegion.init_alias("hi", r, 0x800, 0x800))
    assert render(root) == [(0, 0xFFF, "r", 0, ""), (0x8000, 0x87FF, "r", 0x800, "")]


# -- R1: disabled --------------------------------------------------------------


def test_disabled_region_and_subtree_render_nothing() -> None:
    root = cont("root", 0x1000)
    c = cont("c", 0x1000)
    c.add_subregion(0, io("inner", 0x100))
    root.add_subregion_overlap(0, c, 1)
    low = io("low", 0x1000)
    root.add_subregion(0, low)
    assert render(root)[0][2] == "inner"
    c.set_enabled(False)
    assert render(root) == [(0, 0xFFF, "low", 0, "")]
    low.set_enabled(False)
    assert render(root) == []


def test_alias_to_disabled_target_shows_nothing(backing) -> None:
    root = cont("root", 0x1000)
    r = ram("r", 0x100, backing)
    r.set_enabled(False)
    root.add_subregion(0, MemoryRegion.init_alias("a", r, 0, 0x100))
    root.add_subregion_overlap(0, io("under", 0x1000), -1)
    assert render(root) == [(0, 0xFFF, "under", 0, "")]


def test_disabled_alias_lets_lower_show() -> None:
    root = cont("root", 0x1000)
    target = io("t", 0x1000)
    a = MemoryRegion.init_alias("a", target, 0, 0x1000)
    root.add_subregion_overlap(0, a, 5)
    root.add_subregion(0, io("under", 0x1000))
    a.set_enabled(False)
    assert render(root) == [(0, 0xFFF, "under", 0, "")]


def test_disabled_root_renders_nothing() -> None:
    root = io("root", 0x1000)
    root.set_enabled(False)
    assert render(root) == []
    assert render_flatview(None).ranges == []


# -- R2: clipping --------------------------------------------------------------


def test_children_are_clipped_to_parent_size() -> None:
    root = cont("root", 0x10000)
    parent = cont("parent", 0x1000)
    root.add_subregion(0x4000, parent)
    parent.add_subregion(0xF00, io("spill", 0x400))
    parent.add_subregion(0x2000, io("outside", 0x100))
    assert render(root) == [(0x4F00, 0x4FFF, "spill", 0, "")]


def test_clipping_to_the_root() -> None:
    root = cont("root", 0x100)
    root.add_subregion(0x80, io("big", 0x1000))
    assert render(root) == [(0x80, 0xFF, "big", 0, "")]


def test_zero_size_regions_render_nothing() -> None:
    root = cont("root", 0x100)
    root.add_subregion(0x10, io("empty", 0))
    root.add_subregion(0x20, MemoryRegion.init_alias("a0", io("t", 0x10), 0, 0))
    assert render(root) == []


# -- R5: own content below all subregions; container holes ---------------------


def test_mmio_with_subregions_fills_only_holes() -> None:
    root = cont("root", 0x1000)
    rtc = io("rtc", 0x8)
    rtc.add_subregion_overlap(0x0, io("rtc-index", 0x1), -1000)
    rtc.add_subregion_overlap(0x4, io("rtc-x", 0x2), 0)
    root.add_subregion(0x70, rtc)
    assert render(root) == [
        (0x70, 0x70, "rtc-index", 0, ""),
        (0x71, 0x73, "rtc", 1, ""),
        (0x74, 0x75, "rtc-x", 0, ""),
        (0x76, 0x77, "rtc", 6, ""),
    ]


def test_mmio_own_ops_cover_lower_siblings() -> None:
    # A terminating region is opaque: lower siblings never show through it.
    root = cont("root", 0x1000)
    win = io("window", 0x100)
    win.add_subregion(0x10, cont("empty-child", 0x10))
    root.add_subregion_overlap(0, win, 1)
    root.add_subregion(0, io("low", 0x1000))
    assert render(root) == [(0, 0xFF, "window", 0, ""), (0x100, 0xFFF, "low", 0x100, "")]


def test_qemu_docs_overlap_example() -> None:
    # docs/devel/memory.rst: A(0x8000) holds C (MMIO 0..0x6000, prio 1) and B
    # (container at 0x2000, 0x4000, prio 2) with D at 0 and E at 0x2000.
    a = cont("A", 0x8000)
    b = cont("B", 0x4000)
    c = io("C", 0x6000)
    b.add_subregion(0x0000, io("D", 0x1000))
    b.add_subregion(0x2000, io("E", 0x1000))
    a.add_subregion_overlap(0x2000, b, 2)
    a.add_subregion_overlap(0x0000, c, 1)
    assert render(a) == [
        (0x0000, 0x1FFF, "C", 0x0000, ""),
        (0x2000, 0x2FFF, "D", 0x0000, ""),
        (0x3000, 0x3FFF, "C", 0x3000, ""),
        (0x4000, 0x4FFF, "E", 0x0000, ""),
        (0x5000, 0x5FFF, "C", 0x5000, ""),
    ]


def test_terminating_root_with_children() -> None:
    io_root = io("io", 0x10000)
    io_root.add_subregion(0xCF8, io("pci-conf-idx", 4))
    io_root.add_subregion_overlap(0xCF9, io("piix3-reset-control", 1), 1)
    assert render(io_root) == [
        (0x0000, 0x0CF7, "io", 0, ""),
        (0x0CF8, 0x0CF8, "pci-conf-idx", 0, ""),
        (0x0CF9, 0x0CF9, "piix3-reset-control", 0, ""),
        (0x0CFA, 0x0CFB, "pci-conf-idx", 2, ""),
        (0x0CFC, 0xFFFF, "io", 0xCFC, ""),
    ]


# -- R6: merging -----------------------------------------------------------------


def test_same_region_via_two_aliases_merges(backing) -> None:
    # pc: pc.ram below 0xc0000 via ram-below-4g, 0xc0000.. via kvmvapic-rom (prio 1000).
    root = cont("root", 0x100000)
    r = ram("pc.ram", 0x10000, backing)
    root.add_subregion(0, MemoryRegion.init_alias("below", r, 0, 0xC000))
    root.add_subregion_overlap(0xC000, MemoryRegion.init_alias("vapic", r, 0xC000, 0x3000), 1000)
    ro = MemoryRegion.init_alias("pam-rom", r, 0xF000, 0x1000)
    ro.set_readonly(True)
    root.add_subregion_overlap(0xF000, ro, 1)
    assert render(root) == [
        (0x0000, 0xEFFF, "pc.ram", 0, ""),
        (0xF000, 0xFFFF, "pc.ram", 0xF000, "r"),
    ]


def test_no_merge_when_offsets_are_not_continuous(backing) -> None:
    root = cont("root", 0x10000)
    r = ram("r", 0x1000, backing)
    root.add_subregion(0x0000, MemoryRegion.init_alias("a", r, 0x000, 0x100))
    root.add_subregion(0x0100, MemoryRegion.init_alias("b", r, 0x200, 0x100))
    assert render(root) == [(0, 0xFF, "r", 0, ""), (0x100, 0x1FF, "r", 0x200, "")]


def test_no_merge_of_distinct_regions_with_equal_names() -> None:
    root = cont("root", 0x1000)
    root.add_subregion(0x000, io("same", 0x100))
    root.add_subregion(0x100, io("same", 0x100))
    assert len(render(root)) == 2


def test_no_merge_across_nonvolatile_difference(backing) -> None:
    root = cont("root", 0x10000)
    r = ram("r", 0x1000, backing)
    nv = MemoryRegion.init_alias("nv", r, 0x100, 0x100)
    nv.set_nonvolatile(True)
    root.add_subregion(0, MemoryRegion.init_alias("a", r, 0, 0x100))
    root.add_subregion(0x100, nv)
    root.add_subregion(0x200, MemoryRegion.init_alias("c", r, 0x200, 0x100))
    assert render(root) == [
        (0x000, 0x0FF, "r", 0x000, ""),
        (0x100, 0x1FF, "r", 0x100, "n"),
        (0x200, 0x2FF, "r", 0x200, ""),
    ]


def test_region_split_by_a_child_and_rejoined_merges() -> None:
    # A child that leaves a hole in the middle: own content is continuous
    # around a disabled child.
    root = cont("root", 0x1000)
    parent = io("p", 0x300)
    child = io("child", 0x100)
    parent.add_subregion(0x100, child)
    root.add_subregion(0, parent)
    assert len(render(root)) == 3
    child.set_enabled(False)
    assert render(root) == [(0, 0x2FF, "p", 0, "")]


# -- flags -------------------------------------------------------------------------


def test_readonly_and_nonvolatile_are_inherited(backing) -> None:
    root = cont("root", 0x10000)
    ro_parent = cont("ro", 0x1000)
    ro_parent.set_readonly(True)
    ro_parent.add_subregion(0, ram("r1", 0x100, backing))
    root.add_subregion(0, ro_parent)
    nv_parent = cont("nvp", 0x1000)
    nv_parent.set_nonvolatile(True)
    inner = cont("inner", 0x1000)
    inner.add_subregion(0, io("dev", 0x100))
    nv_parent.add_subregion(0, inner)
    root.add_subregion(0x1000, nv_parent)
    alias = MemoryRegion.init_alias("a", nv_parent, 0, 0x100)
    alias.set_readonly(True)
    root.add_subregion(0x2000, alias)
    assert render(root) == [
        (0x0000, 0x00FF, "r1", 0, "r"),
        (0x1000, 0x10FF, "dev", 0, "n"),
        (0x2000, 0x20FF, "dev", 0, "rn"),
    ]


def test_rom_is_readonly_in_the_view(backing) -> None:
    root = cont("root", 0x10000)
    root.add_subregion(0, MemoryRegion.init_rom("bios", 0x100, hostmem=backing))
    assert render(root) == [(0, 0xFF, "bios", 0, "r")]


def test_romd_mode_is_recorded_in_the_range() -> None:
    flash = MemoryRegion.init_rom_device("flash", 0x100, Regs())
    root = cont("root", 0x1000)
    root.add_subregion(0, flash)
    assert render_flatview(root).ranges[0].romd_mode is True
    flash.rom_device_set_romd(False)
    fr = render_flatview(root).ranges[0]
    assert fr.romd_mode is False and fr.read_view is None


# -- root offset, flat-view roots and sharing --------------------------------------


def test_root_with_nonzero_addr_shifts_the_view() -> None:
    outer = cont("outer", 0x100000)
    root = cont("root", 0x1000)
    root.add_subregion(0x10, io("a", 0x10))
    root.add_subregion(0x40, io("b", 0x10))
    outer.add_subregion(0x8000, root)
    assert render(root) == [(0x8010, 0x801F, "a", 0, ""), (0x8040, 0x804F, "b", 0, "")]
    as_ = AddressSpace(root, "shifted")
    assert flatview_root(root) is root
    assert flat(as_.flatview) == [(0x8010, 0x801F, "a", 0, ""), (0x8040, 0x804F, "b", 0, "")]


def test_flatview_root_descent() -> None:
    system = cont("system", ADDR_SPACE_END)
    system.add_subregion(0, io("x", 0x10))
    system.add_subregion(0x100, io("y", 0x10))
    # Alias of the whole target from 0: descend.
    whole = MemoryRegion.init_alias("whole", system, 0, ADDR_SPACE_END)
    assert flatview_root(whole) is system
    # Window with an offset, or smaller than the target: stop at the alias.
    assert flatview_root(MemoryRegion.init_alias("off", system, 0x10, 0x100)) is not system
    small = MemoryRegion.init_alias("small", system, 0, 0x1000)
    assert flatview_root(small) is small
    # Container with exactly one enabled child at 0 that fits: descend (through an alias).
    bm = cont("bus master container", ADDR_SPACE_END)
    bm_alias = MemoryRegion.init_alias("bus master", system, 0, ADDR_SPACE_END)
    bm.add_subregion(0, bm_alias)
    assert flatview_root(bm) is system
    bm_alias.set_enabled(False)
    assert flatview_root(bm) is None  # no enabled child
    bm_alias.set_enabled(True)
    bm.add_subregion(0, io("second", 1))
    assert flatview_root(bm) is bm  # two enabled children
    # A single child not at 0, or bigger than the container: stop.
    c = cont("c", 0x1000)
    c.add_subregion(0x10, io("child", 0x10))
    assert flatview_root(c) is c
    d = cont("d", 0x10)
    d.add_subregion(0, io("bigchild", 0x20))
    assert flatview_root(d) is d
    # Terminating regions are roots; disabled ones give None.
    t = io("t", 0x10)
    assert flatview_root(t) is t
    t.set_enabled(False)
    assert flatview_root(t) is None
    assert flatview_root(None) is None
    # An empty container has no root at all.
    assert flatview_root(cont("empty", 0x10)) is None


def test_address_spaces_share_flat_views_by_flatview_root() -> None:
    sysmem = MemorySystem("m")
    system = cont("system", ADDR_SPACE_END)
    system.add_subregion(0, io("x", 0x10))
    system.add_subregion(0x100, io("y", 0x10))
    memory = AddressSpace(system, "memory", system=sysmem)
    cpu = AddressSpace(system, "cpu-memory-0", system=sysmem)
    bm = cont("bus master container", ADDR_SPACE_END)
    bm_alias = MemoryRegion.init_alias("bus master", system, 0, ADDR_SPACE_END)
    bm_alias.set_enabled(False)
    bm.add_subregion(0, bm_alias)
    pci = AddressSpace(bm, "pci", system=sysmem)
    assert cpu.flatview is memory.flatview
    assert pci.flatview is not memory.flatview and pci.flatview.root is None
    assert pci.flatview.ranges == []
    renders = sysmem.renders
    bm_alias.set_enabled(True)  # bus mastering on: the PCI AS joins the system view
    assert pci.flatview is memory.flatview is cpu.flatview
    assert sysmem.renders == renders + 1
    system.add_subregion(0x200, io("z", 0x10))
    assert pci.flatview is memory.flatview
    assert [fr.mr.name for fr in pci.flatview] == ["x", "y", "z"]


# -- size 2**64 --------------------------------------------------------------------


def test_regions_of_size_two_to_the_64() -> None:
    root = cont("system", ADDR_SPACE_END)
    whole = io("whole", ADDR_SPACE_END)
    root.add_subregion_overlap(0, whole, -1)
    assert render(root) == [(0, ADDR_SPACE_END - 1, "whole", 0, "")]
    view = render_flatview(root)
    assert view.ranges[0].size == ADDR_SPACE_END
    assert view.lookup(ADDR_SPACE_END - 1).mr is whole
    assert view.find_flat_range(ADDR_SPACE_END - 8, 8).mr is whole
    top = io("top", ADDR_SPACE_END)
    root.add_subregion(ADDR_SPACE_END - 0x1000, top)  # clipped at 2**64
    assert render(root) == [
        (0, ADDR_SPACE_END - 0x1001, "whole", 0, ""),
        (ADDR_SPACE_END - 0x1000, ADDR_SPACE_END - 1, "top", 0, ""),
    ]
    alias = MemoryRegion.init_alias("all", root, 0, ADDR_SPACE_END)
    outer = cont("outer", ADDR_SPACE_END)
    outer.add_subregion(0, alias)
    assert render(outer) == render(root)
    # An alias whose window starts high into a 2**64 target.
    hi = cont("hi", ADDR_SPACE_END)
    hi.add_subregion(0, MemoryRegion.init_alias("hiwin", root, ADDR_SPACE_END - 0x800, 0x1000))
    assert render(hi) == [(0, 0x7FF, "top", 0x800, "")]


# -- lookup -----------------------------------------------------------------------


def test_find_flat_range_first_last_and_across() -> None:
    root = cont("root", 0x10000)
    a = io("a", 0x100)
    b = io("b", 0x100)
    root.add_subregion(0x1000, a)
    root.add_subregion(0x1100, b)
    view = render_flatview(root)
    assert view.find_flat_range(0x1000, 1).mr is a
    assert view.find_flat_range(0x1000, 8).mr is a
    assert view.find_flat_range(0x10FF, 1).mr is a
    assert view.find_flat_range(0x10F8, 8).mr is a
    assert view.find_flat_range(0x10FF, 2) is None  # crosses into b
    assert view.find_flat_range(0x10FC, 8) is None
    assert view.find_flat_range(0x1100, 1).mr is b
    assert view.find_flat_range(0x11FF, 1).mr is b
    assert view.find_flat_range(0x11FF, 2) is None  # runs into a hole
    assert view.find_flat_range(0x0FFF, 1) is None
    assert view.find_flat_range(0x0FFF, 2) is None
    assert view.find_flat_range(0x0, 1) is None
    assert view.lookup(0x1200) is None
    assert view.next_start_after(0x1000) == 0x1100
    assert view.next_start_after(0x1100) == ADDR_SPACE_END
    assert view.next_start_after(0) == 0x1000
    as_ = AddressSpace(root, "as")
    assert as_.find_flat_range(0x10FF).mr is a


def test_address_space_find_is_memory_region_find() -> None:
    root = cont("root", 0x10000)
    a = io("a", 0x100)
    b = io("b", 0x100)
    root.add_subregion(0x1000, a)
    root.add_subregion(0x1200, b)
    as_ = AddressSpace(root, "as")
    s = as_.find(0x1080, 0x400)  # lowest intersecting range, clipped
    assert (s.mr, s.offset_within_address_space, s.size, s.offset_within_region) == (
        a, 0x1080, 0x80, 0x80)
    s = as_.find(0x0F00, 0x400)
    assert (s.mr, s.offset_within_address_space, s.size, s.offset_within_region) == (
        a, 0x1000, 0x100, 0)
    s = as_.find(0x1100, 0x180)
    assert (s.mr, s.offset_within_address_space, s.size, s.offset_within_region) == (
        b, 0x1200, 0x80, 0)
    assert as_.find(0x1100, 0x100) is None
    assert as_.find(0x2000, 0x10) is None


def test_render_is_pure() -> None:
    root = cont("root", 0x1000)
    root.add_subregion(0, io("a", 0x10))
    v1 = render_flatview(root)
    v2 = render_flatview(root)
    assert v1 is not v2 and flat(v1) == flat(v2)
