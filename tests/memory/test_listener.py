"""Tests for memexpose.memory.listener: the commit protocol seen by listeners."""

from __future__ import annotations

import pytest

from memexpose.errors import ListenerMutationError, MemoryModelError
from memexpose.memory import (
    ADDR_SPACE_END,
    AddressSpace,
    HostMemory,
    MemoryListener,
    MemoryRegion,
    MemoryRegionOps,
    MemoryRegionSection,
    MemorySystem,
    flatview_root,
    render_flatview,
)


class Log(MemoryListener):
    """Appends ``(name, event, as, start, last, mr, offset, ro)`` to a shared log."""

    def __init__(self, name: str, log: list, priority: int = 0) -> None:
        self.name = name
        self.log = log
        self.priority = priority

    def begin(self) -> None:
        self.log.append((self.name, "begin"))

    def commit(self) -> None:
        self.log.append((self.name, "commit"))

    def _section(self, event: str, s: MemoryRegionSection) -> None:
        self.log.append((self.name, event, s.address_space.name, s.offset_within_address_space,
                         s.end - 1, s.mr.name, s.offset_within_region,
                         "ro" if s.readonly else "rw"))

    def region_add(self, section: MemoryRegionSection) -> None:
        self._section("add", section)

    def region_del(self, section: MemoryRegionSection) -> None:
        self._section("del", section)

    def region_nop(self, section: MemoryRegionSection) -> None:
        self._section("nop", section)


def io(name: str, size: int) -> MemoryRegion:
    return MemoryRegion.init_io(name, size, MemoryRegionOps())


def setup():
    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("system", ADDR_SPACE_END)
    a = io("a", 0x100)
    b = io("b", 0x100)
    root.add_subregion(0x1000, a)
    root.add_subregion(0x2000, b)
    as_ = AddressSpace(root, "memory", system=sysmem)
    return sysmem, root, as_, a, b


def test_replay_on_register_goes_to_the_new_listener_only() -> None:
    sysmem, root, as_, a, b = setup()
    log: list = []
    old = Log("old", log)
    as_.register_listener(old)
    log.clear()
    as_.register_listener(Log("new", log, priority=5))
    assert log == [
        ("new", "begin"),
        ("new", "add", "memory", 0x1000, 0x10FF, "a", 0, "rw"),
        ("new", "add", "memory", 0x2000, 0x20FF, "b", 0, "rw"),
        ("new", "commit"),
    ]


def test_unregister_sends_region_del_then_stops() -> None:
    sysmem, root, as_, a, b = setup()
    log: list = []
    listener = Log("l", log)
    other = Log("other", log)
    as_.register_listener(listener)
    as_.register_listener(other)
    log.clear()
    as_.unregister_listener(listener)
    assert log == [
        ("l", "begin"),
        ("l", "del", "memory", 0x1000, 0x10FF, "a", 0, "rw"),
        ("l", "del", "memory", 0x2000, 0x20FF, "b", 0, "rw"),
        ("l", "commit"),
    ]
    log.clear()
    root.add_subregion(0x3000, io("c", 0x10))
    assert [e for e in log if e[0] == "l"] == []
    assert ("other", "add", "memory", 0x3000, 0x300F, "c", 0, "rw") in log


def test_register_twice_refused() -> None:
    sysmem, root, as_, a, b = setup()
    listener = Log("l", [])
    as_.register_listener(listener)
    with pytest.raises(MemoryModelError):
        as_.register_listener(listener)


def test_commit_order_across_listeners_and_address_spaces() -> None:
    sysmem, root, as1, a, b = setup()
    io_root = MemoryRegion.init_container("io", 0x10000)
    p = io("p", 0x10)
    io_root.add_subregion(0x60, p)
    as2 = AddressSpace(io_root, "I/O", system=sysmem)
    log: list = []
    l10 = Log("p10", log, 10)
    l0 = Log("p0", log, 0)
    l5a = Log("p5a", log, 5)
    l5b = Log("p5b", log, 5)  # equal priority: after p5a
    io_l = Log("io3", log, 3)
    as1.register_listener(l10)
    as1.register_listener(l0)
    as2.register_listener(io_l)
    as1.register_listener(l5a)
    as1.register_listener(l5b)
    log.clear()
    c = io("c", 0x100)
    with sysmem.transaction():
        root.del_subregion(a)  # 0x1000 goes
        root.add_subregion(0x0800, io("z", 0x10))  # below everything
        root.add_subregion(0x3000, c)
        io_root.del_subregion(p)
        io_root.add_subregion(0x70, io("q", 0x10))
    as1_order = ["p0", "p5a", "p5b", "p10"]
    expected = [(n, "begin") for n in ["p0", "io3", "p5a", "p5b", "p10"]]
    # AS "memory" (registered first): all dels (reverse order), then nop/add.
    expected += [(n, "del", "memory", 0x1000, 0x10FF, "a", 0, "rw")
                 for n in reversed(as1_order)]
    expected += [(n, "add", "memory", 0x0800, 0x080F, "z", 0, "rw") for n in as1_order]
    expected += [(n, "nop", "memory", 0x2000, 0x20FF, "b", 0, "rw") for n in as1_order]
    expected += [(n, "add", "memory", 0x3000, 0x30FF, "c", 0, "rw") for n in as1_order]
    # Then AS "I/O".
    expected += [("io3", "del", "I/O", 0x60, 0x6F, "p", 0, "rw"),
                 ("io3", "add", "I/O", 0x70, 0x7F, "q", 0, "rw")]
    expected += [(n, "commit") for n in ["p0", "io3", "p5a", "p5b", "p10"]]
    assert log == expected


def test_deletions_all_come_before_additions_in_address_order() -> None:
    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("root", 0x10000)
    regions = [io(f"r{i}", 0x10) for i in range(4)]
    for i, mr in enumerate(regions):
        root.add_subregion(i * 0x100, mr)
    as_ = AddressSpace(root, "as", system=sysmem)
    log: list = []
    as_.register_listener(Log("l", log))
    log.clear()
    with sysmem.transaction():
        regions[0].set_address(0x150)  # moves between r1 and r2
        regions[3].set_address(0x50)
    events = [(e[1], e[3]) for e in log if len(e) > 2]
    assert events == [("del", 0x000), ("del", 0x300), ("add", 0x050), ("nop", 0x100),
                      ("add", 0x150), ("nop", 0x200)]


def test_changed_attribute_is_del_plus_add_never_nop() -> None:
    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("root", 0x10000)
    with HostMemory.anonymous("b", 0x1000) as mem:
        ram = MemoryRegion.init_ram("ram", 0x100, hostmem=mem)
        root.add_subregion(0x100, ram)
        root.add_subregion(0x400, io("dev", 0x10))
        as_ = AddressSpace(root, "as", system=sysmem)
        log: list = []
        as_.register_listener(Log("l", log))
        log.clear()
        ram.set_readonly(True)
        assert log == [
            ("l", "begin"),
            ("l", "del", "as", 0x100, 0x1FF, "ram", 0, "rw"),
            ("l", "add", "as", 0x100, 0x1FF, "ram", 0, "ro"),
            ("l", "nop", "as", 0x400, 0x40F, "dev", 0, "rw"),
            ("l", "commit"),
        ]
        log.clear()
        ram.set_nonvolatile(True)
        assert [e[1] for e in log] == ["begin", "del", "add", "nop", "commit"]


def test_same_start_different_size_is_del_plus_add() -> None:
    sysmem, root, as_, a, b = setup()
    log: list = []
    as_.register_listener(Log("l", log))
    log.clear()
    a.set_size(0x80)
    assert log[1:3] == [("l", "del", "memory", 0x1000, 0x10FF, "a", 0, "rw"),
                        ("l", "add", "memory", 0x1000, 0x107F, "a", 0, "rw")]


def test_alias_offset_change_is_del_plus_add() -> None:
    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("root", 0x10000)
    target = io("t", 0x1000)
    alias = MemoryRegion.init_alias("al", target, 0x100, 0x100)
    root.add_subregion(0, alias)
    as_ = AddressSpace(root, "as", system=sysmem)
    log: list = []
    as_.register_listener(Log("l", log))
    log.clear()
    alias.set_alias_offset(0x200)
    assert log == [("l", "begin"), ("l", "del", "as", 0, 0xFF, "t", 0x100, "rw"),
                   ("l", "add", "as", 0, 0xFF, "t", 0x200, "rw"), ("l", "commit")]


def test_changing_the_map_from_a_listener_raises() -> None:
    sysmem, root, as_, a, b = setup()
    errors: list = []

    class Meddler(MemoryListener):
        def region_add(self, section):
            try:
                root.add_subregion(0x9000, io("sneaky", 0x10))
            except ListenerMutationError as exc:
                errors.append(exc)
            try:
                section.mr.set_enabled(False)
            except ListenerMutationError as exc:
                errors.append(exc)

    as_.register_listener(Meddler())  # the replay: two ranges, two tries each
    assert len(errors) == 4
    assert [fr.mr.name for fr in as_.flatview] == ["a", "b"]
    assert a.enabled and all(m.name != "sneaky" for m in root.subregions)
    root.add_subregion(0x3000, io("c", 0x10))  # nop, nop, add
    assert len(errors) == 6
    assert [fr.mr.name for fr in as_.flatview] == ["a", "b", "c"]
    assert not sysmem.in_transaction


def test_listener_mutation_error_propagates_and_leaves_the_system_usable() -> None:
    sysmem, root, as1, a, b = setup()
    other_root = MemoryRegion.init_container("other", 0x10000)
    as2 = AddressSpace(other_root, "other", system=sysmem)
    armed = [False]

    class Meddler(MemoryListener):
        def region_add(self, section):
            if armed[0]:
                b.set_enabled(False)

    as1.register_listener(Meddler())
    armed[0] = True
    with pytest.raises(ListenerMutationError):
        with sysmem.transaction():
            root.add_subregion(0x3000, io("c", 0x10))
            other_root.add_subregion(0, io("o", 0x10))
    armed[0] = False
    assert not sysmem.in_transaction and b.enabled
    # Every address space shows the tree as it is now.
    for as_ in (as1, as2):
        expected = render_flatview(flatview_root(as_.root))
        assert [(fr.start, fr.mr) for fr in as_.flatview] == [
            (fr.start, fr.mr) for fr in expected]
    root.add_subregion(0x4000, io("d", 0x10))
    assert [fr.mr.name for fr in as1.flatview] == ["a", "b", "c", "d"]


def test_destroy_sends_region_del_and_removes_the_address_space() -> None:
    sysmem, root, as_, a, b = setup()
    log: list = []
    as_.register_listener(Log("l", log))
    log.clear()
    as_.destroy()
    assert [e[1] for e in log] == ["begin", "del", "del", "commit"]
    assert as_ not in sysmem.address_spaces
    log.clear()
    root.add_subregion(0x5000, io("late", 1))
    assert log == []


def test_listener_registered_inside_a_transaction_sees_old_view_then_diff() -> None:
    sysmem, root, as_, a, b = setup()
    log: list = []
    with sysmem.transaction():
        root.del_subregion(a)
        as_.register_listener(Log("l", log))
        # Replay shows the committed view, which still has a.
        assert ("l", "add", "memory", 0x1000, 0x10FF, "a", 0, "rw") in log
        log.clear()
    assert log == [("l", "begin"), ("l", "del", "memory", 0x1000, 0x10FF, "a", 0, "rw"),
                   ("l", "nop", "memory", 0x2000, 0x20FF, "b", 0, "rw"), ("l", "commit")]


def test_section_fields() -> None:
    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("root", 0x10000)
    target = io("t", 0x1000)
    alias = MemoryRegion.init_alias("al", target, 0x300, 0x100)
    alias.set_readonly(True)
    root.add_subregion(0x8000, alias)
    as_ = AddressSpace(root, "as", system=sysmem)
    got: list[MemoryRegionSection] = []

    class Keep(MemoryListener):
        def region_add(self, section):
            got.append(section)

    as_.register_listener(Keep())
    (s,) = got
    assert s.mr is target and s.address_space is as_
    assert (s.offset_within_address_space, s.size, s.offset_within_region) == (
        0x8000, 0x100, 0x300)
    assert s.readonly and not s.nonvolatile and s.end == 0x8100
    assert s.flat_range is as_.flatview.ranges[0]
