"""Address spaces: a root region, its current flat view, and accesses.

Two access paths, as in QEMU (docs/memory.md rules M1-M9):

* ``read``/``write`` of 1..8 bytes are loads and stores (QEMU's ``ld*/st*``):
  the value is numeric in the target's byte order; one lookup; RAM is
  sliced directly; anything else is one dispatch of the full size.
* ``read_into``/``read_bytes``/``write_bytes`` move byte buffers (QEMU's
  ``address_space_rw``): the transfer walks across ranges; RAM is copied in
  slices; MMIO is cut into accesses the device allows, and each one lands
  in the buffer in the device's own byte order.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Literal

from memexpose.errors import InvalidAccessError, MemoryModelError
from memexpose.memory.flatview import FlatRange, FlatView
from memexpose.memory.listener import MemoryListener, MemoryRegionSection
from memexpose.memory.ops import (
    UnassignedOps,
    device_big_endian,
    dispatch_read,
    dispatch_write,
    swap_bytes,
)
from memexpose.memory.region import IOMMU_RO, IOMMU_WO, MemoryRegion
from memexpose.memory.system import MemorySystem
from memexpose.memory.types import (
    ADDR_SPACE_END,
    MEMTX_ACCESS_ERROR,
    MEMTX_OK,
    MEMTXATTRS_UNSPECIFIED,
    MemTxAttrs,
    MemTxResult,
)

if TYPE_CHECKING:
    from collections.abc import Buffer

__all__ = ["AddressSpace"]

_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))
_IOMMU_DEPTH_LIMIT = 16

# What a hole dispatches to (QEMU's io_mem_unassigned): every access invalid.
UNASSIGNED = MemoryRegion.init_io("unassigned", ADDR_SPACE_END, UnassignedOps())


def _access_size(mr: MemoryRegion, length: int, offset: int) -> int:
    """Largest legal piece of a byte transfer at ``offset`` (QEMU memory_access_size)."""
    ops = mr.ops
    size_max = ops.valid.max_access_size or 4
    if not ops.impl.unaligned:
        align = offset & -offset
        if align and align < size_max:
            size_max = align
    if length > size_max:
        length = size_max
    return 1 << (length.bit_length() - 1)


class AddressSpace:
    """A view of memory from one initiator: a CPU, a DMA master, the I/O ports.

    Args:
        root: the region at the top (often a container of size 2**64).
        name: the name ``info mtree`` prints.
        system: the memory system to join; the root's, or a new one, when None.

    The current flat view is replaced atomically at each commit; accesses
    never take the machine lock (their callers hold it when needed).
    """

    def __init__(self, root: MemoryRegion | None, name: str, *,
                 system: MemorySystem | None = None) -> None:
        if system is None:
            system = root.system if root is not None and root.system is not None else \
                MemorySystem(name)
        self.name = name
        self.root = root
        self.system = system
        self._byteorder: Literal["little", "big"] = "big" if system.big_endian else "little"
        self._listeners: list[MemoryListener] = []
        self._flatview: FlatView = FlatView(None, [])
        self._flatview = system._register_address_space(self)

    # -- the map --------------------------------------------------------------

    @property
    def flatview(self) -> FlatView:
        """The current flat view (immutable; replaced at each commit)."""
        return self._flatview

    @contextmanager
    def transaction(self) -> Iterator[MemorySystem]:
        """Group changes to the memory map; see ``MemorySystem.transaction``."""
        with self.system.transaction() as system:
            yield system

    def register_listener(self, listener: MemoryListener) -> None:
        """Attach ``listener`` and replay the current map to it as ``region_add``."""
        self.system.register_listener(listener, self)

    def unregister_listener(self, listener: MemoryListener) -> None:
        """Detach ``listener`` after sending ``region_del`` for every range."""
        self.system.unregister_listener(listener)

    def destroy(self) -> None:
        """Remove the address space from its system (listeners get region_del)."""
        self.system._unregister_address_space(self)

    def find_flat_range(self, addr: int, size: int = 1) -> FlatRange | None:
        """Return the whole flat range containing ``[addr, addr + size)``, or None."""
        return self._flatview.find_flat_range(addr, size)

    def find(self, addr: int, size: int) -> MemoryRegionSection | None:
        """Return the lowest range intersecting ``[addr, addr + size)``, clipped to it.

        QEMU's ``memory_region_find`` on an address-space root. None when
        nothing is mapped there.
        """
        view = self._flatview
        end = addr + size
        i = bisect_right(view.starts, addr) - 1
        if i < 0 or view.ranges[i].end <= addr:
            i += 1
        if i >= len(view.ranges) or view.ranges[i].start >= end:
            return None
        fr = view.ranges[i]
        start = max(fr.start, addr)
        stop = min(fr.end, end)
        return MemoryRegionSection(fr.mr, self, fr.offset_in_region + (start - fr.start),
                                   stop - start, start, fr.readonly, fr.nonvolatile, fr)

    # -- loads and stores (1..8 bytes, target byte order) ---------------------

    def read(self, addr: int, size: int,
             attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> tuple[int, MemTxResult]:
        """Load ``size`` (1..8) bytes at ``addr`` as a number in the target's byte order.

        Returns ``(value, result)``. A hole or an access the device refuses
        gives ``(0, MEMTX_DECODE_ERROR)``.

        Raises:
            InvalidAccessError: size not in 1..8, or the access passes 2**64.
        """
        if not 0 < size <= 8 or addr < 0 or addr + size > ADDR_SPACE_END:
            raise _bad_access(addr, size, self)
        view = self._flatview
        i = bisect_right(view.starts, addr) - 1
        if i >= 0:
            fr = view.ranges[i]
            # Direct: RAM or romd (M2) and inside the range (M3); a memory-only
            # access to romd falls to the slow path for its ACCESS_ERROR (M9).
            if addr + size <= fr.end and fr.read_view is not None and (
                    not attrs.memory or fr.mr.ram):
                o = addr + fr.host_delta
                return int.from_bytes(fr.read_view[o:o + size], self._byteorder), MEMTX_OK
        return self._load_slow(addr, size, attrs)

    def write(self, addr: int, value: int, size: int,
              attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> MemTxResult:
        """Store the low ``size`` (1..8) bytes of ``value`` at ``addr`` (target byte order).

        A write to ROM is not direct: it reaches ROM's (unassigned) ops, is
        dropped, and returns ``MEMTX_DECODE_ERROR``.

        Raises:
            InvalidAccessError: size not in 1..8, or the access passes 2**64.
        """
        if not 0 < size <= 8 or addr < 0 or addr + size > ADDR_SPACE_END:
            raise _bad_access(addr, size, self)
        view = self._flatview
        i = bisect_right(view.starts, addr) - 1
        if i >= 0:
            fr = view.ranges[i]
            if addr + size <= fr.end and fr.write_view is not None:
                o = addr + fr.host_delta
                fr.write_view[o:o + size] = (value & _MASKS[size]).to_bytes(size, self._byteorder)
                return MEMTX_OK
        return self._store_slow(addr, value, size, attrs)

    def _load_slow(self, addr: int, size: int, attrs: MemTxAttrs) -> tuple[int, MemTxResult]:
        mr, offset, length, fr = self._translate(addr, size, False, attrs)
        big = self.system.big_endian
        if attrs.memory and not mr.ram:
            return 0, MEMTX_ACCESS_ERROR
        # Fix (reference 4.2, QEMU ld*): a RAM range shorter than the access
        # is not direct; the whole access is dispatched to the RAM region's
        # (unassigned) ops, never split. Only RAM reached through an IOMMU
        # or a romd range still takes the byte path here.
        if fr is not None and fr.read_view is not None and not (mr.ram and length < size):
            buf = bytearray(size)
            result = self.read_into(addr, buf, attrs)
            return int.from_bytes(buf, "big" if big else "little"), result
        value, result = dispatch_read(mr, offset, size, attrs, big)
        if device_big_endian(mr.ops, big) != big and size > 1:
            value = swap_bytes(value, size)
        return value, result

    def _store_slow(self, addr: int, value: int, size: int, attrs: MemTxAttrs) -> MemTxResult:
        mr, offset, length, fr = self._translate(addr, size, True, attrs)
        big = self.system.big_endian
        if attrs.memory and not mr.ram:
            return MEMTX_ACCESS_ERROR
        # Fix (reference 4.2, QEMU st*): as in _load_slow, a RAM range shorter
        # than the access sends the whole store to the RAM region's ops.
        if fr is not None and fr.write_view is not None and length >= size:
            return self.write_bytes(addr, (value & _MASKS[size]).to_bytes(
                size, "big" if big else "little"), attrs)
        value &= _MASKS[size]
        if device_big_endian(mr.ops, big) != big and size > 1:
            value = swap_bytes(value, size)
        return dispatch_write(mr, offset, value, size, attrs, big)

    # -- translation ----------------------------------------------------------

    def _translate(self, addr: int, length: int, is_write: bool, attrs: MemTxAttrs
                   ) -> tuple[MemoryRegion, int, int, FlatRange | None]:
        """Resolve ``addr`` to ``(region, offset in region, usable length, flat range)``.

        The length is clamped to the range end only for RAM (QEMU: MMIO
        accesses are sent whole to the region where they start). IOMMU
        regions are followed into their target address space.
        """
        as_ = self
        for _ in range(_IOMMU_DEPTH_LIMIT):
            fr = as_._flatview.lookup(addr)
            if fr is None:
                return UNASSIGNED, addr, length, None
            mr = fr.mr
            offset = fr.offset_in_region + (addr - fr.start)
            if mr.is_iommu:
                entry = mr.translate(offset, is_write, attrs)  # type: ignore[attr-defined]
                needed = IOMMU_WO if is_write else IOMMU_RO
                if not entry.perm & needed or entry.target_as is None:
                    return UNASSIGNED, addr, length, None
                mask = entry.addr_mask
                addr = (entry.translated_addr & ~mask) | (offset & mask)
                page_left = (mask | addr) - addr + 1
                if length > page_left:
                    length = page_left
                as_ = entry.target_as
                continue
            if mr.ram and addr + length > fr.end:
                length = fr.end - addr
            return mr, offset, length, fr
        raise MemoryModelError(f"IOMMU translation of {addr:#x} in {self.name!r} did not end "
                               f"after {_IOMMU_DEPTH_LIMIT} steps (translation loop?)")

    # -- byte transfers -------------------------------------------------------

    def read_into(self, addr: int, buf: Buffer,
                  attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> MemTxResult:
        """Fill ``buf`` from ``[addr, addr + len(buf))``; return the OR of all results.

        RAM is copied in slices; MMIO is read in the largest pieces the device
        allows, each laid out in the device's byte order. Holes read as 0.
        An empty buffer is a no-op.

        Raises:
            InvalidAccessError: the transfer passes 2**64.
        """
        out = memoryview(buf).cast("B")
        total = len(out)
        if addr < 0 or addr + total > ADDR_SPACE_END:
            raise _bad_access(addr, total, self)
        big = self.system.big_endian
        result = MEMTX_OK
        pos = 0
        while pos < total:
            mr, offset, length, fr = self._translate(addr + pos, total - pos, False, attrs)
            if attrs.memory and not mr.ram:
                result |= MEMTX_ACCESS_ERROR
            elif fr is not None and fr.read_view is not None:
                if not mr.ram:  # romd: QEMU clamps to the region, not the range (M3)
                    length = min(length, mr.size - offset)
                o = mr.hostmem_offset + offset
                out[pos:pos + length] = fr.read_view[o:o + length]
            else:
                length = _access_size(mr, length, offset)
                value, res = dispatch_read(mr, offset, length, attrs, big)
                result |= res
                dev_big = device_big_endian(mr.ops, big)
                out[pos:pos + length] = value.to_bytes(length, "big" if dev_big else "little")
            pos += length
        return result

    def read_bytes(self, addr: int, size: int,
                   attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> tuple[bytes, MemTxResult]:
        """Return ``size`` bytes from ``addr`` and the OR of all results (see read_into)."""
        buf = bytearray(size)
        result = self.read_into(addr, buf, attrs)
        return bytes(buf), result

    def write_bytes(self, addr: int, data: Buffer,
                    attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> MemTxResult:
        """Write ``data`` at ``addr``; return the OR of all results.

        RAM is copied in slices; ROM and holes drop the bytes with
        ``MEMTX_DECODE_ERROR``; MMIO gets the largest pieces the device
        allows, each taken in the device's byte order.

        Raises:
            InvalidAccessError: the transfer passes 2**64.
        """
        src = memoryview(data).cast("B")
        total = len(src)
        if addr < 0 or addr + total > ADDR_SPACE_END:
            raise _bad_access(addr, total, self)
        big = self.system.big_endian
        result = MEMTX_OK
        pos = 0
        while pos < total:
            mr, offset, length, fr = self._translate(addr + pos, total - pos, True, attrs)
            if attrs.memory and not mr.ram:
                result |= MEMTX_ACCESS_ERROR
            elif fr is not None and fr.write_view is not None:
                o = mr.hostmem_offset + offset
                fr.write_view[o:o + length] = src[pos:pos + length]
            else:
                length = _access_size(mr, length, offset)
                dev_big = device_big_endian(mr.ops, big)
                value = int.from_bytes(src[pos:pos + length], "big" if dev_big else "little")
                result |= dispatch_write(mr, offset, value, length, attrs, big)
            pos += length
        return result

    def write_rom(self, addr: int, data: Buffer) -> MemTxResult:
        """Write ``data`` into RAM, ROM and romd ranges directly, skipping the rest.

        The loader's path (QEMU's ``address_space_write_rom``): it can fill a
        ROM; MMIO and holes are skipped without error. Always ``MEMTX_OK``.
        """
        src = memoryview(data).cast("B")
        total = len(src)
        if addr < 0 or addr + total > ADDR_SPACE_END:
            raise _bad_access(addr, total, self)
        pos = 0
        while pos < total:
            mr, offset, length, fr = self._translate(addr + pos, total - pos, True,
                                                     MEMTXATTRS_UNSPECIFIED)
            if fr is not None and (mr.ram or mr.is_romd):
                length = min(length, mr.size - offset)
                dst = mr.hostmem.view  # type: ignore[union-attr]
                o = mr.hostmem_offset + offset
                dst[o:o + length] = src[pos:pos + length]
            else:
                length = _access_size(mr, length, offset)
            pos += length
        return MEMTX_OK

    def __repr__(self) -> str:
        root = self.root.name if self.root is not None else "(none)"
        return f"<AddressSpace {self.name!r} root={root} ranges={len(self._flatview.ranges)}>"


def _bad_access(addr: int, size: int, as_: AddressSpace) -> InvalidAccessError:
    if not 0 < size <= 8:
        return InvalidAccessError(
            f"{as_.name}: access size {size} at {addr:#x} is not in 1..8; use "
            "read_bytes/write_bytes for other sizes", addr=addr, size=size)
    return InvalidAccessError(
        f"{as_.name}: access of {size} bytes at {addr:#x} runs past the 64-bit address space",
        addr=addr, size=size)
