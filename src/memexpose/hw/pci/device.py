"""A PCI function: config space, BARs mapped where the guest puts them, INTx, DMA.

``PCIDevice`` follows QEMU's ``hw/pci/pci.c`` closely:

* **BARs.** ``register_bar`` writes the type bits and a write mask of
  ``~(size - 1)``, so sizing (write all-ones, read back) answers exactly
  what QEMU and real hardware answer. After every config write that touches
  a BAR, the ROM BAR or the command register, ``_update_mappings`` computes
  each BAR's address as QEMU's ``pci_bar_address`` does and moves the BAR's
  region in the bus's memory or I/O space, with priority 1 (QEMU's
  ``memory_region_add_subregion_overlap(..., 1)``). The region can be any
  region: MMIO, RAM, or a host mapping (the passthrough model).
* **INTx.** ``set_irq`` drives the pin named by ``PCI_INTERRUPT_PIN``; the
  bus routes it (swizzling through bridges) to the host's lines, which OR
  all devices sharing them. ``PCI_COMMAND_INTX_DISABLE`` masks the pin and
  ``PCI_STATUS_INTERRUPT`` shows it.
* **DMA.** ``dma_read``/``dma_write`` go through the device's bus-master
  address space: a container holding an alias of the bus's DMA root (system
  memory, or an IOMMU region), enabled only while ``PCI_COMMAND_MASTER`` is
  set. With bus mastering off every DMA fails with ``MEMTX_DECODE_ERROR``
  (reads fill zeros), as in QEMU; ``last_dma_fault`` says why.

Guest-facing paths never raise: an illegal config access reaching the
device through a host bridge is cut or refused the way QEMU does.
Python-API misuse (``config_read(3, 4)``) raises ``PCIConfigAccessError``.
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import TYPE_CHECKING

from memexpose.errors import HwModelError, PCIConfigAccessError
from memexpose.hw.dma import DmaFault, explain_access
from memexpose.hw.pci import regs as R
from memexpose.hw.pci.config import PCIConfigSpace
from memexpose.hw.sysbus import device_owner
from memexpose.memory import (
    MEMTX_OK,
    AddressSpace,
    MemoryRegion,
    MemTxAttrs,
    MemTxResult,
)

if TYPE_CHECKING:
    from collections.abc import Buffer

    from memexpose.hw.pci.bus import PCIBus
    from memexpose.hw.pci.msi import MSICap
    from memexpose.hw.pci.msix import MSIXCap

__all__ = ["PCI_BAR_UNMAPPED", "PCIBar", "PCIDevice", "pci_devfn", "pci_func", "pci_slot"]

log = logging.getLogger(__name__)

PCI_BAR_UNMAPPED = (1 << 64) - 1
"""The address of a BAR that is not mapped (QEMU's ``PCI_BAR_UNMAPPED``, ~0)."""

_UINT32_MAX = 0xFFFFFFFF
_HWADDR_MAX = (1 << 64) - 1
_UNPACK = {1: struct.Struct("<B").unpack_from, 2: struct.Struct("<H").unpack_from,
           4: struct.Struct("<I").unpack_from}


def pci_devfn(slot: int, function: int) -> int:
    """Return the devfn of ``slot`` (0..31) and ``function`` (0..7)."""
    if not 0 <= slot < R.PCI_SLOT_MAX or not 0 <= function < R.PCI_FUNC_MAX:
        raise HwModelError(f"slot {slot} function {function}: slots are 0..31, functions 0..7")
    return slot << 3 | function


def pci_slot(devfn: int) -> int:
    """Return the slot of ``devfn``."""
    return devfn >> 3 & 0x1F


def pci_func(devfn: int) -> int:
    """Return the function number of ``devfn``."""
    return devfn & 7


def _overlaps(start: int, end: int, reg: int, size: int) -> bool:
    return start < reg + size and reg < end


class PCIBar:
    """One base address register (or the expansion ROM) and the region behind it.

    Attributes:
        index: 0..5, or 6 (``PCI_ROM_SLOT``) for the expansion ROM.
        region: what appears at the BAR's address (any region).
        size: the BAR size, a power of two (the region may be smaller).
        type_bits: the low bits the BAR register shows (I/O, 64-bit, prefetch).
        addr: where it is mapped now, or ``PCI_BAR_UNMAPPED``.
    """

    __slots__ = ("addr", "index", "region", "size", "type_bits")

    def __init__(self, index: int, region: MemoryRegion, size: int, type_bits: int) -> None:
        self.index = index
        self.region = region
        self.size = size
        self.type_bits = type_bits
        self.addr = PCI_BAR_UNMAPPED

    @property
    def is_io(self) -> bool:
        """An I/O BAR (decoded in the I/O space)."""
        return bool(self.type_bits & R.PCI_BASE_ADDRESS_SPACE_IO)

    @property
    def is_64(self) -> bool:
        """A 64-bit memory BAR (occupies two BAR registers)."""
        return not self.is_io and bool(self.type_bits & R.PCI_BASE_ADDRESS_MEM_TYPE_64)

    @property
    def prefetchable(self) -> bool:
        """A prefetchable memory BAR."""
        return not self.is_io and bool(self.type_bits & R.PCI_BASE_ADDRESS_MEM_PREFETCH)

    @property
    def is_rom(self) -> bool:
        """The expansion ROM BAR."""
        return self.index == R.PCI_ROM_SLOT

    @property
    def mapped(self) -> bool:
        """Whether the BAR is mapped now."""
        return self.addr != PCI_BAR_UNMAPPED

    def describe(self) -> str:
        """Return e.g. ``64 bit prefetchable memory`` or ``I/O``."""
        if self.is_io:
            return "I/O"
        return f"{64 if self.is_64 else 32} bit{' prefetchable' if self.prefetchable else ''} " \
               "memory"

    def __repr__(self) -> str:
        where = f"{self.addr:#x}" if self.mapped else "unmapped"
        name = "ROM" if self.is_rom else f"BAR{self.index}"
        return f"<PCIBar {name} {self.describe()} size={self.size:#x} at {where}>"


class PCIDevice:
    """A PCI function with a type 0 header (bridges subclass it with type 1).

    Args:
        type_name: the device type, as QEMU names it (``"edu"``).
        vendor_id, device_id: identification.
        revision: ``PCI_REVISION_ID``.
        class_code: class and subclass (``0x00ff`` for "other"), 16 bits.
        prog_if: programming interface byte.
        subsystem_vendor_id, subsystem_id: subsystem ids (type 0 only);
            QEMU's defaults 1af4:1100 when both are None.
        interrupt_pin: 0 (none) or 1..4 for INTA..INTD.
        express: a PCI Express function (4 KiB config space).
        multifunction: set the multi-function bit (needed on function 0 when
            other functions share the slot).
        id: user-given device id (``info pci`` prints it; default "").
        path: canonical path for ``info mtree -o``.

    Invariants:
        * ``bars[i]`` is None or a ``PCIBar`` with ``index == i``; the slot
          after a 64-bit BAR is None and cannot be registered;
        * a BAR is mapped in the bus space exactly when its ``addr`` is not
          ``PCI_BAR_UNMAPPED``, at ``addr``, with priority 1;
        * ``_irq_state`` bit n is the level the device drives on pin n; the
          bus sees it unless INTx is disabled;
        * the bus-master alias is enabled iff ``PCI_COMMAND_MASTER`` is set.
    """

    header_type = R.PCI_HEADER_TYPE_NORMAL

    def __init__(self, type_name: str, *, vendor_id: int, device_id: int, revision: int = 0,
                 class_code: int = R.PCI_CLASS_OTHERS, prog_if: int = 0,
                 subsystem_vendor_id: int | None = None, subsystem_id: int | None = None,
                 interrupt_pin: int = 0, express: bool = False, multifunction: bool = False,
                 id: str | None = None, path: str | None = None) -> None:
        if not 0 <= interrupt_pin <= 4:
            raise HwModelError(f"{type_name}: interrupt_pin must be 0 (none) or 1..4 (INTA..INTD)")
        for label, value, bits in (("vendor_id", vendor_id, 16), ("device_id", device_id, 16),
                                   ("revision", revision, 8), ("class_code", class_code, 16),
                                   ("prog_if", prog_if, 8)):
            if not 0 <= value < 1 << bits:
                raise HwModelError(f"{type_name}: {label} {value:#x} does not fit in {bits} bits")
        self.type_name = type_name
        self.id = id
        self.owner = device_owner(type_name, path=path, id=id)
        self.multifunction = multifunction
        self.config = PCIConfigSpace(R.PCIE_CONFIG_SPACE_SIZE if express
                                     else R.PCI_CONFIG_SPACE_SIZE)
        cfg = self.config
        cfg.set(R.PCI_VENDOR_ID, vendor_id, 2)
        cfg.set(R.PCI_DEVICE_ID, device_id, 2)
        cfg.set(R.PCI_REVISION_ID, revision, 1)
        cfg.set(R.PCI_CLASS_PROG, prog_if, 1)
        cfg.set(R.PCI_CLASS_DEVICE, class_code, 2)
        cfg.set(R.PCI_HEADER_TYPE, self.header_type, 1)
        cfg.set(R.PCI_INTERRUPT_PIN, interrupt_pin, 1)
        if self.header_type == R.PCI_HEADER_TYPE_NORMAL:
            if subsystem_vendor_id is None and subsystem_id is None:
                subsystem_vendor_id = R.PCI_SUBVENDOR_ID_REDHAT_QUMRANET
                subsystem_id = R.PCI_SUBDEVICE_ID_QEMU
            cfg.set(R.PCI_SUBSYSTEM_VENDOR_ID, subsystem_vendor_id or 0, 2)
            cfg.set(R.PCI_SUBSYSTEM_ID, subsystem_id or 0, 2)
        elif subsystem_vendor_id is not None or subsystem_id is not None:
            raise HwModelError(f"{type_name}: subsystem ids exist only in type 0 headers")
        self.bars: list[PCIBar | None] = [None] * R.PCI_NUM_REGIONS
        self._bar_reserved = [False] * R.PCI_NUM_REGIONS
        self.msi: MSICap | None = None
        self.msix: MSIXCap | None = None
        self.bus: PCIBus | None = None
        self.devfn = -1
        self.bus_master_as: AddressSpace | None = None
        self._bm_alias: MemoryRegion | None = None
        self._bm_container: MemoryRegion | None = None
        self._irq_state = 0
        self._lock: threading.RLock = threading.RLock()
        self._dma_attrs = MemTxAttrs()
        self._dma_attrs_key = -1
        self.last_dma_fault: DmaFault | None = None
        self.dma_faults = 0
        """How many DMA transfers failed (statistics)."""

    # -- identity -------------------------------------------------------------------

    @property
    def vendor_id(self) -> int:
        """``PCI_VENDOR_ID``."""
        return self.config.get_word(R.PCI_VENDOR_ID)

    @property
    def device_id(self) -> int:
        """``PCI_DEVICE_ID``."""
        return self.config.get_word(R.PCI_DEVICE_ID)

    @property
    def class_code(self) -> int:
        """Class and subclass, 16 bits (``0x0604`` for a PCI bridge)."""
        return self.config.get_word(R.PCI_CLASS_DEVICE)

    @property
    def is_bridge(self) -> bool:
        """Whether the function has a type 1 (PCI-to-PCI bridge) header."""
        return self.header_type == R.PCI_HEADER_TYPE_BRIDGE

    @property
    def address(self) -> str:
        """``bus:slot.function`` in hex, as lspci prints it (``??`` when not on a bus)."""
        if self.bus is None:
            return "??:??.?"
        return f"{self.bus.number:02x}:{pci_slot(self.devfn):02x}.{pci_func(self.devfn)}"

    @property
    def requester_id(self) -> int:
        """``bus << 8 | devfn``, carried by this device's DMA and MSI writes."""
        return (self.bus.number << 8 | self.devfn) if self.bus is not None else 0

    # -- BARs ---------------------------------------------------------------------------

    def _bar_reg(self, index: int) -> int:
        if index != R.PCI_ROM_SLOT:
            return R.PCI_BASE_ADDRESS_0 + 4 * index
        return R.PCI_ROM_ADDRESS1 if self.is_bridge else R.PCI_ROM_ADDRESS

    def register_bar(self, index: int, region: MemoryRegion, *, io: bool = False,
                     mem64: bool = False, prefetchable: bool = False,
                     size: int | None = None) -> PCIBar:
        """Declare BAR ``index`` backed by ``region`` (QEMU's ``pci_register_bar``).

        Args:
            index: 0..5 (0..1 for a bridge).
            region: what the BAR shows once the guest maps it: MMIO, RAM, a
                host mapping, a container.
            io: an I/O BAR (else memory).
            mem64: a 64-bit memory BAR; it also uses register ``index + 1``.
            prefetchable: set the prefetchable bit (memory BARs).
            size: the BAR size, a power of two at least the region's size;
                default the region's size. Memory BARs are at least 16 bytes,
                I/O BARs at least 4, 32-bit BARs at most 2 GiB.

        Returns:
            The new ``PCIBar`` (unmapped until the guest programs it).

        Raises:
            HwModelError: an index in use or out of range, a bad size, a 64-bit
                BAR without room for its upper half, or a device already on a bus.
        """
        nbars = 2 if self.is_bridge else 6
        if not 0 <= index < nbars:
            raise HwModelError(f"{self.type_name}: BAR index {index} is not in 0..{nbars - 1}")
        if io and (mem64 or prefetchable):
            raise HwModelError(f"{self.type_name}: BAR{index}: I/O BARs are neither 64-bit "
                               "nor prefetchable")
        if mem64 and index + 1 >= nbars:
            raise HwModelError(f"{self.type_name}: a 64-bit BAR at index {index} needs "
                               f"register {index + 1} for its upper half; use an index below "
                               f"{nbars - 1}")
        used = [i for i in ((index, index + 1) if mem64 else (index,))
                if self.bars[i] is not None or self._bar_reserved[i]]
        if used:
            raise HwModelError(f"{self.type_name}: BAR register {used[0]} is already in use")
        type_bits = R.PCI_BASE_ADDRESS_SPACE_IO if io else (
            (R.PCI_BASE_ADDRESS_MEM_TYPE_64 if mem64 else 0)
            | (R.PCI_BASE_ADDRESS_MEM_PREFETCH if prefetchable else 0))
        bar_size = self._bar_size(f"BAR{index}", region, size, 4 if io else 16,
                                  (1 << 63) if mem64 else (1 << 31))
        return self._add_bar(index, region, bar_size, type_bits)

    def register_rom(self, region: MemoryRegion, *, size: int | None = None) -> PCIBar:
        """Declare the expansion ROM BAR (at least 2 KiB; enable bit 0 gates it)."""
        if self.bars[R.PCI_ROM_SLOT] is not None:
            raise HwModelError(f"{self.type_name}: the expansion ROM is already registered")
        bar_size = self._bar_size("ROM", region, size, 2048, 1 << 31)
        return self._add_bar(R.PCI_ROM_SLOT, region, bar_size, 0)

    def _bar_size(self, what: str, region: MemoryRegion, size: int | None, minimum: int,
                  maximum: int) -> int:
        if self.bus is not None:
            raise HwModelError(f"{self.type_name}: register {what} before adding the device "
                               "to a bus")
        bar_size = region.size if size is None else size
        if bar_size < region.size:
            raise HwModelError(f"{self.type_name}: {what} size {bar_size:#x} is smaller than "
                               f"its region {region.name!r} ({region.size:#x})")
        if bar_size & (bar_size - 1) or not minimum <= bar_size <= maximum:
            raise HwModelError(
                f"{self.type_name}: {what} size {bar_size:#x} must be a power of two in "
                f"{minimum:#x}..{maximum:#x}; pass size= to round a region of "
                f"{region.size:#x} bytes up")
        return bar_size

    def _add_bar(self, index: int, region: MemoryRegion, size: int, type_bits: int) -> PCIBar:
        if size > region.size:
            # The region is smaller than the BAR: the rest of the BAR is a hole.
            shown = MemoryRegion.init_container(f"{region.name}-bar", size, owner=self.owner)
            shown.add_subregion(0, region)
            region = shown
        bar = PCIBar(index, region, size, type_bits)
        reg = self._bar_reg(index)
        wmask = ~(size - 1) & ((1 << 64) - 1)
        if index == R.PCI_ROM_SLOT:
            wmask |= R.PCI_ROM_ADDRESS_ENABLE
        if bar.is_64:
            self.config.set(reg, type_bits, 8)
            self.config.set_wmask(reg, wmask, 8)
            self._bar_reserved[index + 1] = True
        else:
            self.config.set(reg, type_bits, 4)
            self.config.set_wmask(reg, wmask & 0xFFFFFFFF, 4)
        self.bars[index] = bar
        return bar

    def bar(self, index: int) -> PCIBar:
        """Return BAR ``index`` (6 for the ROM).

        Raises:
            HwModelError: no BAR is registered there.
        """
        bar = self.bars[index] if 0 <= index < R.PCI_NUM_REGIONS else None
        if bar is None:
            raise HwModelError(f"{self.type_name}: no BAR {index} is registered")
        return bar

    def bar_address(self, bar: PCIBar) -> int:
        """Return where ``bar`` must be mapped now (QEMU's ``pci_bar_address``; docs/pci.md P4).

        ``PCI_BAR_UNMAPPED`` when decoding is off (command register, ROM enable
        bit), at address 0 (unless the bus allows it), while being sized
        (all-ones), or when a 32-bit BAR would wrap past 4 GiB.
        """
        cfg = self.config
        reg = self._bar_reg(bar.index)
        cmd = cfg.get_word(R.PCI_COMMAND)
        size = bar.size
        allow_0 = self.bus is not None and self.bus.allow_0_address
        if bar.is_io:
            if not cmd & R.PCI_COMMAND_IO:
                return PCI_BAR_UNMAPPED
            new_addr = cfg.get_long(reg) & ~(size - 1)
            last = new_addr + size - 1
            if last <= new_addr or last >= _UINT32_MAX or (not allow_0 and new_addr == 0):
                return PCI_BAR_UNMAPPED
            return new_addr
        if not cmd & R.PCI_COMMAND_MEMORY:
            return PCI_BAR_UNMAPPED
        new_addr = cfg.get_quad(reg) if bar.is_64 else cfg.get_long(reg)
        if bar.is_rom and not new_addr & R.PCI_ROM_ADDRESS_ENABLE:
            return PCI_BAR_UNMAPPED
        new_addr &= ~(size - 1) & _HWADDR_MAX
        last = new_addr + size - 1
        if last <= new_addr or last == PCI_BAR_UNMAPPED or (not allow_0 and new_addr == 0):
            return PCI_BAR_UNMAPPED
        if not bar.is_64 and last >= _UINT32_MAX:
            return PCI_BAR_UNMAPPED
        if last >= _HWADDR_MAX:
            return PCI_BAR_UNMAPPED
        return new_addr

    def _update_mappings(self) -> None:
        """Move every BAR to where its registers say (``pci_update_mappings``; P4, P5).

        Machine lock held (the transaction takes it).
        """
        bus = self.bus
        if bus is None:
            return
        with bus.system.transaction():
            for bar in self.bars:
                if bar is None:
                    continue
                new_addr = self.bar_address(bar)
                if new_addr == bar.addr:
                    continue
                space = bus.io_space if bar.is_io else bus.mem_space
                if bar.addr != PCI_BAR_UNMAPPED:
                    space.del_subregion(bar.region)
                bar.addr = new_addr
                if new_addr != PCI_BAR_UNMAPPED:
                    space.add_subregion_overlap(new_addr, bar.region, 1)

    # -- config space -----------------------------------------------------------------

    def config_read(self, offset: int, size: int) -> int:
        """Return ``size`` (1, 2, 4) bytes of config space at ``offset`` as the guest sees them.

        Raises:
            PCIConfigAccessError: illegal size, alignment, or past the config space.
        """
        if size not in _UNPACK or offset & (size - 1) or not 0 <= offset <= \
                self.config.size - size:
            self.config.read(offset, size)  # raises with the precise message
        return self.do_config_read(offset, size)

    def config_write(self, offset: int, value: int, size: int) -> None:
        """Apply a config write of ``size`` (1, 2, 4) bytes as the guest would.

        Masks apply, and BARs, INTx, bus mastering and MSI follow. Takes the
        machine lock.

        Raises:
            PCIConfigAccessError: illegal size, alignment, or past the config space.
        """
        if size not in (1, 2, 4) or offset & (size - 1) or not 0 <= offset <= \
                self.config.size - size:
            raise PCIConfigAccessError(
                f"{self.type_name}: config write of {size} bytes at {offset:#x}: sizes are 1, "
                f"2 or 4, naturally aligned, inside {self.config.size:#x} bytes",
                offset=offset, size=size)
        with self._lock:
            self.do_config_write(offset, value & ((1 << (8 * size)) - 1), size)

    def do_config_read(self, offset: int, size: int) -> int:
        """Read config bytes (QEMU's ``config_read`` hook); override for side effects.

        Called by host bridges with any ``offset``/``size`` that fits (an
        unaligned dword through 0xcf8 with low bits set reads across fields,
        as in QEMU). Machine lock held.
        """
        return int.from_bytes(self.config.config[offset:offset + size], "little")

    def do_config_write(self, offset: int, value: int, size: int) -> None:
        """Apply a config write (``pci_default_write_config``; P1, P4); override and chain.

        Machine lock held.
        """
        cfg = self.config
        was_disabled = self._intx_disabled()
        cfg.write_unchecked(offset, value, size)
        end = offset + size
        covers_command = offset <= R.PCI_COMMAND < end
        if (_overlaps(offset, end, R.PCI_BASE_ADDRESS_0, 24)
                or _overlaps(offset, end, R.PCI_ROM_ADDRESS, 4)
                or _overlaps(offset, end, R.PCI_ROM_ADDRESS1, 4) or covers_command):
            self._update_mappings()
        if covers_command:
            self._update_irq_disabled(was_disabled)
            if self._bm_alias is not None:
                self._bm_alias.set_enabled(
                    bool(cfg.get_word(R.PCI_COMMAND) & R.PCI_COMMAND_MASTER))
        if self.msi is not None:
            self.msi.write_config(offset, value, size)
        if self.msix is not None:
            self.msix.write_config(offset, value, size)

    # -- INTx -------------------------------------------------------------------------

    @property
    def interrupt_pin(self) -> int:
        """``PCI_INTERRUPT_PIN``: 0 for none, 1..4 for INTA..INTD."""
        return self.config.get_byte(R.PCI_INTERRUPT_PIN)

    def _intx_disabled(self) -> bool:
        return bool(self.config.get_word(R.PCI_COMMAND) & R.PCI_COMMAND_INTX_DISABLE)

    def set_irq(self, level: bool | int) -> None:
        """Drive this function's INTx pin (QEMU's ``pci_set_irq``). Machine lock held.

        Raises:
            HwModelError: the function has no interrupt pin.
        """
        pin = self.interrupt_pin - 1
        if pin < 0:
            raise HwModelError(f"{self.type_name} has no interrupt pin (PCI_INTERRUPT_PIN = 0)")
        self.set_irq_pin(pin, level)

    def set_irq_pin(self, pin: int, level: bool | int) -> None:
        """Drive INTx pin ``pin`` (0..3 = INTA..INTD); QEMU's ``pci_irq_handler`` (P9)."""
        bit = 1 << pin
        new = bit if level else 0
        if (self._irq_state & bit) == new:
            return
        self._irq_state = (self._irq_state & ~bit) | new
        status = self.config.config
        if self._irq_state:
            status[R.PCI_STATUS] |= R.PCI_STATUS_INTERRUPT
        else:
            status[R.PCI_STATUS] &= ~R.PCI_STATUS_INTERRUPT & 0xFF
        if self._intx_disabled() or self.bus is None:
            return
        self.bus.change_irq_level(self, pin, 1 if new else -1)

    def irq_level(self, pin: int | None = None) -> bool:
        """Return the level the device drives on ``pin`` (its own pin when None)."""
        if pin is None:
            pin = self.interrupt_pin - 1
        return pin >= 0 and bool(self._irq_state >> pin & 1)

    def _update_irq_disabled(self, was_disabled: bool) -> None:
        disabled = self._intx_disabled()
        if disabled == was_disabled or self.bus is None:
            return
        for pin in range(R.PCI_NUM_PINS):
            if self._irq_state >> pin & 1:
                self.bus.change_irq_level(self, pin, -1 if disabled else 1)

    def deassert_intx(self) -> None:
        """Lower every INTx pin (QEMU's ``pci_device_deassert_intx``)."""
        for pin in range(R.PCI_NUM_PINS):
            self.set_irq_pin(pin, 0)

    # -- bus attachment -----------------------------------------------------------------

    def _attach(self, bus: PCIBus, devfn: int) -> None:
        """Join ``bus`` at ``devfn`` (called by ``PCIBus.add_device``)."""
        self.bus = bus
        self.devfn = devfn
        self._lock = bus.system.lock
        if self.multifunction:
            self.config.config[R.PCI_HEADER_TYPE] |= R.PCI_HEADER_TYPE_MULTI_FUNCTION
        dma_root = bus.dma_root_for(self)
        self._bm_container = MemoryRegion.init_container("bus master container",
                                                         dma_root.size, owner=self.owner)
        self._bm_alias = MemoryRegion.init_alias("bus master", dma_root, 0, dma_root.size,
                                                 owner=self.owner)
        self._bm_alias.set_enabled(
            bool(self.config.get_word(R.PCI_COMMAND) & R.PCI_COMMAND_MASTER))
        self._bm_container.add_subregion(0, self._bm_alias)
        self.bus_master_as = AddressSpace(self._bm_container, self.type_name,
                                          system=bus.system)
        self._update_mappings()
        self.realize()

    def _detach(self) -> None:
        """Leave the bus: unmap BARs, drop INTx, destroy the bus-master address space."""
        bus = self.bus
        if bus is None:
            return
        self.unrealize()
        with bus.system.transaction():
            self.deassert_intx()
            for bar in self.bars:
                if bar is not None and bar.addr != PCI_BAR_UNMAPPED:
                    (bus.io_space if bar.is_io else bus.mem_space).del_subregion(bar.region)
                    bar.addr = PCI_BAR_UNMAPPED
            if self.bus_master_as is not None:
                self.bus_master_as.destroy()
        self.bus = None
        self.devfn = -1
        self.bus_master_as = None

    def realize(self) -> None:
        """Hook: the device has joined a bus (timers, threads). Default: nothing."""

    def unrealize(self) -> None:
        """Hook: the device is leaving its bus; stop what ``realize`` started."""

    # -- reset --------------------------------------------------------------------------

    def reset(self) -> None:
        """Return to power-on state (QEMU's ``pci_do_device_reset`` + the device's reset).

        Clears the writable command, status and interrupt-line bits and the
        cache line size, rewrites every BAR to its type bits (unmapping it),
        resets MSI/MSI-X, lowers INTx, then calls ``device_reset``.
        """
        with self._lock:
            cfg = self.config
            self.deassert_intx()
            for reg, size in ((R.PCI_COMMAND, 2), (R.PCI_STATUS, 2), (R.PCI_INTERRUPT_LINE, 1)):
                clear = int.from_bytes(cfg.wmask[reg:reg + size], "little") | \
                    int.from_bytes(cfg.w1cmask[reg:reg + size], "little")
                cfg.set(reg, cfg.get(reg, size) & ~clear, size)
            cfg.config[R.PCI_CACHE_LINE_SIZE] = 0
            for bar in self.bars:
                if bar is not None:
                    cfg.set(self._bar_reg(bar.index), bar.type_bits, 8 if bar.is_64 else 4)
            self._update_mappings()
            if self._bm_alias is not None:
                self._bm_alias.set_enabled(False)
            if self.msi is not None:
                self.msi.reset()
            if self.msix is not None:
                self.msix.reset()
            self.device_reset()

    def device_reset(self) -> None:
        """Hook: reset the device's own registers. Machine lock held."""

    # -- DMA ----------------------------------------------------------------------------

    @property
    def bus_master_enabled(self) -> bool:
        """Whether ``PCI_COMMAND_MASTER`` is set."""
        return bool(self.config.get_word(R.PCI_COMMAND) & R.PCI_COMMAND_MASTER)

    def dma_attrs(self) -> MemTxAttrs:
        """Return the attributes of this device's DMA (its requester id)."""
        rid = self.requester_id
        if rid != self._dma_attrs_key:
            self._dma_attrs = MemTxAttrs(requester_id=rid)
            self._dma_attrs_key = rid
        return self._dma_attrs

    def _dma_as(self) -> AddressSpace:
        as_ = self.bus_master_as
        if as_ is None:
            raise HwModelError(f"{self.type_name} is on no bus; add it to a PCIBus before DMA")
        return as_

    def dma_read_into(self, addr: int, buf: Buffer) -> MemTxResult:
        """Fill ``buf`` from bus address ``addr`` through the bus-master address space.

        Returns the OR of the results; on failure ``last_dma_fault`` says
        why. Unreachable bytes read as 0 (QEMU fills them the same way).
        An empty buffer is a no-op. Machine lock held.

        Raises:
            HwModelError: the device is on no bus.
        """
        as_ = self._dma_as()
        attrs = self.dma_attrs()
        result = as_.read_into(addr, buf, attrs)
        if result != MEMTX_OK:
            self._dma_failed(as_, addr, memoryview(buf).nbytes, False, result, attrs)
        return result

    def dma_read(self, addr: int, size: int) -> tuple[bytes, MemTxResult]:
        """Return ``size`` bytes read from bus address ``addr``, and the result."""
        buf = bytearray(size)
        result = self.dma_read_into(addr, buf)
        return bytes(buf), result

    def dma_write(self, addr: int, data: Buffer) -> MemTxResult:
        """Write ``data`` to bus address ``addr`` through the bus-master address space.

        Returns the OR of the results; on failure ``last_dma_fault`` says why.
        Nothing reaches memory while bus mastering is off. Machine lock held.

        Raises:
            HwModelError: the device is on no bus.
        """
        as_ = self._dma_as()
        attrs = self.dma_attrs()
        result = as_.write_bytes(addr, data, attrs)
        if result != MEMTX_OK:
            self._dma_failed(as_, addr, memoryview(data).nbytes, True, result, attrs)
        return result

    # docs/pci.md P10: record why, only on failure, so the DMA path stays lean.
    def _dma_failed(self, as_: AddressSpace, addr: int, size: int, is_write: bool,
                    result: MemTxResult, attrs: MemTxAttrs) -> None:
        if not self.bus_master_enabled:
            reason = ("bus mastering is off (PCI_COMMAND_MASTER clear): the device's "
                      "bus-master address space maps nothing")
        else:
            reason = explain_access(as_, addr, size, is_write, attrs)
        self.last_dma_fault = DmaFault(addr, size, is_write, result, reason)
        self.dma_faults += 1
        log.debug("%s %s: %s", self.type_name, self.address, self.last_dma_fault)

    def _check_invariants(self) -> None:
        """Assert the class invariants (tests call this)."""
        self.config._check_invariants()
        for i, bar in enumerate(self.bars):
            if bar is None:
                continue
            assert bar.index == i, bar
            if bar.is_64:
                assert self.bars[i + 1] is None and self._bar_reserved[i + 1], bar
            if bar.addr == PCI_BAR_UNMAPPED or self.bus is None:
                assert bar.region.container is None or self.bus is None, bar
            else:
                space = self.bus.io_space if bar.is_io else self.bus.mem_space
                assert bar.region.container is space and bar.region.addr == bar.addr, bar
                assert bar.region.priority == 1, bar
                assert bar.addr == self.bar_address(bar), bar
        assert bool(self._irq_state) == bool(
            self.config.get_word(R.PCI_STATUS) & R.PCI_STATUS_INTERRUPT)
        if self._bm_alias is not None:
            assert self._bm_alias.enabled == self.bus_master_enabled

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} {self.type_name} {self.vendor_id:04x}:"
                f"{self.device_id:04x} at {self.address}>")
