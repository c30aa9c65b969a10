"""Memory listeners: how CPUs, PCI users and links follow the memory map.

A listener is registered on one address space. At every outermost commit
that changed the topology, all listeners get ``begin`` (ascending
priority); then, per address space in registration order, its listeners get
``region_del`` for ranges that went or changed (descending priority), then
``region_nop``/``region_add`` (ascending priority), both in address order;
finally all get ``commit`` (ascending). Registering replays the current map
as ``begin``, ``region_add``..., ``commit``; unregistering sends
``region_del`` for every range the same way.

Listener callbacks run with the machine lock held and must not change the
memory map (``ListenerMutationError``); defer such work to a safe point.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memexpose.memory.addrspace import AddressSpace
    from memexpose.memory.flatview import FlatRange, FlatView
    from memexpose.memory.region import MemoryRegion

__all__ = ["MemoryListener", "MemoryRegionSection"]


@dataclass(frozen=True, slots=True)
class MemoryRegionSection:
    """A part of a region as it appears in an address space (QEMU's section).

    Attributes:
        mr: the region.
        address_space: the address space it appears in.
        offset_within_region: offset in ``mr`` of the first byte.
        size: bytes (may be 2**64).
        offset_within_address_space: absolute address of the first byte.
        readonly, nonvolatile: flags inherited along the path.
        flat_range: the flat range this section comes from.
    """

    mr: MemoryRegion
    address_space: AddressSpace
    offset_within_region: int
    size: int
    offset_within_address_space: int
    readonly: bool
    nonvolatile: bool
    flat_range: FlatRange

    @classmethod
    def from_flat_range(cls, fr: FlatRange, as_: AddressSpace) -> MemoryRegionSection:
        """Return the section that covers all of ``fr``."""
        return cls(fr.mr, as_, fr.offset_in_region, fr.size, fr.start, fr.readonly,
                   fr.nonvolatile, fr)

    @property
    def end(self) -> int:
        """One past the last absolute address."""
        return self.offset_within_address_space + self.size

    def __repr__(self) -> str:
        return (f"<Section {self.mr.name} {self.offset_within_address_space:#x}+{self.size:#x}"
                f" @{self.offset_within_region:#x}{' ro' if self.readonly else ''}>")


class MemoryListener:
    """Base class with no-op hooks; override the ones you need.

    ``priority`` orders listeners (ascending for begin/add/nop/commit,
    descending for del). Equal priorities keep registration order.
    """

    priority: int = 0

    def begin(self) -> None:
        """A topology update starts (called on every listener of the system)."""

    def region_add(self, section: MemoryRegionSection) -> None:
        """A range appeared, or changed (it was first reported deleted)."""

    def region_del(self, section: MemoryRegionSection) -> None:
        """A range went away, or changed (it will be reported added)."""

    def region_nop(self, section: MemoryRegionSection) -> None:
        """A range is unchanged by this update."""

    def commit(self) -> None:
        """The topology update is complete (called on every listener)."""


def diff_views(old: FlatView, new: FlatView, as_: AddressSpace,
               listeners: list[MemoryListener]) -> None:
    """Send ``listeners`` the difference between two views (QEMU's two passes)."""
    old_ranges = old.ranges
    new_ranges = new.ranges
    reverse = listeners[::-1]
    # Pass 1: deletions.
    io = inew = 0
    while io < len(old_ranges) or inew < len(new_ranges):
        fo = old_ranges[io] if io < len(old_ranges) else None
        fn = new_ranges[inew] if inew < len(new_ranges) else None
        if fo is not None and (fn is None or fo.start < fn.start
                               or (fo.start == fn.start and not fo.same_as(fn))):
            section = MemoryRegionSection.from_flat_range(fo, as_)
            for listener in reverse:
                listener.region_del(section)
            io += 1
        elif fo is not None and fn is not None and fo.same_as(fn):
            io += 1
            inew += 1
        else:
            inew += 1
    # Pass 2: additions and no-ops.
    io = inew = 0
    while io < len(old_ranges) or inew < len(new_ranges):
        fo = old_ranges[io] if io < len(old_ranges) else None
        fn = new_ranges[inew] if inew < len(new_ranges) else None
        if fo is not None and (fn is None or fo.start < fn.start
                               or (fo.start == fn.start and not fo.same_as(fn))):
            io += 1
        elif fo is not None and fn is not None and fo.same_as(fn):
            section = MemoryRegionSection.from_flat_range(fn, as_)
            for listener in listeners:
                listener.region_nop(section)
            io += 1
            inew += 1
        else:
            section = MemoryRegionSection.from_flat_range(fn, as_)  # type: ignore[arg-type]
            for listener in listeners:
                listener.region_add(section)
            inew += 1
