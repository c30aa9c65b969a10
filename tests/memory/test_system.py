"""Tests for memexpose.memory.system: transactions, rendering, pending rules."""

from __future__ import annotations

import threading

import pytest

from memexpose.errors import MemoryModelError
from memexpose.memory import (
    ADDR_SPACE_END,
    AddressSpace,
    MemoryListener,
    MemoryRegion,
    MemoryRegionOps,
    MemorySystem,
)


def io(name: str, size: int) -> MemoryRegion:
    return MemoryRegion.init_io(name, size, MemoryRegionOps())


class Counter(MemoryListener):
    def __init__(self) -> None:
        self.events: list[str] = []

    def begin(self) -> None:
        self.events.append("begin")

    def commit(self) -> None:
        self.events.append("commit")


def setup():
    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("system", ADDR_SPACE_END)
    as_ = AddressSpace(root, "memory", system=sysmem)
    listener = Counter()
    as_.register_listener(listener)
    listener.events.clear()
    return sysmem, root, as_, listener


def test_address_space_renders_at_once_without_listener_calls() -> None:
    sysmem = MemorySystem("m")
    root = MemoryRegion.init_container("system", ADDR_SPACE_END)
    root.add_subregion(0, io("a", 0x10))
    other = MemoryRegion.init_container("other", 0x100)
    as0 = AddressSpace(other, "other", system=sysmem)
    listener = Counter()
    as0.register_listener(listener)
    listener.events.clear()
    assert sysmem.renders == 1
    as1 = AddressSpace(root, "memory", system=sysmem)
    assert [fr.mr.name for fr in as1.flatview] == ["a"]
    assert sysmem.renders == 2 and listener.events == []
    as2 = AddressSpace(root, "cpu-memory-0", system=sysmem)
    assert as2.flatview is as1.flatview and sysmem.renders == 2  # shared, not re-rendered
    assert sysmem.address_spaces == (as0, as1, as2)


def test_address_space_without_system_gets_its_roots_or_a_new_one() -> None:
    root = MemoryRegion.init_container("r", 0x100)
    as1 = AddressSpace(root, "one")
    assert root.system is as1.system
    as2 = AddressSpace(root, "two")
    assert as2.system is as1.system
    assert AddressSpace(None, "none").system is not as1.system


def test_nested_transactions_render_once() -> None:
    sysmem, root, as_, listener = setup()
    renders = sysmem.renders
    view = as_.flatview
    with sysmem.transaction():
        root.add_subregion(0x1000, io("a", 0x10))
        with as_.transaction():
            root.add_subregion(0x2000, io("b", 0x10))
            with sysmem.transaction():
                root.add_subregion(0x3000, io("c", 0x10))
        assert sysmem.in_transaction
        assert as_.flatview is view and sysmem.renders == renders  # deferred
    assert not sysmem.in_transaction
    assert sysmem.renders == renders + 1
    assert [fr.mr.name for fr in as_.flatview] == ["a", "b", "c"]
    assert listener.events == ["begin", "commit"]


def test_each_mutation_outside_a_transaction_commits_at_once() -> None:
    sysmem, root, as_, listener = setup()
    renders = sysmem.renders
    a = io("a", 0x10)
    root.add_subregion(0x1000, a)
    assert [fr.mr.name for fr in as_.flatview] == ["a"]
    a.set_address(0x2000)  # delete + add, one transaction
    assert as_.flatview.ranges[0].start == 0x2000
    assert sysmem.renders == renders + 2
    assert listener.events == ["begin", "commit"] * 2


def test_one_render_per_distinct_flatview_root() -> None:
    sysmem, root, as_, listener = setup()
    AddressSpace(root, "cpu-memory-0", system=sysmem)
    io_root = MemoryRegion.init_container("io", 0x10000)
    io_root.add_subregion(0, io("p", 1))
    io_root.add_subregion(4, io("q", 1))
    AddressSpace(io_root, "I/O", system=sysmem)
    renders = sysmem.renders
    root.add_subregion(0, io("x", 1))
    assert sysmem.renders == renders + 2  # every view is rebuilt, once per root


def test_empty_transaction_does_nothing() -> None:
    sysmem, root, as_, listener = setup()
    renders = sysmem.renders
    view = as_.flatview
    with sysmem.transaction():
        pass
    assert sysmem.renders == renders and as_.flatview is view and listener.events == []


def test_begin_commit_pairs_and_unbalanced_commit() -> None:
    sysmem, root, as_, listener = setup()
    sysmem.begin()
    sysmem.begin()
    root.add_subregion(0, io("a", 1))
    sysmem.commit()
    assert listener.events == []
    sysmem.commit()
    assert listener.events == ["begin", "commit"]
    with pytest.raises(MemoryModelError):
        sysmem.commit()


def test_transaction_commits_even_when_the_block_raises() -> None:
    sysmem, root, as_, listener = setup()
    with pytest.raises(RuntimeError):
        with sysmem.transaction():
            root.add_subregion(0, io("a", 1))
            raise RuntimeError("boom")
    assert not sysmem.in_transaction
    assert [fr.mr.name for fr in as_.flatview] == ["a"]


def test_transaction_holds_the_machine_lock() -> None:
    lock = threading.RLock()
    sysmem = MemorySystem("m", lock=lock)
    AddressSpace(MemoryRegion.init_container("r", 1), "as", system=sysmem)
    got: list[bool] = []

    def try_lock() -> None:
        ok = lock.acquire(blocking=False)
        got.append(ok)
        if ok:
            lock.release()

    with sysmem.transaction():
        t = threading.Thread(target=try_lock)
        t.start()
        t.join()
    t = threading.Thread(target=try_lock)
    t.start()
    t.join()
    assert got == [False, True]


# -- "pending" rules (reference 5.1) -------------------------------------------------


def test_adding_a_disabled_child_does_not_render() -> None:
    sysmem, root, as_, listener = setup()
    renders = sysmem.renders
    child = io("off", 0x10)
    child.set_enabled(False)
    root.add_subregion(0, child)
    root.del_subregion(child)
    assert sysmem.renders == renders and listener.events == []
    root.add_subregion(0, child)
    child.set_enabled(True)  # set_enabled always renders
    assert sysmem.renders == renders + 1 and [fr.mr.name for fr in as_.flatview] == ["off"]


def test_adding_to_a_disabled_container_does_not_render() -> None:
    sysmem, root, as_, listener = setup()
    c = MemoryRegion.init_container("c", 0x1000)
    root.add_subregion(0, c)
    c.set_enabled(False)
    renders = sysmem.renders
    c.add_subregion(0, io("x", 1))
    assert sysmem.renders == renders
    # Only the direct container's flag counts: a child of an enabled
    # container under the disabled one still renders.
    inner = MemoryRegion.init_container("inner", 0x100)
    c.del_subregion(c.subregions[0])
    c.add_subregion(0, inner)  # c disabled: no render
    assert sysmem.renders == renders
    inner.add_subregion(0, io("y", 1))
    assert sysmem.renders == renders + 1
    assert as_.flatview.ranges == []


def test_setters_on_disabled_regions_do_not_render_but_enable_and_size_do() -> None:
    sysmem, root, as_, listener = setup()
    t = io("t", 0x100)
    alias = MemoryRegion.init_alias("al", t, 0, 0x100)
    flash = MemoryRegion.init_rom_device("flash", 0x100, MemoryRegionOps())
    for mr in (t, alias, flash):
        root.add_subregion(0, mr)
        mr.set_enabled(False)
    renders = sysmem.renders
    t.set_readonly(True)
    t.set_nonvolatile(True)
    alias.set_alias_offset(0x10)
    flash.rom_device_set_romd(False)
    assert sysmem.renders == renders
    t.set_size(0x80)  # set_size always renders
    assert sysmem.renders == renders + 1
    t.set_enabled(True)
    assert sysmem.renders == renders + 2
    t.set_readonly(False)
    assert sysmem.renders == renders + 3


def test_unchanged_values_do_not_render() -> None:
    sysmem, root, as_, listener = setup()
    a = io("a", 0x100)
    root.add_subregion(0x100, a)
    renders = sysmem.renders
    listener.events.clear()
    a.set_enabled(True)
    a.set_readonly(False)
    a.set_nonvolatile(False)
    a.set_size(0x100)
    a.set_address(0x100)
    assert sysmem.renders == renders and listener.events == []


def test_change_to_an_unreachable_region_of_the_system_still_renders() -> None:
    sysmem, root, as_, listener = setup()
    stray = MemoryRegion.init_container("stray", 0x100)
    root.add_subregion(0, stray)
    root.del_subregion(stray)
    renders = sysmem.renders
    stray.add_subregion(0, io("x", 1))
    assert sysmem.renders == renders + 1  # QEMU re-renders everything
    assert listener.events[-2:] == ["begin", "commit"]


def test_address_space_created_inside_a_transaction() -> None:
    sysmem, root, as_, listener = setup()
    with sysmem.transaction():
        root.add_subregion(0, io("a", 1))
        as2 = AddressSpace(root, "late", system=sysmem)
        assert [fr.mr.name for fr in as2.flatview] == ["a"]
        assert [fr.mr.name for fr in as_.flatview] == []
    assert as2.flatview is as_.flatview


def test_repr() -> None:
    sysmem, root, as_, listener = setup()
    assert "'m'" in repr(sysmem) and "depth=0" in repr(sysmem)
