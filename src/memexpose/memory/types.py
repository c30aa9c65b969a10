"""Value types of the memory layer: addresses, ranges, results, attributes.

Naming (STYLE rule 1): ``addr`` is absolute in an address space, ``offset`` is
relative to a region, ``size`` is a byte count, ``end`` is exclusive.
Addresses are plain ``int``; the ``NewType`` aliases only document intent.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NewType

from memexpose.errors import InvalidAccessError

__all__ = [
    "ADDR_SPACE_END",
    "MEMTXATTRS_UNSPECIFIED",
    "MEMTX_ACCESS_ERROR",
    "MEMTX_DECODE_ERROR",
    "MEMTX_ERROR",
    "MEMTX_OK",
    "Addr",
    "AddrRange",
    "Endianness",
    "MemTxAttrs",
    "MemTxResult",
    "Offset",
    "check_access",
]

Addr = NewType("Addr", int)
"""An absolute address in an address space (0 .. 2**64-1)."""

Offset = NewType("Offset", int)
"""An offset relative to the start of a memory region."""

ADDR_SPACE_END = 1 << 64
"""One past the last address of a 64-bit address space."""


class MemTxResult(enum.IntFlag):
    """Outcome of a memory transaction; a bit mask OR-ed over sub-accesses.

    The values are QEMU's, so that results can be compared with QEMU traces.
    """

    OK = 0
    ERROR = 1
    """The device (or a peer) reported an error."""
    DECODE_ERROR = 2
    """Nothing is there, or the access size/alignment is invalid."""
    ACCESS_ERROR = 4
    """The access was denied (memory-only attribute, re-entrancy guard, IOMMU)."""


MEMTX_OK = MemTxResult.OK
MEMTX_ERROR = MemTxResult.ERROR
MEMTX_DECODE_ERROR = MemTxResult.DECODE_ERROR
MEMTX_ACCESS_ERROR = MemTxResult.ACCESS_ERROR


class Endianness(enum.Enum):
    """Byte order of a device's registers (QEMU's ``enum device_endian``).

    ``NATIVE`` means the target's byte order, resolved per address space.
    """

    NATIVE = 0
    BIG = 1
    LITTLE = 2


@dataclass(frozen=True, slots=True)
class MemTxAttrs:
    """Attributes that travel with every access.

    Attributes:
        secure: TrustZone secure world (ARM) or SMM (x86).
        requester_id: PCI requester id (bus << 8 | devfn) of a DMA master.
        user: unprivileged access.
        memory: the access must reach memory, not MMIO (ACCESS_ERROR otherwise).
        unspecified: no attributes were given (QEMU's MEMTXATTRS_UNSPECIFIED).
    """

    secure: bool = False
    requester_id: int = 0
    user: bool = False
    memory: bool = False
    unspecified: bool = False


MEMTXATTRS_UNSPECIFIED = MemTxAttrs(unspecified=True)


@dataclass(frozen=True, slots=True)
class AddrRange:
    """A half-open range ``[start, start + size)`` inside the 64-bit space.

    ``size`` may be ``2**64`` (the whole space). For cold paths only: hot paths
    use plain ints.

    Raises:
        InvalidAccessError: negative start or size, or an end past 2**64.
    """

    start: int
    size: int

    def __post_init__(self) -> None:
        if self.start < 0 or self.size < 0 or self.start + self.size > ADDR_SPACE_END:
            raise InvalidAccessError(
                f"range start={self.start:#x} size={self.size:#x} does not fit in the "
                "64-bit address space",
                addr=self.start,
                size=self.size,
            )

    @property
    def end(self) -> int:
        """One past the last byte."""
        return self.start + self.size

    @property
    def last(self) -> int:
        """The last byte (inclusive), as printed by ``info mtree``; start if empty."""
        return self.start + self.size - 1 if self.size else self.start

    def contains(self, addr: int) -> bool:
        """Return whether ``addr`` lies in the range."""
        return self.start <= addr < self.start + self.size

    def intersection(self, other: AddrRange) -> AddrRange | None:
        """Return the overlap of two ranges, or None when they do not overlap."""
        start = max(self.start, other.start)
        end = min(self.end, other.end)
        if end <= start:
            return None
        return AddrRange(start, end - start)

    def __repr__(self) -> str:
        return f"AddrRange({self.start:#x}, size={self.size:#x})"


def check_access(addr: int, size: int) -> None:
    """Raise if ``(addr, size)`` can never be a legal 1..8 byte access.

    Raises:
        InvalidAccessError: size not in 1..8, negative address, or the access
            would run past 2**64.
    """
    if not 1 <= size <= 8:
        raise InvalidAccessError(
            f"access size {size} at {addr:#x} is not in 1..8; use read_bytes/write_bytes "
            "for larger transfers",
            addr=addr,
            size=size,
        )
    if addr < 0 or addr + size > ADDR_SPACE_END:
        raise InvalidAccessError(
            f"access of {size} bytes at {addr:#x} runs past the 64-bit address space",
            addr=addr,
            size=size,
        )
