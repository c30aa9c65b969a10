"""Why a DMA (or any) access failed: a readable account for a failed ``MemTxResult``.

Guest-visible failures come back as ``MemTxResult`` bits (STYLE rule 3).
That says *that* an access failed, not *why*. ``explain_access`` walks the
same path the access took (flat view, IOMMU translations) and names the
culprit: a hole, an IOMMU without the permission, a device that refused the
size. It runs only after a failure, so the access path stays lean.
"""

from __future__ import annotations

from dataclasses import dataclass

from memexpose.memory import (
    IOMMU_NONE,
    IOMMU_RO,
    IOMMU_RW,
    IOMMU_WO,
    AccessConstraints,
    AddressSpace,
    MemTxAttrs,
    MemTxResult,
)

__all__ = ["DmaFault", "explain_access"]

_PERM_NAMES = {IOMMU_NONE: "none", IOMMU_RO: "read-only", IOMMU_WO: "write-only",
               IOMMU_RW: "read-write"}


@dataclass(frozen=True, slots=True)
class DmaFault:
    """A failed DMA transfer, kept by the device for diagnosis.

    Attributes:
        addr: bus address of the transfer's first byte.
        size: bytes requested.
        is_write: True for a write into memory (device to memory).
        result: the OR of the results of all pieces.
        reason: a sentence saying what refused the transfer and where.
    """

    addr: int
    size: int
    is_write: bool
    result: MemTxResult
    reason: str

    def __str__(self) -> str:
        what = "write" if self.is_write else "read"
        return (f"DMA {what} of {self.size} bytes at {self.addr:#x} failed "
                f"({self.result!r}): {self.reason}")


def explain_access(as_: AddressSpace, addr: int, size: int, is_write: bool,
                   attrs: MemTxAttrs) -> str:
    """Return a sentence saying why an access of ``size`` bytes at ``addr`` in ``as_`` fails.

    Follows the transfer range by range as the access did (flat views and
    IOMMU translations) and names the first culprit: a hole, an IOMMU that
    denies the direction or has no translation, ROM under a write, or an
    MMIO region whose ``valid`` constraints refuse the piece. Returns a
    sentence saying so when every piece looks reachable (the device or a
    peer then reported the error itself).
    """
    verb = "write" if is_write else "read"
    end = addr + max(size, 1)
    pos = addr
    while pos < end:
        cur_as, cur, left = as_, pos, end - pos
        for _depth in range(16):
            fr = cur_as.flatview.lookup(cur)
            if fr is None:
                return (f"nothing is mapped at {cur:#x} in address space {cur_as.name!r} "
                        f"({verb} of {size} bytes at {addr:#x})")
            mr = fr.mr
            offset = fr.offset_in_region + (cur - fr.start)
            left = min(left, fr.end - cur)
            if not mr.is_iommu:
                break
            entry = mr.translate(offset, is_write, attrs)  # type: ignore[attr-defined]
            if entry.target_as is None:
                return f"IOMMU {mr.name!r} has no translation for bus address {cur:#x} ({verb})"
            if not entry.perm & (IOMMU_WO if is_write else IOMMU_RO):
                return (f"IOMMU {mr.name!r} denies the {verb} at bus address {cur:#x}: the "
                        f"page is {_PERM_NAMES.get(entry.perm, hex(entry.perm))}")
            mask = entry.addr_mask
            cur = (entry.translated_addr & ~mask) | (offset & mask)
            left = min(left, (mask | cur) - cur + 1)
            cur_as = entry.target_as
        else:
            return f"IOMMU translation of {pos:#x} did not end after 16 steps (a loop?)"
        if is_write and mr.ram and (mr.readonly or fr.readonly):
            return f"{mr.name!r} at {cur:#x} is read-only (ROM): the write was dropped"
        if not mr.ram and not (mr.is_romd and not is_write):
            piece = 1 << (min(left, 8).bit_length() - 1)
            if not mr.ops.accepts(offset, piece, is_write, attrs) or \
                    _refused_size(mr.ops.valid, offset, piece):
                return (f"region {mr.name!r} refused a {piece}-byte {verb} at offset "
                        f"{offset:#x} (address {cur:#x} in {cur_as.name!r})")
        pos += left
    return "every piece is reachable; the device or peer reported the error itself"


def _refused_size(valid: AccessConstraints, offset: int, size: int) -> bool:
    if not valid.unaligned and offset & (size - 1):
        return True
    if not valid.max_access_size:
        return False
    return not valid.min_access_size <= size <= valid.max_access_size
