"""PCI host bridges: the root bus and the two ways software reaches config space.

* **ECAM** (PCIe MMCONFIG): an MMIO region where ``bus << 20 | devfn << 12 |
  offset`` addresses config space; the board maps it (q35: 0xb0000000).
  Any access size the memory layer allows; 8-byte accesses arrive as two
  dwords; a function absent or an offset past its config space reads
  all-ones and drops writes (QEMU's ``pcie_mmcfg_data_read/write``).
* **0xCF8/0xCFC** (configuration mechanism #1): ``pci-conf-idx`` latches a
  dword written at its offset 0 (other sizes and offsets are ignored;
  reads return the latch whatever the offset); ``pci-conf-data`` forwards
  to ``latch | (offset & 3)`` when bit 31 is set, else reads all-ones. A
  dword read with the latch's low bits set reads across fields, exactly as
  QEMU does.

The host also owns INTx routing for its root bus (``map_irq(slot, pin)`` to
one of its IRQ lines, shared and OR-ed by counting) and decides where each
device's DMA goes (``dma_root_for``: memory, or an IOMMU region).

``config_read``/``config_write`` give Python the same path without a
memory access; the ``ConfigAccess`` classes give it through guest-physical
accesses (what firmware does).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from memexpose.errors import HwModelError, PCIConfigAccessError
from memexpose.hw.irq import IrqLine
from memexpose.hw.pci import regs as R
from memexpose.hw.pci.bus import PCIBus
from memexpose.hw.pci.device import PCIDevice, pci_slot
from memexpose.memory import (
    AddressSpace,
    Endianness,
    MemoryRegion,
    MemoryRegionOps,
    MemorySystem,
    Owner,
)

__all__ = [
    "ConfigAccess",
    "EcamConfigAccess",
    "LegacyConfigAccess",
    "PCIHost",
    "PCIHostBridgeDevice",
    "q35_map_irq",
    "swizzle_map_irq",
]

_ALL_ONES = 0xFFFFFFFF


def swizzle_map_irq(slot: int, pin: int) -> int:
    """The standard swizzle: pin ``(slot + pin) % 4`` (use with 4 host lines)."""
    return (slot + pin) % R.PCI_NUM_PINS


def q35_map_irq(slot: int, pin: int) -> int:
    """Q35's reset-time routing in APIC mode: PIRQ E..H, i.e. GSI 20..23.

    ICH9 routes INTx of ordinary slots to PIRQ ``(slot + pin) % 4 + 4`` and
    PIRQ n to GSI ``16 + n``: slot 4 INTA is GSI 20 (checked with qtest's
    ``irq_intercept_in ioapic`` on QEMU 7.2).
    """
    return 16 + (slot + pin) % 4 + 4


class ConfigAccess(Protocol):
    """Something that reads and writes config space by bus number and devfn."""

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        """Return ``size`` bytes at ``offset`` of function ``bus``/``devfn``."""
        ...

    def config_write(self, bus: int, devfn: int, offset: int, value: int, size: int) -> None:
        """Write ``size`` bytes at ``offset`` of function ``bus``/``devfn``."""
        ...


# docs/pci.md P7 (0xCF8/0xCFC) and P6 (ECAM).
class _ConfIdxOps(MemoryRegionOps):
    endianness = Endianness.LITTLE

    def __init__(self, host: PCIHost) -> None:
        self.host = host

    def read(self, offset: int, size: int) -> int:
        return self.host.config_reg

    def write(self, offset: int, value: int, size: int) -> None:
        if offset == 0 and size == 4:
            self.host.config_reg = value


class _ConfDataOps(MemoryRegionOps):
    endianness = Endianness.LITTLE

    def __init__(self, host: PCIHost) -> None:
        self.host = host

    def read(self, offset: int, size: int) -> int:
        reg = self.host.config_reg
        if not reg & 0x80000000:
            return _ALL_ONES
        addr = reg | (offset & 3)
        dev = self.host.bus.find_device(addr >> 16 & 0xFF, addr >> 8 & 0xFF)
        if dev is None:
            return _ALL_ONES
        return self.host._read_common(dev, addr & 0xFF, R.PCI_CONFIG_SPACE_SIZE, size)

    def write(self, offset: int, value: int, size: int) -> None:
        reg = self.host.config_reg
        if not reg & 0x80000000:
            return
        addr = reg | (offset & 3)
        dev = self.host.bus.find_device(addr >> 16 & 0xFF, addr >> 8 & 0xFF)
        if dev is not None:
            self.host._write_common(dev, addr & 0xFF, R.PCI_CONFIG_SPACE_SIZE, value, size)


class _MmcfgOps(MemoryRegionOps):
    endianness = Endianness.LITTLE

    def __init__(self, host: PCIHost) -> None:
        self.host = host

    def read(self, offset: int, size: int) -> int:
        host = self.host
        bus_num = offset >> 20
        # Fast path: the root bus (no bridge walk).
        dev = host.bus.devices[offset >> 12 & 0xFF] if bus_num == host.bus_number else \
            host.bus.find_device(bus_num, offset >> 12 & 0xFF)
        if dev is None:
            return _ALL_ONES
        reg = offset & 0xFFF
        if reg + size <= R.PCI_CONFIG_SPACE_SIZE:
            return dev.do_config_read(reg, size)
        return host._read_common(dev, reg, dev.config.size, size)

    def write(self, offset: int, value: int, size: int) -> None:
        dev = self.host.bus.find_device(offset >> 20 & 0x1FF, offset >> 12 & 0xFF)
        if dev is not None:
            self.host._write_common(dev, offset & 0xFFF, dev.config.size, value, size)


class PCIHost:
    """A host bridge with its root bus.

    Args:
        system: the machine's memory system (its lock is the machine lock).
        mem_space: container where memory BARs of the root bus appear (the
            board places it in system memory, e.g. at priority -1 like QEMU's ``pci``).
        io_space: container (or I/O region) where I/O BARs appear.
        dma_root: what DMA reaches (system memory's root region).
        irq_lines: the host's INTx outputs (default four lines, INTA..INTD).
        map_irq: ``(slot, pin) -> index into irq_lines`` (default the swizzle).
        name: the root bus name (QEMU: ``pcie.0`` on q35, ``pci.0`` on pc).
        express: a PCI Express root bus.
        bus_number: the root bus number.
        ecam_buses: buses the ECAM region covers (1 MiB each).
        allow_0_address: whether BARs may decode at address 0.

    Invariants:
        * ``_irq_count[n]`` is the number of (device, pin) pairs asserting
          line ``n``; ``irq_lines[n].level == (_irq_count[n] > 0)``;
        * ``config_reg`` is the last dword written to 0xcf8.
    """

    def __init__(self, system: MemorySystem, *, mem_space: MemoryRegion,
                 io_space: MemoryRegion, dma_root: MemoryRegion,
                 irq_lines: Sequence[IrqLine] | None = None,
                 map_irq: Callable[[int, int], int] | None = None, name: str = "pcie.0",
                 express: bool = True, bus_number: int = 0, ecam_buses: int = 256,
                 allow_0_address: bool = False) -> None:
        if not 1 <= ecam_buses <= 256:
            raise HwModelError(f"ecam_buses must be 1..256, not {ecam_buses}")
        self.system = system
        self.name = name
        self.bus_number = bus_number
        self.allow_0_address = allow_0_address
        self.dma_root = dma_root
        self.irq_lines = list(irq_lines) if irq_lines is not None else [
            IrqLine(f"{name}.int{'ABCD'[i]}") for i in range(4)]
        self.map_irq = map_irq or swizzle_map_irq
        self._irq_count = [0] * len(self.irq_lines)
        self._iommu: Callable[[PCIBus, int], MemoryRegion | None] | None = None
        self.config_reg = 0
        self.owner = Owner("obj", type_name=f"{name}-host")
        self.bus = PCIBus(name, system=system, mem_space=mem_space, io_space=io_space,
                          host=self, express=express)
        self.conf_idx_region = MemoryRegion.init_io("pci-conf-idx", 4, _ConfIdxOps(self),
                                                    owner=self.owner)
        self.conf_data_region = MemoryRegion.init_io("pci-conf-data", 4, _ConfDataOps(self),
                                                     owner=self.owner)
        self.mmcfg_region = MemoryRegion.init_io("pcie-mmcfg-mmio", ecam_buses << 20,
                                                 _MmcfgOps(self), owner=self.owner)

    # -- placement ------------------------------------------------------------------------

    def map_legacy_io(self, io_space: MemoryRegion, base: int = 0xCF8) -> None:
        """Put ``pci-conf-idx`` at ``base`` and ``pci-conf-data`` at ``base + 4``."""
        io_space.add_subregion(base, self.conf_idx_region)
        io_space.add_subregion(base + 4, self.conf_data_region)

    def map_ecam(self, container: MemoryRegion, base: int, priority: int = 0) -> None:
        """Put the ECAM (MMCONFIG) region at ``base`` in ``container``."""
        container.add_subregion_overlap(base, self.mmcfg_region, priority)

    # -- config space from Python ------------------------------------------------------------

    def _read_common(self, dev: PCIDevice, offset: int, limit: int, size: int) -> int:
        """QEMU's ``pci_host_config_read_common``: all-ones past the limit, else read."""
        if limit > R.PCI_CONFIG_SPACE_SIZE and not self._extended_ok(dev.bus):
            limit = R.PCI_CONFIG_SPACE_SIZE
        if limit <= offset:
            return _ALL_ONES
        return dev.do_config_read(offset, min(size, limit - offset))

    def _write_common(self, dev: PCIDevice, offset: int, limit: int, value: int,
                      size: int) -> None:
        if limit > R.PCI_CONFIG_SPACE_SIZE and not self._extended_ok(dev.bus):
            limit = R.PCI_CONFIG_SPACE_SIZE
        if limit <= offset:
            return
        size = min(size, limit - offset)
        dev.do_config_write(offset, value & ((1 << (8 * size)) - 1), size)

    @staticmethod
    def _extended_ok(bus: PCIBus | None) -> bool:
        while bus is not None:
            if not bus.allows_extended_config():
                return False
            bridge = bus.parent_bridge
            bus = bridge.bus if bridge is not None else None
        return True

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        """Read config space of ``bus``/``devfn`` as an ECAM access would.

        Absent functions and offsets past the function's config space read
        all-ones (truncated to ``size``).

        Raises:
            PCIConfigAccessError: size not 1/2/4, unaligned, offset past 4 KiB,
                or bus/devfn out of range.
        """
        _check_host_access(bus, devfn, offset, size)
        dev = self.bus.find_device(bus, devfn)
        if dev is None:
            return _ALL_ONES >> (32 - 8 * size)
        return self._read_common(dev, offset, dev.config.size, size) & \
            (_ALL_ONES >> (32 - 8 * size))

    def config_write(self, bus: int, devfn: int, offset: int, value: int, size: int) -> None:
        """Write config space of ``bus``/``devfn`` as an ECAM access would (lock taken).

        Raises:
            PCIConfigAccessError: as ``config_read``.
        """
        _check_host_access(bus, devfn, offset, size)
        with self.system.lock:
            dev = self.bus.find_device(bus, devfn)
            if dev is not None:
                self._write_common(dev, offset, dev.config.size, value, size)

    # -- DMA -----------------------------------------------------------------------------------

    def set_iommu(self, func: Callable[[PCIBus, int], MemoryRegion | None] | None) -> None:
        """Route devices' DMA through ``func(bus, devfn)`` (QEMU's ``pci_setup_iommu``).

        ``func`` returns the region a device's DMA reaches (an
        ``IOMMUMemoryRegion``, say), or None for ``dma_root``. It applies to
        devices added afterwards.
        """
        self._iommu = func

    def dma_root_for(self, bus: PCIBus, dev: PCIDevice) -> MemoryRegion:
        """Return the region ``dev``'s bus-master address space aliases."""
        if self._iommu is not None:
            region = self._iommu(bus, dev.devfn)
            if region is not None:
                return region
        return self.dma_root

    # -- INTx ------------------------------------------------------------------------------------

    def change_irq_level(self, slot: int, pin: int, change: int) -> None:
        """Apply a +1/-1 change from root-bus ``slot``/``pin``. Machine lock held."""
        n = self.map_irq(slot, pin)
        if not 0 <= n < len(self.irq_lines):
            raise HwModelError(f"host {self.name!r}: map_irq({slot}, {pin}) = {n} is not a "
                               f"line index (0..{len(self.irq_lines) - 1})")
        count = self._irq_count[n] + change
        if count < 0:
            raise HwModelError(f"host {self.name!r}: IRQ line {n} deasserted more than asserted")
        self._irq_count[n] = count
        self.irq_lines[n].set_level(count > 0)

    def irq_line_for(self, dev: PCIDevice) -> IrqLine | None:
        """Return the host line ``dev``'s INTx pin reaches (swizzled through bridges), or None."""
        pin = dev.interrupt_pin - 1
        if pin < 0 or dev.bus is None:
            return None
        bus, current = dev.bus, dev
        while not bus.is_root:
            bridge = bus.parent_bridge
            assert bridge is not None
            pin = (pci_slot(current.devfn) + pin) % R.PCI_NUM_PINS
            current = bridge
            if bridge.bus is None:
                return None
            bus = bridge.bus
        return self.irq_lines[self.map_irq(pci_slot(current.devfn), pin)]

    def __repr__(self) -> str:
        return f"<PCIHost {self.name!r} bus={self.bus_number}>"


def _check_host_access(bus: int, devfn: int, offset: int, size: int) -> None:
    if not 0 <= bus <= 255 or not 0 <= devfn <= 255:
        raise PCIConfigAccessError(f"bus {bus} devfn {devfn}: buses and devfns are 0..255",
                                   offset=offset, size=size)
    if size not in (1, 2, 4) or offset & (size - 1) or not 0 <= offset <= 0x1000 - size:
        raise PCIConfigAccessError(
            f"config access of {size} bytes at {offset:#x}: sizes are 1, 2 or 4, naturally "
            "aligned, below 0x1000", offset=offset, size=size)


class PCIHostBridgeDevice(PCIDevice):
    """The host bridge's own function at 00.0 (class 0x0600, "Host bridge").

    Defaults to QEMU's generic PCIe host (``gpex-root``, 1b36:0008).
    """

    def __init__(self, *, vendor_id: int = R.PCI_VENDOR_ID_REDHAT, device_id: int = 0x0008,
                 type_name: str = "gpex-root", id: str | None = None) -> None:
        super().__init__(type_name, vendor_id=vendor_id, device_id=device_id,
                         class_code=R.PCI_CLASS_BRIDGE_HOST, id=id)


class EcamConfigAccess:
    """Config access through ECAM in an address space, as firmware and kernels do it.

    Args:
        address_space: where the ECAM region is mapped (system memory).
        base: its base address.
    """

    def __init__(self, address_space: AddressSpace, base: int) -> None:
        self.address_space = address_space
        self.base = base

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        """Read through a guest-physical access (little-endian)."""
        data, _ = self.address_space.read_bytes(
            self.base + (bus << 20 | devfn << 12 | offset), size)
        return int.from_bytes(data, "little")

    def config_write(self, bus: int, devfn: int, offset: int, value: int, size: int) -> None:
        """Write through a guest-physical access (little-endian)."""
        with self.address_space.system.lock:
            self.address_space.write_bytes(self.base + (bus << 20 | devfn << 12 | offset),
                                           (value & ((1 << 8 * size) - 1)).to_bytes(size,
                                                                                    "little"))


class LegacyConfigAccess:
    """Config access through ports 0xCF8/0xCFC of an I/O address space (256 bytes only)."""

    def __init__(self, io_space: AddressSpace, base: int = 0xCF8) -> None:
        self.io_space = io_space
        self.base = base

    def _select(self, bus: int, devfn: int, offset: int) -> None:
        self.io_space.write_bytes(self.base, (0x80000000 | bus << 16 | devfn << 8 |
                                              (offset & 0xFC)).to_bytes(4, "little"))

    def config_read(self, bus: int, devfn: int, offset: int, size: int) -> int:
        """Latch the address at 0xCF8 and read ``size`` bytes at ``0xCFC + (offset & 3)``."""
        if offset >= R.PCI_CONFIG_SPACE_SIZE:
            return _ALL_ONES >> (32 - 8 * size)
        with self.io_space.system.lock:
            self._select(bus, devfn, offset)
            data, _ = self.io_space.read_bytes(self.base + 4 + (offset & 3), size)
        return int.from_bytes(data, "little")

    def config_write(self, bus: int, devfn: int, offset: int, value: int, size: int) -> None:
        """Latch the address at 0xCF8 and write ``size`` bytes at ``0xCFC + (offset & 3)``."""
        if offset >= R.PCI_CONFIG_SPACE_SIZE:
            return
        with self.io_space.system.lock:
            self._select(bus, devfn, offset)
            self.io_space.write_bytes(self.base + 4 + (offset & 3),
                                      (value & ((1 << 8 * size) - 1)).to_bytes(size, "little"))
