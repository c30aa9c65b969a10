"""How a flat view becomes Unicorn mappings (the CPU's view of memory).

Unicorn maps memory in pages (1 KiB on AArch64 and ARM, 4 KiB on x86). A
flat view has byte-granular ranges. ``plan_mappings`` turns one into the
other (docs/machine.md, "CPU mappings"):

C1. A page that lies wholly inside one RAM or ROM flat range is *direct*:
    ``mem_map_ptr`` over the region's host memory (zero copy), readable and
    executable, writable unless the range is read-only (ROM, or a read-only
    flag inherited along the path, rule M2).
C2. A page that lies wholly inside one plain MMIO flat range (``init_io``)
    is a *device* page: ``mmio_map`` whose callbacks go straight to
    that region's ops at ``offset = addr + delta``.
C3. Every other page that some range touches (a range edge inside the page,
    two ranges sharing it, a ROM device, an IOMMU, RAM without a writable
    host mapping) is a *generic* page: ``mmio_map`` whose
    callbacks go through ``AddressSpace.read``/``write`` and so obey every
    access rule. Slow, but exact at any granularity.
C4. Pages no range touches stay unmapped: an access faults.
C5. Adjacent mappings of one kind merge: direct pages when their host
    addresses are contiguous in one ``HostMemory`` with equal protection,
    device pages of one region with equal ``delta``, generic pages always.
    Unicorn slows down sharply with many mappings; merging keeps a board at
    a few dozen.

The plan is a pure function of the flat view; ``UnicornCPU`` diffs the old
plan against the new one and remaps only what changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from memexpose.memory import FlatRange, HostMemory, MemoryRegion

__all__ = ["KIND_DEVICE", "KIND_DIRECT", "KIND_GENERIC", "CpuMapping", "plan_mappings"]

KIND_DIRECT = "direct"
KIND_DEVICE = "device"
KIND_GENERIC = "generic"


@dataclass(frozen=True, slots=True)
class CpuMapping:
    """One Unicorn mapping: ``[start, start + size)``, page aligned.

    Attributes:
        kind: ``KIND_DIRECT``, ``KIND_DEVICE`` or ``KIND_GENERIC``.
        start, size: guest physical range (multiples of the page size).
        writable: direct mappings only: guest stores allowed.
        hostmem, host_offset: direct mappings only: the bytes at ``start``
            are ``hostmem`` at byte ``host_offset``.
        mr, delta: device mappings only: ``offset in mr = addr + delta``.
        wide: the mapping serves a region whose callbacks take 8 bytes, so the
            CPU must learn the guest's real access size (see cpu.py).
    """

    kind: str
    start: int
    size: int
    writable: bool = False
    hostmem: HostMemory | None = None
    host_offset: int = 0
    mr: MemoryRegion | None = None
    delta: int = 0
    wide: bool = False

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.start + self.size

    def key(self) -> tuple[object, ...]:
        """Identity for diffing plans: equal keys need no remap."""
        return (self.kind, self.start, self.size, self.writable, id(self.hostmem),
                self.host_offset, id(self.mr), self.delta, self.wide)

    def __repr__(self) -> str:
        what = {KIND_DIRECT: lambda: f"{self.hostmem.name if self.hostmem else '?'}"
                                     f"+{self.host_offset:#x}{' rw' if self.writable else ' ro'}",
                KIND_DEVICE: lambda: f"{self.mr.name if self.mr else '?'} delta={self.delta:#x}",
                KIND_GENERIC: lambda: "via address space"}[self.kind]()
        return (f"<CpuMapping {self.kind} {self.start:#x}-{self.end - 1:#x} {what}"
                f"{' wide' if self.wide else ''}>")


def region_is_wide(mr: MemoryRegion) -> bool:
    """Whether ``mr``'s callbacks implement 8-byte accesses (so a split would show)."""
    ops = mr.ops
    return ops.impl.max_access_size == 8 or ops.valid.min_access_size == 8


def _direct(fr: FlatRange) -> bool:
    mr = fr.mr
    return mr.ram and fr.read_view is not None and mr.hostmem is not None \
        and not mr.hostmem.readonly


def plan_mappings(ranges: list[FlatRange], page_size: int,
                  addr_limit: int = 1 << 48) -> list[CpuMapping]:
    """Return the Unicorn mappings for ``ranges`` (rules C1-C5), sorted by start.

    Args:
        ranges: a flat view's ranges (sorted, non-overlapping).
        page_size: Unicorn's page size, a power of two.
        addr_limit: the CPU's physical address limit; ranges are clipped to it
            (a background region of 2**64 bytes cannot be mapped whole).

    Returns:
        Non-overlapping, page-aligned mappings, merged (C5).
    """
    mask = page_size - 1
    pieces: list[CpuMapping] = []
    generic: dict[int, bool] = {}  # page start -> wide

    for fr in ranges:
        start, end = fr.start, min(fr.end, addr_limit)
        if start >= end:
            continue
        wide = not fr.mr.ram and region_is_wide(fr.mr)
        inner_start = (start + mask) & ~mask
        inner_end = end & ~mask
        if inner_start >= inner_end:  # C3: no whole page inside (at most two pages)
            for page in range(start & ~mask, (end + mask) & ~mask, page_size):
                generic[page] = generic.get(page, False) or wide
            continue
        if inner_start != start:  # C3: the partial pages at either edge
            page = start & ~mask
            generic[page] = generic.get(page, False) or wide
        if inner_end != end:
            generic[inner_end] = generic.get(inner_end, False) or wide
        if _direct(fr):  # C1
            mr = fr.mr
            pieces.append(CpuMapping(
                KIND_DIRECT, inner_start, inner_end - inner_start,
                writable=fr.write_view is not None and not fr.readonly,
                hostmem=mr.hostmem,
                host_offset=mr.hostmem_offset + fr.offset_in_region + (inner_start - start)))
        elif fr.mr.ram or fr.mr.rom_device or fr.mr.is_iommu:  # C3: no plain callbacks
            pieces.append(CpuMapping(KIND_GENERIC, inner_start, inner_end - inner_start,
                                     wide=wide))
        else:  # C2
            pieces.append(CpuMapping(
                KIND_DEVICE, inner_start, inner_end - inner_start, mr=fr.mr,
                delta=fr.offset_in_region - start, wide=wide))

    for page, wide in generic.items():
        pieces.append(CpuMapping(KIND_GENERIC, page, page_size, wide=wide))
    pieces.sort(key=lambda m: m.start)

    merged: list[CpuMapping] = []
    for m in pieces:  # C5
        if merged:
            last = merged[-1]
            if last.end == m.start and last.kind == m.kind and _mergeable(last, m):
                merged[-1] = CpuMapping(last.kind, last.start, last.size + m.size,
                                        writable=last.writable, hostmem=last.hostmem,
                                        host_offset=last.host_offset, mr=last.mr,
                                        delta=last.delta, wide=last.wide or m.wide)
                continue
        merged.append(m)
    return merged


def _mergeable(a: CpuMapping, b: CpuMapping) -> bool:
    if a.kind == KIND_GENERIC:
        return True
    if a.kind == KIND_DIRECT:
        return (a.hostmem is b.hostmem and a.writable == b.writable
                and a.host_offset + a.size == b.host_offset)
    return a.mr is b.mr and a.delta == b.delta and a.wide == b.wide
