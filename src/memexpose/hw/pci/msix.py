"""The MSI-X capability: a vector table and a pending-bit array inside BARs.

QEMU's ``hw/pci/msix.c``. The capability (12 bytes) holds the table size,
the function-mask and enable bits, and where the table and the PBA live
(BAR index and offset). The table is an MMIO region of 16 bytes per vector
(address low/high, data, vector control with its mask bit); the PBA is a
read-only bit array. Both are subregions of a BAR the device registers.

A vector is masked when its own mask bit is set, when the function mask is
set, or when MSI-X is disabled. Notifying a masked vector sets its pending
bit; unmasking it later sends the message and clears the bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from memexpose.errors import HwModelError
from memexpose.hw.pci import regs as R
from memexpose.memory import (
    MEMTX_OK,
    AccessConstraints,
    Endianness,
    MemoryRegion,
    MemoryRegionOps,
)

if TYPE_CHECKING:
    from memexpose.hw.pci.device import PCIDevice

__all__ = ["MSIXCap", "msix_init_exclusive_bar"]

_CONTROL = R.PCI_MSIX_FLAGS + 1  # the byte holding MASKALL (0x40) and ENABLE (0x80)


class _TableOps(MemoryRegionOps):
    endianness = Endianness.LITTLE
    valid = AccessConstraints(4, 8)
    impl = AccessConstraints(0, 4)

    def __init__(self, cap: MSIXCap) -> None:
        self.cap = cap

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.cap.table[offset:offset + 4], "little")

    def write(self, offset: int, value: int, size: int) -> None:
        self.cap._table_write(offset, value)


class _PbaOps(MemoryRegionOps):
    endianness = Endianness.LITTLE
    valid = AccessConstraints(4, 8)
    impl = AccessConstraints(0, 4)

    def __init__(self, cap: MSIXCap) -> None:
        self.cap = cap

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.cap.pba[offset:offset + 4], "little")


class MSIXCap:
    """MSI-X for one function: capability, table region, PBA region.

    Args:
        dev: the function; its ``msix`` attribute is set to this object.
        nentries: table size, 1..2048.
        table_bar: the BAR region (a container) the table goes into.
        table_bar_nr: its BAR index.
        table_offset: the table's offset in that BAR (8-byte aligned).
        pba_bar, pba_bar_nr, pba_offset: the same for the PBA.
        cap_offset: capability offset (0: first free space).

    Invariants:
        * a pending bit is set only for a vector that was masked when notified;
        * ``function_masked == (not enabled or MASKALL)``.
    """

    def __init__(self, dev: PCIDevice, nentries: int, table_bar: MemoryRegion,
                 table_bar_nr: int, table_offset: int, pba_bar: MemoryRegion, pba_bar_nr: int,
                 pba_offset: int, *, cap_offset: int = 0) -> None:
        if not 1 <= nentries <= 2048:
            raise HwModelError(f"{dev.type_name}: MSI-X tables have 1..2048 entries, "
                               f"not {nentries}")
        if dev.msix is not None:
            raise HwModelError(f"{dev.type_name} already has an MSI-X capability")
        table_size = nentries * R.PCI_MSIX_ENTRY_SIZE
        pba_size = ((nentries + 63) // 64) * 8
        if (table_bar_nr == pba_bar_nr and table_offset < pba_offset + pba_size
                and pba_offset < table_offset + table_size) \
                or table_offset + table_size > table_bar.size \
                or pba_offset + pba_size > pba_bar.size \
                or (table_offset | pba_offset) & R.PCI_MSIX_FLAGS_BIRMASK:
            raise HwModelError(
                f"{dev.type_name}: MSI-X table ({table_offset:#x}+{table_size:#x} in BAR"
                f"{table_bar_nr}) and PBA ({pba_offset:#x}+{pba_size:#x} in BAR{pba_bar_nr}) "
                "must not overlap, must fit their BARs and be 8-byte aligned")
        self.dev = dev
        self.nentries = nentries
        self.table = bytearray(table_size)
        self.pba = bytearray(pba_size)
        cfg = dev.config
        self.offset = cfg.add_capability(R.PCI_CAP_ID_MSIX, R.PCI_MSIX_CAP_SIZE, cap_offset)
        cfg.set(self.offset + R.PCI_MSIX_FLAGS, nentries - 1, 2)
        cfg.set(self.offset + R.PCI_MSIX_TABLE, table_offset | table_bar_nr, 4)
        cfg.set(self.offset + R.PCI_MSIX_PBA, pba_offset | pba_bar_nr, 4)
        cfg.wmask[self.offset + _CONTROL] |= 0xC0
        self.function_masked = True
        self.sent = 0
        """Messages written (statistics)."""
        self._mask_all()
        self.table_region = MemoryRegion.init_io("msix-table", table_size, _TableOps(self),
                                                 owner=dev.owner)
        self.pba_region = MemoryRegion.init_io("msix-pba", pba_size, _PbaOps(self),
                                               owner=dev.owner)
        table_bar.add_subregion(table_offset, self.table_region)
        pba_bar.add_subregion(pba_offset, self.pba_region)
        dev.msix = self

    # -- state ----------------------------------------------------------------------------

    @property
    def control(self) -> int:
        """The byte with MASKALL (0x40) and ENABLE (0x80)."""
        return self.dev.config.get_byte(self.offset + _CONTROL)

    @property
    def enabled(self) -> bool:
        """Whether the guest enabled MSI-X."""
        return bool(self.control & 0x80)

    def _vector_masked(self, vector: int, function_masked: bool) -> bool:
        ctrl = self.table[vector * 16 + R.PCI_MSIX_ENTRY_VECTOR_CTRL]
        return function_masked or bool(ctrl & R.PCI_MSIX_ENTRY_CTRL_MASKBIT)

    def is_masked(self, vector: int) -> bool:
        """Whether ``vector`` is masked (own bit, function mask, or MSI-X disabled)."""
        return self._vector_masked(vector, self.function_masked)

    def is_pending(self, vector: int) -> bool:
        """Whether ``vector``'s pending bit is set."""
        return bool(self.pba[vector // 8] >> (vector % 8) & 1)

    def _set_pending(self, vector: int, on: bool) -> None:
        if on:
            self.pba[vector // 8] |= 1 << (vector % 8)
        else:
            self.pba[vector // 8] &= ~(1 << (vector % 8)) & 0xFF

    def message(self, vector: int) -> tuple[int, int]:
        """Return ``(address, data)`` of table entry ``vector``."""
        entry = self.table[vector * 16:vector * 16 + 16]
        return int.from_bytes(entry[0:8], "little"), int.from_bytes(entry[8:12], "little")

    def _mask_all(self) -> None:
        for vector in range(self.nentries):
            self.table[vector * 16 + R.PCI_MSIX_ENTRY_VECTOR_CTRL] |= \
                R.PCI_MSIX_ENTRY_CTRL_MASKBIT

    # -- sending ---------------------------------------------------------------------------

    def notify(self, vector: int) -> bool:
        """Send ``vector`` or mark it pending (QEMU's ``msix_notify``). Machine lock held.

        Returns False when MSI-X is disabled (nothing happens) or the write failed.

        Raises:
            HwModelError: ``vector`` is not in the table.
        """
        if not 0 <= vector < self.nentries:
            raise HwModelError(f"{self.dev.type_name}: MSI-X vector {vector} is not in the "
                               f"{self.nentries}-entry table")
        if not self.enabled:
            return False
        if self.is_masked(vector):
            self._set_pending(vector, True)
            return True
        return self._send(vector)

    def _send(self, vector: int) -> bool:
        address, data = self.message(vector)
        if self.dev.dma_write(address, data.to_bytes(4, "little")) != MEMTX_OK:
            return False
        self.sent += 1
        return True

    def _handle_mask_update(self, vector: int, was_masked: bool) -> None:
        masked = self.is_masked(vector)
        if masked == was_masked:
            return
        if not masked and self.is_pending(vector):
            self._set_pending(vector, False)
            self._send(vector)

    def _table_write(self, offset: int, value: int) -> None:
        vector = offset // 16
        was_masked = self.is_masked(vector)
        self.table[offset:offset + 4] = (value & 0xFFFFFFFF).to_bytes(4, "little")
        self._handle_mask_update(vector, was_masked)

    # -- config hooks ------------------------------------------------------------------------

    def write_config(self, offset: int, value: int, size: int) -> None:
        """Follow a config write to the control byte (QEMU's ``msix_write_config``)."""
        pos = self.offset + _CONTROL
        if not offset <= pos < offset + size:
            return
        was_masked = self.function_masked
        self.function_masked = not self.enabled or bool(self.control & 0x40)
        if not self.enabled:
            return
        self.dev.deassert_intx()
        if self.function_masked == was_masked:
            return
        for vector in range(self.nentries):
            self._handle_mask_update(vector, self._vector_masked(vector, was_masked))

    def reset(self) -> None:
        """Disable MSI-X, clear table and PBA, and mask every vector (QEMU's ``msix_reset``)."""
        cfg = self.dev.config
        pos = self.offset + _CONTROL
        cfg.config[pos] &= ~cfg.wmask[pos] & 0xFF
        self.table[:] = bytes(len(self.table))
        self.pba[:] = bytes(len(self.pba))
        self._mask_all()
        self.function_masked = True

    def __repr__(self) -> str:
        return (f"<MSIXCap at {self.offset:#x} {'on' if self.enabled else 'off'} "
                f"{self.nentries} entries>")


def msix_init_exclusive_bar(dev: PCIDevice, nentries: int, bar_nr: int) -> MSIXCap:
    """Give ``dev`` MSI-X in a BAR of its own (QEMU's ``msix_init_exclusive_bar``).

    The BAR is a 32-bit memory BAR of at least 4 KiB: table at 0, PBA at
    half the BAR (or right after a larger table).
    """
    bar_size = 4096
    pba_offset = bar_size // 2
    pba_size = ((nentries + 63) // 64) * 8
    if nentries * R.PCI_MSIX_ENTRY_SIZE > pba_offset:
        pba_offset = nentries * R.PCI_MSIX_ENTRY_SIZE
    if pba_offset + pba_size > 4096:
        bar_size = pba_offset + pba_size
    bar_size = 1 << (bar_size - 1).bit_length()
    bar = MemoryRegion.init_container(f"{dev.type_name}-msix", bar_size, owner=dev.owner)
    cap = MSIXCap(dev, nentries, bar, bar_nr, 0, bar, bar_nr, pba_offset)
    dev.register_bar(bar_nr, bar)
    return cap
