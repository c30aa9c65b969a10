"""Tests for memexpose.memory.region: region kinds, the subregion list, errors."""

from __future__ import annotations

import pytest

from memexpose.errors import (
    MemoryModelError,
    RegionCycleError,
    RegionInUseError,
    RegionSizeError,
)
from memexpose.memory import (
    ADDR_SPACE_END,
    MEMTX_OK,
    AddressSpace,
    HostMemory,
    IOMMUMemoryRegion,
    MemoryRegion,
    MemoryRegionOps,
    MemorySystem,
    Owner,
    UnassignedOps,
)

KB = 1024


class Regs(MemoryRegionOps):
    pass


def _snapshot(*regions: MemoryRegion) -> list:
    """Everything about a set of regions that a failed call must leave unchanged."""
    out = []
    for root in regions:
        for mr in root.walk():
            out.append((mr.name, mr.container, mr.addr, mr.priority, mr.size, mr.enabled,
                        mr.system, tuple(mr.subregions)))
    return out


# -- kinds ---------------------------------------------------------------------


def test_container_properties() -> None:
    mr = MemoryRegion.init_container("c", 0x1000)
    assert not mr.terminates and not mr.ram and not mr.rom_device and not mr.is_iommu
    assert not mr.is_alias and mr.alias_target is None and mr.alias_offset == 0
    assert mr.addr == 0 and mr.priority == 0 and mr.container is None
    assert mr.enabled and not mr.readonly and not mr.nonvolatile and mr.romd_mode
    assert isinstance(mr.ops, UnassignedOps)
    assert mr.hostmem is None and mr.system is None
    assert mr.kind_name() == "i/o"
    assert mr.subregions == ()


def test_io_region_properties() -> None:
    ops = Regs()
    mr = MemoryRegion.init_io("mmio", 0x100, ops)
    assert mr.terminates and not mr.ram and mr.ops is ops
    assert mr.kind_name() == "i/o"
    assert MemoryRegion.__dict__["init_mmio"] is MemoryRegion.__dict__["init_io"]
    with pytest.raises(TypeError):
        MemoryRegion.init_io("bad", 0x100, object())  # type: ignore[arg-type]


def test_reservation_terminates_with_unassigned_ops() -> None:
    mr = MemoryRegion.init_reservation("resv", 0x100)
    assert mr.terminates and isinstance(mr.ops, UnassignedOps)
    assert mr.kind_name() == "i/o"


def test_ram_properties() -> None:
    mr = MemoryRegion.init_ram("pc.ram", 2 * KB)
    try:
        assert mr.terminates and mr.ram and not mr.readonly and not mr.rom_device
        assert mr.hostmem is not None and mr.hostmem.size == 2 * KB and mr.hostmem.shareable
        assert mr.kind_name() == "ram"
        assert not mr.is_rom and not mr.is_romd
    finally:
        mr.close()
    assert mr.hostmem.closed


def test_ram_with_given_hostmem_and_offset() -> None:
    with HostMemory.anonymous("backing", 4 * KB) as mem:
        mr = MemoryRegion.init_ram("part", KB, hostmem=mem, hostmem_offset=2 * KB)
        assert mr.hostmem is mem and mr.hostmem_offset == 2 * KB
        with pytest.raises(RegionSizeError):
            MemoryRegion.init_ram("toobig", 3 * KB, hostmem=mem, hostmem_offset=2 * KB)
        with pytest.raises(MemoryModelError):
            MemoryRegion.init_ram("offset-only", KB, hostmem_offset=8)


def test_closing_a_region_keeps_host_memory_it_was_given() -> None:
    # Docstring contract of init_ram: the region owns only memory it created.
    with HostMemory.anonymous("backing", 4 * KB) as mem:
        mr = MemoryRegion.init_ram("part", KB, hostmem=mem)
        mr.close()
        assert not mem.closed
        mem.view[0] = 1


def test_close_refuses_a_mapped_region() -> None:
    c = MemoryRegion.init_container("c", 4 * KB)
    ram = MemoryRegion.init_ram("r", KB)
    c.add_subregion(0, ram)
    with pytest.raises(MemoryModelError):
        ram.close()
    c.del_subregion(ram)
    ram.close()


def test_rom_properties() -> None:
    mr = MemoryRegion.init_rom("pc.bios", KB)
    assert mr.ram and mr.readonly and mr.terminates and mr.is_rom
    assert mr.kind_name() == "rom"
    mr.close()


def test_rom_device_properties_and_romd_switch() -> None:
    ops = Regs()
    mr = MemoryRegion.init_rom_device("flash0", KB, ops)
    assert mr.rom_device and mr.terminates and not mr.ram and mr.romd_mode and mr.is_romd
    assert mr.hostmem is not None and mr.ops is ops
    assert mr.kind_name() == "romd"
    mr.rom_device_set_romd(False)
    assert not mr.is_romd and mr.kind_name() == "i/o"
    ram = MemoryRegion.init_ram("r", KB)
    with pytest.raises(MemoryModelError):
        ram.rom_device_set_romd(False)
    mr.close()
    ram.close()


def test_iommu_properties() -> None:
    mr = IOMMUMemoryRegion("dmar", 0x1000)
    assert mr.is_iommu and mr.terminates and not mr.ram
    assert mr.kind_name() == "i/o"
    entry = mr.translate(0x10, False, None)  # type: ignore[arg-type]
    assert entry.perm == 0  # base class: no mappings


def test_alias_properties_and_kind_of_final_target() -> None:
    ram = MemoryRegion.init_ram("pc.ram", 4 * KB)
    rom = MemoryRegion.init_rom("bios", KB)
    flash = MemoryRegion.init_rom_device("flash", KB, Regs())
    io = MemoryRegion.init_io("io", KB, Regs())
    a = MemoryRegion.init_alias("below", ram, 0x100, 0x200)
    assert a.is_alias and a.alias_target is ram and a.alias_offset == 0x100 and a.size == 0x200
    assert not a.terminates and not a.ram
    assert a.kind_name() == "ram"
    assert MemoryRegion.init_alias("a", rom, 0, KB).kind_name() == "rom"
    assert MemoryRegion.init_alias("a", flash, 0, KB).kind_name() == "romd"
    assert MemoryRegion.init_alias("a", io, 0, KB).kind_name() == "i/o"
    # alias to alias: the final target decides; the alias's own readonly does not show.
    aa = MemoryRegion.init_alias("aa", a, 0, 0x100)
    aa.set_readonly(True)
    assert aa.kind_name() == "ram"
    flash.rom_device_set_romd(False)
    assert MemoryRegion.init_alias("a", flash, 0, KB).kind_name() == "i/o"
    for mr in (ram, rom, flash):
        mr.close()


def test_alias_negative_offset_refused() -> None:
    c = MemoryRegion.init_container("c", KB)
    with pytest.raises(MemoryModelError):
        MemoryRegion.init_alias("a", c, -1, KB)
    with pytest.raises(TypeError):
        MemoryRegion.init_alias("a", "c", 0, KB)  # type: ignore[arg-type]


def test_owner_describe_and_equality() -> None:
    assert Owner("dev", id="edu0").describe() == "{dev id=edu0}"
    assert Owner("dev", path="/machine/x").describe() == "{dev path=/machine/x}"
    assert Owner("obj", path="/machine/y", id="ignored").describe() == "{obj path=/machine/y}"
    assert Owner("obj", type_name="t").describe() == "{obj type=t}"
    assert Owner("dev", path="/a") == Owner("dev", path="/a")
    assert Owner("dev", path="/a").is_device and not Owner("obj", path="/a").is_device
    with pytest.raises(ValueError):
        Owner("dev")
    with pytest.raises(ValueError):
        Owner("thing", path="/a")
    mr = MemoryRegion.init_container("c", 1)
    assert mr.parent_object == Owner("obj", path="/machine/unattached")
    dev = Owner("dev", id="d")
    assert MemoryRegion.init_container("c", 1, owner=dev).parent_object is dev


# -- subregion list ------------------------------------------------------------


def test_subregion_order_priority_then_newest_first() -> None:
    c = MemoryRegion.init_container("c", KB)
    names = []
    for name, prio in [("a", 0), ("b", 1), ("c0", 0), ("d", -1), ("e", 1), ("f", 0)]:
        child = MemoryRegion.init_container(name, 16)
        c.add_subregion_overlap(0, child, prio)
        names.append(name)
    assert [m.name for m in c.subregions] == ["e", "b", "f", "c0", "a", "d"]
    assert all(m.container is c for m in c.subregions)
    c._check_invariants()


def test_plain_add_subregion_forces_priority_zero_and_sets_addr() -> None:
    c = MemoryRegion.init_container("c", KB)
    child = MemoryRegion.init_container("x", 16)
    c.add_subregion_overlap(0x10, child, 5)
    c.del_subregion(child)
    assert child.container is None
    c.add_subregion(0x20, child)
    assert child.priority == 0 and child.addr == 0x20


def test_set_address_moves_to_front_of_equal_priority_group() -> None:
    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("root", KB)
    AddressSpace(root, "as", system=sysmem)
    a = MemoryRegion.init_container("a", 16)
    b = MemoryRegion.init_container("b", 16)
    root.add_subregion(0, a)
    root.add_subregion(0, b)
    assert [m.name for m in root.subregions] == ["b", "a"]
    a.set_address(0x40)
    assert [m.name for m in root.subregions] == ["a", "b"]
    assert a.addr == 0x40 and a.container is root
    # Without a system the same holds.
    c = MemoryRegion.init_container("c", KB)
    x = MemoryRegion.init_container("x", 1)
    y = MemoryRegion.init_container("y", 1)
    c.add_subregion_overlap(0, x, 3)
    c.add_subregion_overlap(0, y, 3)
    x.set_address(4)
    assert [m.name for m in c.subregions] == ["x", "y"] and x.priority == 3


def test_del_subregion_of_wrong_parent() -> None:
    c = MemoryRegion.init_container("c", KB)
    d = MemoryRegion.init_container("d", KB)
    x = MemoryRegion.init_container("x", 1)
    c.add_subregion(0, x)
    with pytest.raises(MemoryModelError):
        d.del_subregion(x)
    assert x.container is c


def test_walk_visits_subregions_and_alias_targets_once() -> None:
    c = MemoryRegion.init_container("c", KB)
    t = MemoryRegion.init_container("t", KB)
    a1 = MemoryRegion.init_alias("a1", t, 0, 16)
    a2 = MemoryRegion.init_alias("a2", t, 16, 16)
    c.add_subregion(0, a1)
    c.add_subregion(16, a2)
    names = sorted(m.name for m in c.walk())
    assert names == ["a1", "a2", "c", "t"]


# -- errors leave the model unchanged ------------------------------------------


def _system_tree():
    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("root", 64 * KB)
    as_ = AddressSpace(root, "as", system=sysmem)
    return sysmem, root, as_


def test_region_added_twice_or_to_two_parents() -> None:
    sysmem, root, as_ = _system_tree()
    other = MemoryRegion.init_container("other", KB)
    root.add_subregion(0x1000, other)
    child = MemoryRegion.init_io("dev", 0x10, Regs())
    root.add_subregion(0, child)
    renders = sysmem.renders
    view = as_.flatview
    before = _snapshot(root)
    with pytest.raises(RegionInUseError):
        root.add_subregion(0x20, child)
    with pytest.raises(RegionInUseError):
        other.add_subregion_overlap(0, child, 1)
    assert _snapshot(root) == before
    assert child.container is root and child.addr == 0
    assert sysmem.renders == renders and as_.flatview is view
    assert not sysmem.in_transaction


def test_containment_cycle_refused() -> None:
    sysmem, root, as_ = _system_tree()
    a = MemoryRegion.init_container("a", KB)
    b = MemoryRegion.init_container("b", KB)
    root.add_subregion(0, a)
    a.add_subregion(0, b)
    before = _snapshot(root)
    with pytest.raises(RegionCycleError):
        b.add_subregion(0, root)  # root already has no container; it contains b
    lone = MemoryRegion.init_container("lone", KB)
    with pytest.raises(RegionCycleError):
        lone.add_subregion(0, lone)
    assert lone.container is None and lone.subregions == ()
    assert _snapshot(root) == before
    # Free-standing regions too.
    x = MemoryRegion.init_container("x", KB)
    y = MemoryRegion.init_container("y", KB)
    x.add_subregion(0, y)
    with pytest.raises(RegionCycleError):
        y.add_subregion(0, x)
    assert x.container is None and y.subregions == ()


def test_endless_alias_loop_refused() -> None:
    sysmem, root, as_ = _system_tree()
    c = MemoryRegion.init_container("c", KB)
    root.add_subregion(0, c)
    before = _snapshot(root)
    renders = sysmem.renders
    # An alias at 0 showing its own container from 0: every pass shows the
    # same window again, so rendering would never end (rule R8).
    direct = MemoryRegion.init_alias("self", c, 0, KB)
    with pytest.raises(RegionCycleError, match="self"):
        c.add_subregion(0, direct)
    assert direct.container is None and c.subregions == ()
    # Through a chain of aliases, placed where the window does not move.
    a1 = MemoryRegion.init_alias("a1", root, 0x10, KB)
    a2 = MemoryRegion.init_alias("a2", a1, 0, KB)
    with pytest.raises(RegionCycleError):
        c.add_subregion(0x10, a2)
    assert _snapshot(root) == before
    assert a2.container is None
    assert sysmem.renders == renders


def test_alias_inside_the_region_it_shows_renders_like_qemu() -> None:
    """QEMU renders an alias inside its own target: each pass shifts the
    window and clipping ends the recursion (ARMSSE boards do this)."""
    sysmem, root, as_ = _system_tree()
    c = MemoryRegion.init_container("c", 0x100)
    ram = MemoryRegion.init_ram("r", 0x40)
    c.add_subregion(0, ram)
    root.add_subregion(0x1000, c)
    window = MemoryRegion.init_alias("window", c, 0, 0x80)
    c.add_subregion(0x80, window)
    ranges = [(fr.start, fr.end, fr.mr.name, fr.offset_in_region) for fr in as_.flatview.ranges]
    assert ranges == [(0x1000, 0x1040, "r", 0), (0x1080, 0x10C0, "r", 0)]
    as_.write(0x1010, 0x5A, 1)
    assert as_.read(0x1090, 1) == (0x5A, MEMTX_OK)


@pytest.mark.parametrize("ctor", ["ram", "rom", "rom_device"])
def test_zero_size_ram_rom_refused(ctor: str) -> None:
    with pytest.raises(RegionSizeError):
        if ctor == "ram":
            MemoryRegion.init_ram("z", 0)
        elif ctor == "rom":
            MemoryRegion.init_rom("z", 0)
        else:
            MemoryRegion.init_rom_device("z", 0, Regs())


def test_zero_size_container_io_alias_allowed() -> None:
    c = MemoryRegion.init_container("c", 0)
    assert c.size == 0
    assert MemoryRegion.init_io("i", 0, Regs()).size == 0
    assert MemoryRegion.init_alias("a", c, 0, 0).size == 0


def test_size_limits() -> None:
    assert MemoryRegion.init_container("c", ADDR_SPACE_END).size == ADDR_SPACE_END
    for bad in (ADDR_SPACE_END + 1, -1):
        with pytest.raises(RegionSizeError):
            MemoryRegion.init_container("c", bad)
        with pytest.raises(RegionSizeError):
            MemoryRegion.init_io("c", bad, Regs())
        with pytest.raises(RegionSizeError):
            MemoryRegion.init_alias("a", MemoryRegion.init_container("t", 1), 0, bad)
    with pytest.raises(RegionSizeError):
        MemoryRegion.init_ram("huge", ADDR_SPACE_END)
    with pytest.raises(RegionSizeError):
        MemoryRegion.init_container("c", 1.5)  # type: ignore[arg-type]


def test_set_size_limits_and_ram_backing() -> None:
    sysmem, root, as_ = _system_tree()
    io = MemoryRegion.init_io("io", 0x10, Regs())
    root.add_subregion(0, io)
    with pytest.raises(RegionSizeError):
        io.set_size(ADDR_SPACE_END + 1)
    assert io.size == 0x10
    io.set_size(0x20)
    assert io.size == 0x20
    ram = MemoryRegion.init_ram("ram", KB)
    with pytest.raises(RegionSizeError):
        ram.set_size(2 * KB)
    with pytest.raises(RegionSizeError):
        ram.set_size(0)
    assert ram.size == KB
    ram.set_size(KB // 2)
    assert ram.size == KB // 2
    ram.close()


@pytest.mark.parametrize("prio", [2**31, -(2**31) - 1, 2**40])
def test_priority_outside_int32_refused(prio: int) -> None:
    sysmem, root, as_ = _system_tree()
    child = MemoryRegion.init_container("x", 1)
    before = _snapshot(root)
    with pytest.raises(MemoryModelError):
        root.add_subregion_overlap(0, child, prio)
    assert _snapshot(root) == before and child.container is None


@pytest.mark.parametrize("prio", [2**31 - 1, -(2**31)])
def test_priority_int32_extremes_accepted(prio: int) -> None:
    root = MemoryRegion.init_container("root", KB)
    child = MemoryRegion.init_container("x", 1)
    root.add_subregion_overlap(0, child, prio)
    assert child.priority == prio


def test_offset_outside_address_space_refused() -> None:
    root = MemoryRegion.init_container("root", KB)
    child = MemoryRegion.init_container("x", 1)
    for bad in (-1, ADDR_SPACE_END):
        with pytest.raises(MemoryModelError):
            root.add_subregion(bad, child)
    assert child.container is None
    root.add_subregion(ADDR_SPACE_END - 1, child)
    with pytest.raises(MemoryModelError):
        child.set_address(ADDR_SPACE_END)
    assert child.addr == ADDR_SPACE_END - 1


def test_regions_of_two_memory_systems_do_not_mix() -> None:
    s1, root1, as1 = _system_tree()
    s2, root2, as2 = _system_tree()
    c1 = MemoryRegion.init_container("c1", KB)
    root1.add_subregion(0, c1)
    c2 = MemoryRegion.init_container("c2", KB)
    root2.add_subregion(0, c2)
    before1, before2 = _snapshot(root1), _snapshot(root2)
    with pytest.raises(MemoryModelError):
        root2.add_subregion(0x1000, MemoryRegion.init_alias("x", c1, 0, KB))
    loose = MemoryRegion.init_container("loose", KB)
    loose.add_subregion(0, MemoryRegion.init_alias("to-c1", c1, 0, KB))
    assert loose.system is s1  # joined through its alias target
    with pytest.raises(MemoryModelError):
        root2.add_subregion(0x2000, loose)
    with pytest.raises(MemoryModelError):
        c2.add_subregion(0, c1)  # c1 has a container anyway...
    stray = MemoryRegion.init_container("stray", KB)
    root1.add_subregion(0x4000, stray)
    root1.del_subregion(stray)  # removed, but still of system 1
    assert stray.system is s1
    with pytest.raises(MemoryModelError):
        root2.add_subregion(0x4000, stray)
    assert _snapshot(root2) == before2
    assert _snapshot(root1) == before1
    with pytest.raises(MemoryModelError):
        AddressSpace(c1, "wrong", system=s2)
    assert [a.name for a in s2.address_spaces] == ["as"]


def test_joining_a_system() -> None:
    sysmem, root, as_ = _system_tree()
    sub = MemoryRegion.init_container("sub", KB)
    leaf = MemoryRegion.init_io("leaf", 1, Regs())
    target = MemoryRegion.init_container("target", KB)
    sub.add_subregion(0, leaf)
    sub.add_subregion(0x10, MemoryRegion.init_alias("al", target, 0, 1))
    assert sub.system is None and leaf.system is None
    root.add_subregion(0, sub)
    assert sub.system is sysmem and leaf.system is sysmem and target.system is sysmem
    # A loose container that receives a system region joins that system.
    loose = MemoryRegion.init_container("loose", KB)
    root.del_subregion(sub)
    loose.add_subregion(0, sub)
    assert loose.system is sysmem
    root._check_invariants()
    loose._check_invariants()


def test_setters_return_early_and_validate() -> None:
    c = MemoryRegion.init_container("c", KB)
    with pytest.raises(MemoryModelError):
        c.set_alias_offset(4)
    a = MemoryRegion.init_alias("a", c, 0, 16)
    with pytest.raises(MemoryModelError):
        a.set_alias_offset(-1)
    a.set_alias_offset(8)
    assert a.alias_offset == 8
    c.set_enabled(False)
    assert not c.enabled
    c.set_readonly(True)
    c.set_nonvolatile(True)
    assert c.readonly and c.nonvolatile


def test_repr_mentions_kind_and_state() -> None:
    c = MemoryRegion.init_container("cont", KB)
    c.set_enabled(False)
    assert "'cont'" in repr(c) and "disabled" in repr(c)
    a = MemoryRegion.init_alias("a", c, 0x10, 16)
    assert "alias @cont+0x10" in repr(a)


def test_revoke_direct_during_a_commit_serves_through_ops() -> None:
    """M11: a RAM range stops being direct at once, even inside a listener."""
    from memexpose.memory import MemoryListener

    sysmem, root, as_ = _system_tree()
    ram = MemoryRegion.init_ram("peer-ram", 0x1000)
    root.add_subregion(0x4000, ram)
    as_.write(0x4010, 0x11223344, 4)

    class Forward(MemoryRegionOps):
        def read(self, offset: int, size: int) -> int:
            return 0xA0 + (offset & 0xF)

    revoked = []

    class Revoker(MemoryListener):
        def region_add(self, section) -> None:  # type: ignore[no-untyped-def]
            if section.mr.name == "trigger" and not revoked:
                ram.revoke_direct(Forward())
                revoked.append(True)

    as_.register_listener(Revoker())
    view = as_.flatview
    root.add_subregion(0x9000, MemoryRegion.init_io("trigger", 0x10, MemoryRegionOps()))
    assert revoked
    assert as_.read(0x4013, 1) == (0xA3, MEMTX_OK)
    assert as_.flatview is not view  # the trigger's commit rendered once
    with pytest.raises(MemoryModelError):
        MemoryRegion.init_container("c", 0x10).revoke_direct(Forward())
