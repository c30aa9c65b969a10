"""Tests for memexpose.memory.mtree: ``info mtree`` text per reference section 6."""

from __future__ import annotations

import pytest

from memexpose.memory import (
    ADDR_SPACE_END,
    AddressSpace,
    HostMemory,
    MemoryRegion,
    MemoryRegionOps,
    MemorySystem,
    Owner,
    UnassignedIOOps,
    format_mtree,
    normalize_blocks,
    split_blocks,
)


def io(name: str, size: int, owner: Owner | None = None) -> MemoryRegion:
    return MemoryRegion.init_io(name, size, MemoryRegionOps(), owner=owner)


@pytest.fixture
def machine():
    """A small pc-like machine; the expected texts below are derived by hand."""
    mem = HostMemory.anonymous("backing", 0x20000)
    sysmem = MemorySystem("pc")
    system = MemoryRegion.init_container("system", ADDR_SPACE_END)
    pc_ram = MemoryRegion.init_ram("pc.ram", 0x10000, hostmem=mem)
    pc_rom = MemoryRegion.init_rom("pc.rom", 0x2000, hostmem=mem, hostmem_offset=0x10000)
    pci = MemoryRegion.init_container("pci", ADDR_SPACE_END)
    dev = io("dev", 0x100, owner=Owner("dev", id="dev0"))
    pm = MemoryRegion.init_container("pm", 0x100,
                                     owner=Owner("dev", path="/machine/unattached/device[3]"))
    nv = MemoryRegion.init_ram("nv", 0x1000, hostmem=mem, hostmem_offset=0x12000)
    nv.set_nonvolatile(True)
    pam = MemoryRegion.init_alias("pam-rom", pc_ram, 0x8000, 0x1000)
    pam.set_readonly(True)
    isa_bios = MemoryRegion.init_alias("isa-bios", pc_rom, 0x1000, 0x1000)
    chain = MemoryRegion.init_alias("chain", isa_bios, 0, 0x100)

    system.add_subregion_overlap(0, pci, -1)
    system.add_subregion(0, MemoryRegion.init_alias("ram-below", pc_ram, 0, 0x8000))
    system.add_subregion_overlap(0x8000, pam, 1)
    pci.add_subregion_overlap(0xC0000, pc_rom, 1)
    pci.add_subregion(0xE0000, isa_bios)
    system.add_subregion_overlap(0x10000, dev, 1)
    pm.add_subregion(4, io("pm-cnt", 2))
    pm.add_subregion(0, io("pm-evt", 4))
    system.add_subregion(0x20000, pm)
    pm.set_enabled(False)
    system.add_subregion(0x30000, nv)
    system.add_subregion(0x40000, chain)

    io_root = MemoryRegion.init_io("io", 0x10000, UnassignedIOOps())
    rtc = io("rtc", 2)
    rtc.add_subregion(0, io("rtc-index", 1))
    io_root.add_subregion(0x70, rtc)

    AddressSpace(system, "memory", system=sysmem)
    AddressSpace(io_root, "I/O", system=sysmem)
    AddressSpace(system, "cpu-memory-0", system=sysmem)
    yield sysmem
    mem.close()


TREE = """\
address-space: cpu-memory-0
address-space: memory
  0000000000000000-ffffffffffffffff (prio 0, i/o): system
    0000000000000000-0000000000007fff (prio 0, ram): alias ram-below @pc.ram 0000000000000000-0000000000007fff
    0000000000000000-ffffffffffffffff (prio -1, i/o): pci
      00000000000c0000-00000000000c1fff (prio 1, rom): pc.rom
      00000000000e0000-00000000000e0fff (prio 0, rom): alias isa-bios @pc.rom 0000000000001000-0000000000001fff
    0000000000008000-0000000000008fff (prio 1, ram): alias pam-rom @pc.ram 0000000000008000-0000000000008fff
    0000000000010000-00000000000100ff (prio 1, i/o): dev
      0000000000020000-0000000000020003 (prio 0, i/o): pm-evt
      0000000000020004-0000000000020005 (prio 0, i/o): pm-cnt
    0000000000030000-0000000000030fff (prio 0, nv-ram): nv
    0000000000040000-00000000000400ff (prio 0, rom): alias chain @isa-bios 0000000000000000-00000000000000ff

address-space: I/O
  0000000000000000-000000000000ffff (prio 0, i/o): io
    0000000000000070-0000000000000071 (prio 0, i/o): rtc
      0000000000000070-0000000000000070 (prio 0, i/o): rtc-index

memory-region: pc.ram
  0000000000000000-000000000000ffff (prio 0, ram): pc.ram

memory-region: pc.rom
  00000000000c0000-00000000000c1fff (prio 1, rom): pc.rom

memory-region: isa-bios
  00000000000e0000-00000000000e0fff (prio 0, rom): alias isa-bios @pc.rom 0000000000001000-0000000000001fff

"""  # noqa: E501


def test_tree(machine) -> None:
    assert format_mtree(machine) == TREE


def test_tree_dash_d_shows_disabled_lines(machine) -> None:
    expected = TREE.replace(
        "    0000000000010000-00000000000100ff (prio 1, i/o): dev\n",
        "    0000000000010000-00000000000100ff (prio 1, i/o): dev\n"
        "    0000000000020000-00000000000200ff (prio 0, i/o): pm [disabled]\n")
    assert format_mtree(machine, disabled=True) == expected


def test_tree_dash_o_dash_d_owners(machine) -> None:
    text = format_mtree(machine, owner=True, disabled=True)
    lines = text.split("\n")
    unattached = " parent:{obj path=/machine/unattached}"
    assert lines[2] == ("  0000000000000000-ffffffffffffffff (prio 0, i/o): system" + unattached)
    assert ("    0000000000010000-00000000000100ff (prio 1, i/o): dev owner:{dev id=dev0}"
            in lines)
    assert ("    0000000000020000-00000000000200ff (prio 0, i/o): pm [disabled]"
            " owner:{dev path=/machine/unattached/device[3]}") in lines
    assert ("    0000000000000000-0000000000007fff (prio 0, ram): alias ram-below @pc.ram "
            "0000000000000000-0000000000007fff" + unattached) in lines
    # Every non-header line carries exactly one suffix.
    for line in lines:
        if line.startswith("  "):
            assert line.endswith(unattached) or " owner:{" in line, line


FLAT = """\
FlatView #0
 AS "memory", root: system
 AS "cpu-memory-0", root: system
 Root memory region: system
  0000000000000000-0000000000007fff (prio 0, ram): pc.ram
  0000000000008000-0000000000008fff (prio 0, rom): pc.ram @0000000000008000
  0000000000010000-00000000000100ff (prio 1, i/o): dev
  0000000000030000-0000000000030fff (prio 0, nv-ram): nv
  0000000000040000-00000000000400ff (prio 1, rom): pc.rom @0000000000001000
  00000000000c0000-00000000000c1fff (prio 1, rom): pc.rom
  00000000000e0000-00000000000e0fff (prio 1, rom): pc.rom @0000000000001000

FlatView #1
 AS "I/O", root: io
 Root memory region: io
  0000000000000000-000000000000006f (prio 0, i/o): io
  0000000000000070-0000000000000070 (prio 0, i/o): rtc-index
  0000000000000071-0000000000000071 (prio 0, i/o): rtc @0000000000000001
  0000000000000072-000000000000ffff (prio 0, i/o): io @0000000000000072

"""


def test_flat(machine) -> None:
    assert format_mtree(machine, flatview=True) == FLAT


def test_flat_with_owners(machine) -> None:
    text = format_mtree(machine, flatview=True, owner=True)
    assert "  0000000000010000-00000000000100ff (prio 1, i/o): dev owner:{dev id=dev0}\n" in text
    assert ("  0000000000008000-0000000000008fff (prio 0, rom): pc.ram @0000000000008000"
            " parent:{obj path=/machine/unattached}\n") in text


def test_flat_no_rendered_flatview_and_alias_roots(machine) -> None:
    system = next(a.root for a in machine.address_spaces if a.name == "memory")
    bm = MemoryRegion.init_container("bus master container", ADDR_SPACE_END)
    bm_alias = MemoryRegion.init_alias("bus master", system, 0, ADDR_SPACE_END)
    bm.add_subregion(0, bm_alias)
    bm_alias.set_enabled(False)
    AddressSpace(bm, "i440FX", system=machine)
    AddressSpace(bm, "PIIX3", system=machine)
    AddressSpace(MemoryRegion.init_alias("whole", system, 0, ADDR_SPACE_END), "via-alias",
                 system=machine)
    text = format_mtree(machine, flatview=True)
    blocks = split_blocks(text)
    assert blocks[0].split("\n")[:5] == [
        "FlatView #0",
        ' AS "memory", root: system',
        ' AS "cpu-memory-0", root: system',
        ' AS "via-alias", root: whole, alias system',
        " Root memory region: system",
    ]
    assert blocks[2] == ('FlatView #2\n AS "i440FX", root: bus master container\n'
                         ' AS "PIIX3", root: bus master container\n'
                         " Root memory region: (none)\n  No rendered FlatView")
    assert text.endswith("  No rendered FlatView\n\n")
    # Tree: the disabled alias is hidden but its target still gets a block.
    tree = format_mtree(machine)
    assert ("address-space: PIIX3\naddress-space: i440FX\n"
            "  0000000000000000-ffffffffffffffff (prio 0, i/o): bus master container\n\n"
            ) in tree
    assert "\nmemory-region: system\n" in tree
    tree_d = format_mtree(machine, disabled=True)
    assert ("    0000000000000000-ffffffffffffffff (prio 0, i/o): alias bus master @system "
            "0000000000000000-ffffffffffffffff [disabled]\n") in tree_d


def test_children_order_addr_then_priority_then_newest() -> None:
    root = MemoryRegion.init_container("root", 0x1000)
    for name, addr, prio in [("b0", 0x10, 0), ("a", 0x0, -1), ("b1", 0x10, 2), ("b2", 0x10, 0),
                             ("c", 0x8, 5)]:
        root.add_subregion_overlap(addr, io(name, 1), prio)
    as_ = AddressSpace(root, "as")
    names = [line.rsplit(": ", 1)[1] for line in format_mtree([as_]).split("\n")[2:-2]]
    assert names == ["a", "c", "b1", "b2", "b0"]


def test_dispatch_section_list() -> None:
    root = MemoryRegion.init_container("root", 0x1000)
    root.add_subregion(0x100, io("x", 0x10))
    as_ = AddressSpace(root, "as")
    text = format_mtree([as_], flatview=True, dispatch=True)
    assert "  Dispatch\n    Physical sections\n" in text
    assert "      #1 @0000000000000100..000000000000010f x [not dirty]\n" in text


def test_zero_size_and_overflow_lines() -> None:
    root = MemoryRegion.init_container("root", ADDR_SPACE_END)
    root.add_subregion(0x10, io("empty", 0))
    root.add_subregion(0xFFFFFFFFFFFFF000, io("wrap", 0x2000))
    as_ = AddressSpace(root, "as")
    lines = format_mtree([as_]).split("\n")
    assert "    0000000000000010-0000000000000010 (prio 0, i/o): empty" in lines
    assert ("[DETECTED OVERFLOW!]     fffffffffffff000-0000000000000fff (prio 0, i/o): wrap"
            in lines)


def test_split_and_normalize_blocks() -> None:
    a = "FlatView #0\n AS \"b\", root: r\n AS \"a\", root: r\n Root memory region: r\n\n"
    b = "FlatView #1\n AS \"x\", root: y\n Root memory region: (none)\n  No rendered FlatView\n\n"
    assert split_blocks((a + b).replace("\n", "\r\n")) == [a.strip("\n"), b.strip("\n")]
    assert normalize_blocks(a + b) == normalize_blocks(
        b.replace("#1", "#0") + a.replace("#0", "#1"))
    assert normalize_blocks(a)[0].split("\n")[:2] == [' AS "a", root: r', ' AS "b", root: r']


def test_empty_system_prints_nothing() -> None:
    assert format_mtree(MemorySystem("m")) == ""
    assert format_mtree(MemorySystem("m"), flatview=True) == ""
