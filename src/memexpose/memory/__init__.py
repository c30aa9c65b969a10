"""The memory layer: host memory, regions, flat views, address spaces, mtree text.

QEMU 7.2's memory API semantics, in Python (docs/memory.md numbers the rules):

* ``HostMemory``: the bytes behind RAM (memfd by default, so any RAM can be
  shared with a peer);
* ``MemoryRegion``: container, RAM, ROM, ROM device, MMIO, alias, IOMMU;
* ``FlatView``: the rendered, merged map of one root (``flatview.py`` owns
  every rendering rule);
* ``AddressSpace``: accesses with ``MemTxResult`` and ``MemTxAttrs``;
* ``MemorySystem``: transactions and listeners of one machine;
* ``format_mtree``: ``info mtree`` text identical to QEMU's.

This layer knows nothing of devices, sockets or CPUs.
"""

from memexpose.memory.addrspace import AddressSpace
from memexpose.memory.flatview import FlatRange, FlatView, flatview_root, render_flatview
from memexpose.memory.hostmem import HostMemory, HostMemoryKind, HostMemoryPin
from memexpose.memory.listener import MemoryListener, MemoryRegionSection
from memexpose.memory.mtree import format_mtree, normalize_blocks, split_blocks
from memexpose.memory.ops import (
    AccessConstraints,
    MemoryRegionOps,
    UnassignedIOOps,
    UnassignedOps,
    swap_bytes,
)
from memexpose.memory.region import (
    IOMMU_NONE,
    IOMMU_RO,
    IOMMU_RW,
    IOMMU_WO,
    IOMMUMemoryRegion,
    IOMMUTLBEntry,
    MemoryRegion,
    Owner,
)
from memexpose.memory.system import MemorySystem
from memexpose.memory.types import (
    ADDR_SPACE_END,
    MEMTX_ACCESS_ERROR,
    MEMTX_DECODE_ERROR,
    MEMTX_ERROR,
    MEMTX_OK,
    MEMTXATTRS_UNSPECIFIED,
    Addr,
    AddrRange,
    Endianness,
    MemTxAttrs,
    MemTxResult,
    Offset,
)

__all__ = [
    "ADDR_SPACE_END",
    "IOMMU_NONE",
    "IOMMU_RO",
    "IOMMU_RW",
    "IOMMU_WO",
    "MEMTXATTRS_UNSPECIFIED",
    "MEMTX_ACCESS_ERROR",
    "MEMTX_DECODE_ERROR",
    "MEMTX_ERROR",
    "MEMTX_OK",
    "AccessConstraints",
    "Addr",
    "AddrRange",
    "AddressSpace",
    "Endianness",
    "FlatRange",
    "FlatView",
    "HostMemory",
    "HostMemoryKind",
    "HostMemoryPin",
    "IOMMUMemoryRegion",
    "IOMMUTLBEntry",
    "MemTxAttrs",
    "MemTxResult",
    "MemoryListener",
    "MemoryRegion",
    "MemoryRegionOps",
    "MemoryRegionSection",
    "MemorySystem",
    "Offset",
    "Owner",
    "UnassignedIOOps",
    "UnassignedOps",
    "flatview_root",
    "format_mtree",
    "normalize_blocks",
    "render_flatview",
    "split_blocks",
    "swap_bytes",
]
