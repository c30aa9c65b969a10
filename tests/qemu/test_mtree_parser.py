"""Tests for memexpose.qemu.mtree: ``info mtree`` text back into a memory model.

Most tests build a model with the memory API, print it as QEMU would
(``-o -D`` tree and ``-f -o`` flat), parse that back and check both the
rebuilt objects and that the rebuilt model prints the same text. Hand-written
text covers the malformed cases.
"""

from __future__ import annotations

import pytest

from memexpose.errors import MtreeParseError
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
)
from memexpose.qemu import (
    ParsedMtree,
    diff_mtree,
    parse_flat_hints,
    parse_mtree,
    render_qemu_flat,
    render_qemu_tree,
)

KB = 0x400
DEV = Owner("dev", path="/machine/unattached/device[4]")


def io(name: str, size: int, owner: Owner | None = None) -> MemoryRegion:
    return MemoryRegion.init_io(name, size, MemoryRegionOps(), owner=owner)


def container(name: str, size: int = ADDR_SPACE_END, owner: Owner | None = None
              ) -> MemoryRegion:
    return MemoryRegion.init_container(name, size, owner=owner)


@pytest.fixture
def backing():
    mem = HostMemory.anonymous("test-backing", 0x100000)
    yield mem
    mem.close()


def texts(system: MemorySystem) -> tuple[str, str]:
    """QEMU's view of a model: (``info mtree -o -D``, ``info mtree -f -o``)."""
    return (format_mtree(system, owner=True, disabled=True),
            format_mtree(system, flatview=True, owner=True))


def roundtrip(system: MemorySystem) -> ParsedMtree:
    """Parse a model's own text back; assert the rebuilt model prints the same."""
    tree, flat = texts(system)
    parsed = parse_mtree(tree, flat)
    assert diff_mtree(parsed.format_flat(owner=True), flat) == ""
    assert diff_mtree(parsed.format_flat(owner=False),
                      format_mtree(system, flatview=True)) == ""
    assert diff_mtree(parsed.format_tree(), tree) == ""
    assert parsed.flat_mismatch == 0
    return parsed


def one_root(*children: tuple[int, MemoryRegion, int], name: str = "memory"
             ) -> tuple[MemorySystem, MemoryRegion]:
    system = MemorySystem("t")
    root = container("system")
    for addr, mr, prio in children:
        root.add_subregion_overlap(addr, mr, prio)
    AddressSpace(root, name, system=system)
    return system, root


def only(parsed: ParsedMtree, name: str) -> MemoryRegion:
    found = parsed.regions_named(name)
    assert len(found) == 1, found
    return found[0]


# -- owners ---------------------------------------------------------------------


def test_owners_parents_and_orphans(backing: HostMemory) -> None:
    by_id = io("by-id", 0x10, owner=Owner("dev", id="edu0"))
    by_path = io("by-path", 0x10, owner=DEV)
    same_dev = io("same-dev", 0x10, owner=DEV)
    obj = MemoryRegion.init_ram("obj-ram", 0x1000, hostmem=backing,
                                owner=Owner("obj", path="/objects/mem1"))
    typed = io("typed", 0x10, owner=Owner("obj", type_name="some-type"))
    parent_only = io("parent-only", 0x10)  # QEMU: parent:{obj path=/machine/unattached}
    both = io("both", 0x10, owner=DEV)
    both.parent_object = Owner("obj", path="/machine/peripheral-anon")
    orphan = io("orphan", 0x10)
    orphan.parent_object = None
    system, _ = one_root(*((0x1000 * i, mr, 0) for i, mr in enumerate(
        (by_id, by_path, same_dev, obj, typed, parent_only, both, orphan), start=1)))
    tree, _ = texts(system)
    assert "owner:{dev id=edu0}" in tree and " orphan" in tree
    assert "parent:{obj path=/machine/unattached}" in tree
    with roundtrip(system) as parsed:
        assert only(parsed, "by-id").owner == Owner("dev", id="edu0")
        assert only(parsed, "by-path").owner == DEV
        # One Owner object per device: it carries the device's re-entrancy guard.
        assert only(parsed, "by-path").owner is only(parsed, "same-dev").owner
        assert only(parsed, "obj-ram").owner == Owner("obj", path="/objects/mem1")
        assert only(parsed, "typed").owner == Owner("obj", type_name="some-type")
        assert only(parsed, "parent-only").owner is None
        assert only(parsed, "parent-only").parent_object == Owner.UNATTACHED
        assert only(parsed, "both").parent_object == Owner("obj", path="/machine/peripheral-anon")
        assert only(parsed, "orphan").owner is None
        assert only(parsed, "orphan").parent_object is None


# -- kinds, flags, numbers ------------------------------------------------------------


def test_kinds_flags_and_signed_priorities(backing: HostMemory) -> None:
    ram = MemoryRegion.init_ram("ram", 0x2000, hostmem=backing)
    rom = MemoryRegion.init_rom("rom", 0x1000, hostmem=backing)
    flash = MemoryRegion.init_rom_device("flash", 0x1000, MemoryRegionOps(), hostmem=backing)
    nvram = MemoryRegion.init_ram("nvram", 0x1000, hostmem=backing)
    nvram.set_nonvolatile(True)
    low = io("lowest", 0x10)
    high = io("highest", 0x10)
    system, _ = one_root((0, ram, 0), (0x10000, rom, 4096), (0x20000, flash, -1),
                         (0x30000, nvram, 0), (0x40000, low, -(2**31)),
                         (0x50000, high, 2**31 - 1))
    tree, flat = texts(system)
    assert "(prio 0, nv-ram): nvram" in tree and "(prio -1, romd): flash" in tree
    with roundtrip(system) as parsed:
        assert only(parsed, "ram").ram and not only(parsed, "ram").readonly
        assert only(parsed, "rom").is_rom
        assert only(parsed, "flash").is_romd
        assert only(parsed, "nvram").nonvolatile
        assert only(parsed, "lowest").priority == -(2**31)
        assert only(parsed, "highest").priority == 2**31 - 1
        # All RAM shares one lazily mapped backing, sized for the largest.
        assert parsed.hostmem is not None and parsed.hostmem.size == 0x2000
        assert only(parsed, "rom").hostmem is parsed.hostmem
    assert parsed.hostmem.closed


def test_size_2_64_and_the_top_of_the_space() -> None:
    top = io("top", 0x1000)
    system, root = one_root((ADDR_SPACE_END - 0x1000, top, 0))
    tree, _ = texts(system)
    assert "0000000000000000-ffffffffffffffff (prio 0, i/o): system" in tree
    assert "fffffffffffff000-ffffffffffffffff (prio 0, i/o): top" in tree
    with roundtrip(system) as parsed:
        assert parsed.address_space("memory").root.size == ADDR_SPACE_END
        assert only(parsed, "top").addr == ADDR_SPACE_END - 0x1000


def test_detected_overflow_prefix_parses() -> None:
    """A child past the end of a region at the top wraps; QEMU flags the line."""
    high = container("high", 0x1000)
    high.add_subregion(0x2000, io("wrapped", 0x10))
    system, _ = one_root((ADDR_SPACE_END - 0x1000, high, 0))
    tree, _ = texts(system)
    assert "[DETECTED OVERFLOW!]" in tree
    with roundtrip(system) as parsed:
        assert only(parsed, "wrapped").addr == 0x2000
        assert only(parsed, "wrapped").container is only(parsed, "high")


def test_disabled_regions_keep_their_children() -> None:
    pm = container("pm", 0x40, owner=DEV)
    pm.add_subregion(0, io("evt", 4, owner=DEV))
    pm.add_subregion(4, io("cnt", 2, owner=DEV))
    pm.set_enabled(False)
    system, _ = one_root((0, pm, 0), (0, io("dma", 8), 0))
    with roundtrip(system) as parsed:
        assert not only(parsed, "pm").enabled
        assert {c.name for c in only(parsed, "pm").subregions} == {"evt", "cnt"}


# -- aliases and unification ----------------------------------------------------------


def test_aliases_chains_and_names_with_spaces(backing: HostMemory) -> None:
    ram = MemoryRegion.init_ram("pc ram", 0x10000, hostmem=backing)
    below = MemoryRegion.init_alias("ram @ below", ram, 0, 0x8000)
    window = MemoryRegion.init_alias("window", ram, 0x8000, 0x4000)
    chain = MemoryRegion.init_alias("chain", window, 0x1000, 0x1000)
    system, root = one_root((0, below, 0), (0x100000, window, 1), (0x200000, chain, 0))
    bm_root = container("bus master container", owner=DEV)
    bus_master = MemoryRegion.init_alias("bus master", root, 0, ADDR_SPACE_END, owner=DEV)
    bm_root.add_subregion(0, bus_master)
    bus_master.set_enabled(False)
    AddressSpace(bm_root, "pci-dev", system=system)
    with roundtrip(system) as parsed:
        p_ram = only(parsed, "pc ram")
        assert only(parsed, "ram @ below").alias_target is p_ram
        assert only(parsed, "window").alias_offset == 0x8000
        assert only(parsed, "chain").alias_target is only(parsed, "window")
        assert only(parsed, "chain").alias_offset == 0x1000
        # "system" is printed twice (address-space root, alias target): one region.
        assert only(parsed, "bus master").alias_target is parsed.address_space("memory").root
        assert not only(parsed, "bus master").enabled


def test_address_space_root_inside_another_tree_is_one_region() -> None:
    pci_io = container("pci-io", 0x10000, owner=DEV)
    pci_io.add_subregion(0x70, io("rtc", 2))
    system, root = one_root((0x80000000, pci_io, 0))
    AddressSpace(pci_io, "raven-io", system=system)
    with roundtrip(system) as parsed:
        io_root = parsed.address_space("raven-io").root
        assert io_root is only(parsed, "pci-io")
        assert io_root.container is parsed.address_space("memory").root
        assert io_root.addr == 0x80000000


def test_alias_target_outside_any_address_space_keeps_its_addr(backing: HostMemory) -> None:
    bios = MemoryRegion.init_rom("bios", 0x40000, hostmem=backing)
    hidden = container("hidden", 0x100000)
    hidden.add_subregion(0xC0000, bios)  # hidden is mapped nowhere
    system, _ = one_root((0xE0000, MemoryRegion.init_alias("isa-bios", bios, 0x20000,
                                                            0x20000), 1))
    with roundtrip(system) as parsed:
        assert only(parsed, "bios").addr == 0xC0000


# -- the hints --------------------------------------------------------------------


def test_terminates_hint_tells_mmio_from_containers() -> None:
    port_io = MemoryRegion.init_io("io", 0x10000, UnassignedIOOps())
    rtc = io("rtc", 2, owner=DEV)
    rtc.add_subregion(0, io("rtc-index", 1, owner=DEV))
    port_io.add_subregion(0x70, rtc)
    port_io.add_subregion(0x1000, container("empty bus", 0x100))
    system = MemorySystem("t")
    AddressSpace(port_io, "I/O", system=system)
    with roundtrip(system) as parsed:
        assert parsed.address_space("I/O").root.terminates  # own ops fill the gaps
        assert only(parsed, "rtc").terminates
        assert not only(parsed, "empty bus").terminates
    # Without hints: leaves are MMIO and parents containers (wrong for io and rtc).
    tree, flat = texts(system)
    with parse_mtree(tree, None) as guessed:
        assert not guessed.address_space("I/O").root.terminates
        assert only(guessed, "empty bus").terminates
        assert diff_mtree(guessed.format_flat(owner=True), flat) != ""


def test_terminates_hint_with_a_container_and_mmio_of_one_name_and_owner() -> None:
    outer = container("usb", 0x10000, owner=DEV)
    outer.add_subregion(0, io("xhci", 0x4000))
    outer.add_subregion(0xC100, io("usb", 0x534, owner=DEV))
    system, _ = one_root((0xFE200000, outer, 0))
    with roundtrip(system) as parsed:
        inner, = [mr for mr in parsed.regions_named("usb") if mr.size == 0x534]
        box, = [mr for mr in parsed.regions_named("usb") if mr.size == 0x10000]
        assert inner.terminates and not box.terminates


def test_same_address_siblings_keep_their_order() -> None:
    """The tree prints same-address, same-priority siblings newest first."""
    system, root = one_root()
    for name in ("pam-ram", "pam-pci", "pam-rom", "pam-last"):
        root.add_subregion_overlap(0xC0000, io(name, 0x4000), 1)
    with roundtrip(system) as parsed:
        subs = parsed.address_space("memory").root.subregions
        assert [mr.name for mr in subs] == ["pam-last", "pam-rom", "pam-pci", "pam-ram"]


def test_overlap_at_different_addresses_assumes_ascending_insertion() -> None:
    system, root = one_root()
    root.add_subregion(0x487, io("pageh-a", 3))
    root.add_subregion(0x489, io("pageh-b", 3))  # newer: wins 0x489
    with roundtrip(system) as parsed:
        assert parsed.notes == []


def test_overlap_in_the_other_order_is_repaired_from_the_flat_view() -> None:
    system, root = one_root()
    root.add_subregion(0x489, io("pageh-b", 3))
    root.add_subregion(0x487, io("pageh-a", 3))  # newer: wins 0x489
    with roundtrip(system) as parsed:
        assert len(parsed.notes) == 1 and parsed.notes[0].startswith("H5 order: pageh-a")


def test_readonly_alias_is_inferred_from_flat_rom(backing: HostMemory) -> None:
    ram = MemoryRegion.init_ram("pc.ram", 0x100000, hostmem=backing)
    system, _ = one_root((0, MemoryRegion.init_alias("ram-below", ram, 0, 0x100000), 0))
    root = system.address_spaces[0].root
    for addr in range(0xC0000, 0x100000, 0x4000):
        for name in ("pam-ram", "pam-rom"):
            pam = MemoryRegion.init_alias(name, ram, addr, 0x4000, owner=DEV)
            root.add_subregion_overlap(addr, pam, 1)
            if name == "pam-rom":
                pam.set_readonly(True)
            if (addr // 0x4000) % 2 == (name == "pam-rom"):
                pam.set_enabled(False)
    with roundtrip(system) as parsed:
        marked = [mr for mr in parsed.regions if mr.readonly and mr.is_alias]
        assert marked and all(mr.name == "pam-rom" and mr.enabled for mr in marked)
        assert len(parsed.notes) == len(marked)


def test_size_zero_is_inferred_when_the_flat_view_proves_it(backing: HostMemory) -> None:
    ram = MemoryRegion.init_ram("ram", 0x1000, hostmem=backing)
    empty = MemoryRegion.init_alias("empty", ram, 0x10, 0)  # prints X-X like size 1
    system, _ = one_root((0x1000, ram, 0), (0x10, empty, 0),
                         (0x20, MemoryRegion.init_alias("one", ram, 0x20, 1), 0))
    tree, _ = texts(system)
    assert "0000000000000010-0000000000000010 (prio 0, ram): alias empty" in tree
    with roundtrip(system) as parsed:
        assert only(parsed, "empty").size == 0
        assert only(parsed, "one").size == 1
        assert parsed.notes == ["H4 size 0: empty at line 3"]


def test_size_zero_that_changes_nothing_stays_one() -> None:
    empty = container("empty", 0)
    empty.add_subregion(0, io("clipped", 1))  # hidden either way
    system, _ = one_root((0x10, empty, 0))
    with roundtrip(system) as parsed:
        assert only(parsed, "empty").size == 1 and parsed.notes == []


def test_address_space_order_and_duplicate_names() -> None:
    system = MemorySystem("t")
    roots = []
    for n in range(3):
        root = io("blocked-io", 0x1000 * (n + 1), owner=Owner("dev", path=f"/machine/mpc{n}"))
        roots.append(root)
        AddressSpace(root, "blocked-io", system=system)
    AddressSpace(container("system"), "memory", system=system)
    with roundtrip(system) as parsed:
        assert [a.name for a in parsed.address_spaces] == ["blocked-io"] * 3 + ["memory"]
        assert [a.root.size for a in parsed.address_spaces[:3]] == [0x1000, 0x2000, 0x3000]


def test_crlf_text_and_render_helpers() -> None:
    system, _ = one_root((0x1000, io("dev", 0x10, owner=DEV), 0))
    tree, flat = texts(system)
    crlf = render_qemu_flat(tree.replace("\n", "\r\n"), flat.replace("\n", "\r\n"), owner=True)
    assert diff_mtree(crlf, flat) == ""
    assert diff_mtree(render_qemu_flat(tree, flat), format_mtree(system, flatview=True)) == ""
    assert diff_mtree(render_qemu_tree(tree, flat), tree) == ""


def test_flat_hints_parse() -> None:
    hints = parse_flat_hints(
        "FlatView #0\r\n"
        ' AS "memory", root: system\r\n'
        ' AS "cpu-memory-0", root: system\r\n'
        " Root memory region: system\r\n"
        "  0000000000000000-00000000000bffff (prio 0, ram): pc.ram owner:{obj path=/o/pc.ram}\r\n"
        "  00000000000e0000-00000000000fffff (prio 0, rom): pc.bios @0000000000020000 "
        "parent:{obj path=/machine/unattached}\r\n"
        "  Dispatch\r\n"
        "    Physical sections\r\n"
        "\r\n"
        "FlatView #1\r\n"
        ' AS "I440FX", root: bus master container, alias system\r\n'
        " Root memory region: (none)\r\n"
        "  No rendered FlatView\r\n")
    assert [(s.name, s.root) for s in hints.spaces] == [
        ("memory", "system"), ("cpu-memory-0", "system"), ("I440FX", "bus master container")]
    bios = hints.spaces[0].ranges[1]
    assert (bios.start, bios.end, bios.kind, bios.name, bios.offset) == (
        0xE0000, 0x100000, "rom", "pc.bios", 0x20000)
    assert bios.owner_text == " parent:{obj path=/machine/unattached}"
    assert hints.has_owners and hints.spaces[2].ranges == ()


# -- malformed input ----------------------------------------------------------------

GOOD = ("address-space: memory\n"
        "  0000000000000000-ffffffffffffffff (prio 0, i/o): system\n"
        "    0000000000001000-0000000000001fff (prio 0, ram): alias a @r "
        "0000000000000000-0000000000000fff\n"
        "\n"
        "memory-region: r\n"
        "  0000000000000000-0000000000000fff (prio 0, ram): r\n"
        "\n")


def test_good_hand_written_text_parses() -> None:
    with parse_mtree(GOOD) as parsed:
        assert only(parsed, "a").alias_target is only(parsed, "r")


@pytest.mark.parametrize(("bad", "line", "words"), [
    (GOOD.replace("(prio 0, i/o): system", "(prio zero, i/o): system"), 2, "not a region line"),
    (GOOD.replace("(prio 0, i/o): system", "(prio 2147483648, i/o): system"), 2, "signed 32"),
    (GOOD.replace("    0000000000001000", "      0000000000001000"), 3, "skips a level"),
    (GOOD.replace(" @r ", " @nowhere "), 3, "no 'memory-region:' block"),
    (GOOD.replace("0000000000000000-0000000000000fff\n\nmem",
                  "0000000000000000-0000000000000ffe\n\nmem"), 3, "differ in size"),
    (GOOD.replace("ram): r\n", "ramd): r\n"), 6, "ramd"),
    (GOOD.replace("ram): alias a @r", "ram): alias a r"), 3, "alias line without"),
    ("  0000000000000000-ffffffffffffffff (prio 0, i/o): system\n", 1, "outside a block"),
    ("address-space: memory\n\n", 1, "no region line"),
    (GOOD.replace("memory-region: r\n", "memory-region: r\nmemory-region: s\n"), 6,
     "header inside a block"),
    (GOOD + "address-space: x\n  0000000000000000-0000000000000fff (prio 0, i/o): x\n"
     "  0000000000000000-0000000000000fff (prio 0, i/o): y\n", 10, "second top-level"),
    (GOOD.replace("(prio 0, ram): r\n", "(prio 0, ram): r\n"
                  "    0000000000000000-0000000000000fff (prio 0, i/o): alias loop @r "
                  "0000000000000000-0000000000000fff\n"), 7, "memory model refuses"),
    ("address-space: memory\n"
     "  0000000000000000-ffffffffffffffff (prio 0, ram): huge\n", 2, "2**64"),
])
def test_malformed_tree_names_the_line(bad: str, line: int, words: str) -> None:
    with pytest.raises(MtreeParseError) as info:
        parse_mtree(bad).close()
    assert info.value.line_number == line
    assert f"line {line}:" in str(info.value) and words in str(info.value)
    assert repr(bad.split("\n")[line - 1]) in str(info.value)


def test_empty_tree_is_refused() -> None:
    with pytest.raises(MtreeParseError, match="no address-space block"):
        parse_mtree("\n\n")


def test_malformed_hints_name_the_line() -> None:
    flat = 'FlatView #0\n AS "memory", root: system\n  garbage\n'
    with pytest.raises(MtreeParseError) as info:
        parse_mtree(GOOD, flat)
    assert info.value.line_number == 3 and "'  garbage'" in str(info.value)
