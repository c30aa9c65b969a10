"""Rendering a region tree into a flat view: the one owner of these rules.

The numbered rules (docs/memory.md, "Rendering"):

R1. A disabled region renders nothing, nor does its subtree.
R2. A region occupies ``[base + addr, base + addr + size)``, clipped to what
    every ancestor (and alias window) leaves visible.
R3. An alias renders its target so that target offset ``alias_offset`` lands
    at the alias's start, clipped to the alias's own window; read-only and
    non-volatile flags are inherited down the path.
R4. Subregions render in list order (priority high to low, newest first
    among equal priorities); the first region to claim an address keeps it.
R5. A terminating region (RAM, ROM, MMIO, ROM device, IOMMU) fills only what
    all its subregions left; a pure container leaves its holes empty, so
    lower siblings show through.
R6. Adjacent ranges merge only when they show the same region with
    continuous offsets and equal flags (``flatrange_mergeable``).
R7. Address spaces share one flat view when the flat-view-root descent ends
    on the same region.
R8. An alias may sit inside the region it shows; each pass shifts its window
    and clipping ends the recursion. A loop that does not end (a window that
    maps onto itself) is refused when it is built.

QEMU implements R4/R5 by inserting each terminating region into the gaps of
a sorted array. We compute the same answer differently: the walk records
every terminating region's visible window in visit order (its *rank*), and
a sweep over the window edges gives each point to the lowest-rank window
covering it. First-visited-wins is exactly "fills only the gaps", and the
sweep is O(n log n) instead of O(n^2).
"""

from __future__ import annotations

import gc
import heapq
import logging
from bisect import bisect_right
from typing import TYPE_CHECKING

from memexpose.memory.types import ADDR_SPACE_END

if TYPE_CHECKING:
    from memexpose.memory.region import MemoryRegion

__all__ = [
    "MAX_ALIAS_DEPTH",
    "FlatRange",
    "FlatView",
    "find_alias_loops",
    "flatview_root",
    "render_flatview",
]

log = logging.getLogger(__name__)


class FlatRange:
    """One piece of a flat view: ``[start, end)`` shows ``mr`` from ``offset_in_region``.

    Addresses are absolute in the address space. Immutable once built.

    Attributes:
        start, size, end: the absolute range (``end`` exclusive; size may be 2**64).
        mr: the terminating region shown.
        offset_in_region: offset in ``mr`` of the byte at ``start``.
        readonly, nonvolatile: flags inherited along the path (rule R3).
        romd_mode: ``mr``'s romd mode when the view was rendered.
        read_view, write_view: host memory views for direct access, or None.
        host_delta: add to an absolute address to index ``read_view``/``write_view``.
    """

    __slots__ = (
        "end",
        "host_delta",
        "mr",
        "nonvolatile",
        "offset_in_region",
        "read_view",
        "readonly",
        "romd_mode",
        "size",
        "start",
        "write_view",
    )

    def __init__(self, start: int, end: int, mr: MemoryRegion, offset_in_region: int,
                 readonly: bool, nonvolatile: bool) -> None:
        self.start = start
        self.end = end
        self.size = end - start
        self.mr = mr
        self.offset_in_region = offset_in_region
        self.readonly = readonly
        self.nonvolatile = nonvolatile
        self.romd_mode = mr._romd_mode
        # Which accesses may touch host memory directly (QEMU's
        # memory_access_is_direct): reads of RAM and of ROM devices in romd
        # mode; writes of RAM whose *own* flag is writable. The inherited
        # read-only flag does not stop a direct write here (as in QEMU's
        # physical-memory path); CPUs honour it through their mappings.
        hostmem = mr.hostmem
        view = hostmem.view if hostmem is not None else None
        direct_read = mr.ram or (mr.rom_device and mr._romd_mode)
        self.read_view = view if direct_read else None
        self.write_view = view if (mr.ram and not mr._readonly and not mr.rom_device) else None
        self.host_delta = mr.hostmem_offset + offset_in_region - start

    def _drop_direct(self) -> None:
        """Make accesses to this range go through its region's ops (revoke_direct)."""
        self.read_view = None
        self.write_view = None
        self.romd_mode = False

    def same_as(self, other: FlatRange) -> bool:
        """QEMU's ``flatrange_equal``: same region, place, offset and flags."""
        return (self.mr is other.mr and self.start == other.start and self.end == other.end
                and self.offset_in_region == other.offset_in_region
                and self.romd_mode == other.romd_mode and self.readonly == other.readonly
                and self.nonvolatile == other.nonvolatile)

    def __repr__(self) -> str:
        flags = ("ro " if self.readonly else "") + ("nv " if self.nonvolatile else "")
        return (f"<FlatRange {self.start:#x}-{self.end - 1:#x} {flags}{self.mr.name}"
                f" @{self.offset_in_region:#x}>")


class FlatView:
    """The rendered, merged, sorted, non-overlapping ranges of one root region.

    Immutable after construction; lookups are a bisect over ``starts``.

    Invariants:
        * ``ranges`` sorted by start, non-overlapping, none empty;
        * ``starts[i] == ranges[i].start``.
    """

    __slots__ = ("ranges", "root", "starts")

    def __init__(self, root: MemoryRegion | None, ranges: list[FlatRange]) -> None:
        self.root = root
        self.ranges = ranges
        self.starts = [fr.start for fr in ranges]

    def lookup(self, addr: int) -> FlatRange | None:
        """Return the range containing ``addr``, or None for a hole."""
        i = bisect_right(self.starts, addr) - 1
        if i >= 0:
            fr = self.ranges[i]
            if addr < fr.end:
                return fr
        return None

    def find_flat_range(self, addr: int, size: int) -> FlatRange | None:
        """Return the whole range that contains all of ``[addr, addr + size)``.

        Accesses at a range's first and last byte are found. Returns None for
        a hole or an access that crosses a range boundary. ``size`` 0 is
        treated as 1.
        """
        fr = self.lookup(addr)
        if fr is not None and addr + max(size, 1) <= fr.end:
            return fr
        return None

    def next_start_after(self, addr: int) -> int:
        """Return the start of the first range after ``addr``, or 2**64."""
        i = bisect_right(self.starts, addr)
        return self.starts[i] if i < len(self.starts) else ADDR_SPACE_END

    def _check_invariants(self) -> None:
        prev_end = 0
        for fr in self.ranges:
            assert fr.start >= prev_end, f"overlap or disorder at {fr!r}"
            assert fr.end > fr.start, f"empty range {fr!r}"
            prev_end = fr.end
        assert self.starts == [fr.start for fr in self.ranges]

    def __len__(self) -> int:
        return len(self.ranges)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.ranges)

    def __repr__(self) -> str:
        root = self.root.name if self.root is not None else "(none)"
        return f"<FlatView root={root} ranges={len(self.ranges)}>"


def flatview_root(mr: MemoryRegion | None) -> MemoryRegion | None:
    """Return the region a view is really rendered from (rule R7), or None.

    Descends through an alias that shows its whole target from offset 0, and
    through a container whose only enabled child sits at 0 and fits inside.
    A disabled region, or a container with no enabled child, gives None.
    """
    seen: set[int] = set()
    while mr is not None and mr._enabled:
        if id(mr) in seen:
            # An alias that shows its own container whole: stop here rather
            # than walk the loop forever.
            return mr
        seen.add(id(mr))
        target = mr._alias
        if target is not None:
            if mr._alias_offset == 0 and mr._size >= target._size:
                mr = target
                continue
        elif not mr.terminates:
            found = 0
            nxt = None
            for child in mr._subregions:
                if child._enabled:
                    found += 1
                    if found > 1:
                        nxt = None
                        break
                    if child._addr == 0 and mr._size >= child._size:
                        nxt = child
            if found == 0:
                return None
            if nxt is not None:
                mr = nxt
                continue
        return mr
    return None


MAX_ALIAS_DEPTH = 256
"""Alias hops on one rendering path before a loop is declared endless (R8)."""


def _collect(mr: MemoryRegion, base: int, clip_start: int, clip_end: int, readonly: bool,
             nonvolatile: bool, windows: list[tuple[int, int, int, MemoryRegion, int, bool, bool]],
             alias_depth: int, loops: list[MemoryRegion]) -> None:
    """Append the visible window of every terminating region, in visit order."""
    if not mr._enabled:  # R1
        return
    base += mr._addr
    readonly = readonly or mr._readonly
    nonvolatile = nonvolatile or mr._nonvolatile
    start = base if base > clip_start else clip_start  # R2
    end = base + mr._size
    if end > clip_end:
        end = clip_end
    if start >= end:
        return
    target = mr._alias
    if target is not None:  # R3
        if alias_depth >= MAX_ALIAS_DEPTH:  # R8
            loops.append(mr)
            return
        _collect(target, base - target._addr - mr._alias_offset, start, end, readonly,
                 nonvolatile, windows, alias_depth + 1, loops)
        return
    for child in reversed(mr._subregions):  # R4
        _collect(child, base, start, end, readonly, nonvolatile, windows, alias_depth, loops)
    if mr.terminates:  # R5
        windows.append((start, end, len(windows), mr, start - base, readonly, nonvolatile))


def _paint(windows: list[tuple[int, int, int, MemoryRegion, int, bool, bool]]
           ) -> list[tuple[int, int, tuple[int, int, int, MemoryRegion, int, bool, bool]]]:
    """Give each point to the first-visited window covering it (R4, R5)."""
    by_start = sorted(windows, key=lambda w: w[0])
    # Fast path: windows that do not overlap at all are their own answer.
    prev_end = -1
    for w in by_start:
        if w[0] < prev_end:
            break
        prev_end = w[1]
    else:
        return [(w[0], w[1], w) for w in by_start]

    out: list[tuple[int, int, tuple[int, int, int, MemoryRegion, int, bool, bool]]] = []
    active: list[tuple[int, int, int]] = []  # (rank, end, index into windows)
    n = len(by_start)
    i = 0
    pos = 0
    push = heapq.heappush
    pop = heapq.heappop
    while True:
        if not active:
            if i >= n:
                break
            pos = by_start[i][0]
        while i < n and by_start[i][0] <= pos:
            w = by_start[i]
            push(active, (w[2], w[1], w[2]))
            i += 1
        while active and active[0][1] <= pos:
            pop(active)
        if not active:
            continue
        rank, top_end, _ = active[0]
        next_start = by_start[i][0] if i < n else ADDR_SPACE_END + 1
        seg_end = top_end if top_end < next_start else next_start
        owner = windows[rank]
        if out and out[-1][2] is owner and out[-1][1] == pos:
            out[-1] = (out[-1][0], seg_end, owner)
        else:
            out.append((pos, seg_end, owner))
        pos = seg_end
    return out


def render_flatview(root: MemoryRegion | None) -> FlatView:
    """Render ``root`` (already the flat-view root) into a merged FlatView.

    The root's own ``addr`` is added too, as QEMU does. ``None`` renders an
    empty view.
    """
    if root is None:
        return FlatView(None, [])
    # Rendering allocates one object per range; a cyclic-GC pass in the
    # middle of that costs more than the render itself on large maps, and
    # nothing here can form a cycle.
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _render(root)
    finally:
        if gc_was_enabled:
            gc.enable()


def find_alias_loops(region: MemoryRegion) -> list[MemoryRegion]:
    """Return the aliases below ``region`` where rendering would never end (R8).

    An alias may sit inside the region it shows (QEMU allows it: each pass
    shifts the window and clipping ends the recursion). A loop whose window
    maps onto itself never ends; QEMU would exhaust its stack.
    """
    loops: list[MemoryRegion] = []
    _collect(region, 0, 0, ADDR_SPACE_END, False, False, [], 0, loops)
    return loops


def _render(root: MemoryRegion) -> FlatView:
    windows: list[tuple[int, int, int, MemoryRegion, int, bool, bool]] = []
    loops: list[MemoryRegion] = []
    _collect(root, 0, 0, ADDR_SPACE_END, False, False, windows, 0, loops)
    if loops:
        # Reachable only by moving regions of an already accepted loop so
        # that a window maps onto itself; render what is finite.
        log.warning("endless alias loop through %s: rendered only %d levels deep",
                    ", ".join(sorted({mr.name for mr in loops})), MAX_ALIAS_DEPTH)
    ranges: list[FlatRange] = []
    last: FlatRange | None = None
    for start, end, w in _paint(windows):
        mr = w[3]
        offset = w[4] + (start - w[0])
        readonly = w[5]
        nonvolatile = w[6]
        if (last is not None and last.end == start and last.mr is mr  # R6
                and last.offset_in_region + last.size == offset
                and last.readonly == readonly and last.nonvolatile == nonvolatile):
            merged = FlatRange(last.start, end, mr, last.offset_in_region, readonly,
                               nonvolatile)
            ranges[-1] = merged
            last = merged
            continue
        last = FlatRange(start, end, mr, offset, readonly, nonvolatile)
        ranges.append(last)
    return FlatView(root, ranges)
