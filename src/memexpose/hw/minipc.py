"""A PC-shaped memory map around one PCI host: the test bench for PCI models.

``MiniPC`` is what a q35 guest sees of PCI, and nothing else: RAM at 0, a
``pci`` container for BARs under system memory at priority -1 (so RAM
shadows a BAR placed over it, as in QEMU), the ``io`` port space whose
holes read all-ones, 0xCF8/0xCFC, ECAM at q35's 0xb0000000, 24 GSI lines
with q35's INTx routing (slot 4 INTA is GSI 20), a virtual clock, and the
generic host bridge function at 00.0. It is not a machine: no CPU, no
firmware. ``enumerate()`` plays the firmware.
"""

from __future__ import annotations

from memexpose.hw.clock import VirtualClock
from memexpose.hw.irq import IrqLine
from memexpose.hw.pci.bus import PCIBus
from memexpose.hw.pci.device import PCIDevice
from memexpose.hw.pci.enumerate import EnumerationResult, PCIEnumerator
from memexpose.hw.pci.host import EcamConfigAccess, PCIHost, PCIHostBridgeDevice, q35_map_irq
from memexpose.hw.pci.info import format_info_pci
from memexpose.hw.qtestlike import QtestLikeDriver
from memexpose.memory import (
    AddressSpace,
    MemoryRegion,
    MemorySystem,
    UnassignedIOOps,
)

__all__ = ["MiniPC"]

ECAM_BASE = 0xB0000000
ECAM_SIZE = 0x10000000
MEM32_WINDOW = (0xC0000000, 0xFEC00000 - 0xC0000000)
MEM64_WINDOW = (0x80_0000_0000, 0x80_0000_0000)
IO_WINDOW = (0xC000, 0x4000)


class MiniPC:
    """System memory, I/O ports, a PCI host with ECAM and 0xCF8, GSIs and a clock.

    Args:
        ram_size: bytes of RAM at address 0 (at most 2 GiB, below the ECAM).
        host_bridge: put the generic host bridge function at 00.0.
        name: the memory system's name.

    Attributes:
        system, clock: the memory system (its lock is the machine lock) and virtual clock.
        sysmem, ram, pci_mem, io: the regions.
        memory, io_as: the address spaces ``memory`` and ``I/O``.
        gsi: 24 IRQ lines.
        host, bus: the PCI host and its root bus.
    """

    def __init__(self, *, ram_size: int = 128 << 20, host_bridge: bool = True,
                 name: str = "minipc") -> None:
        self.system = MemorySystem(name)
        self.clock = VirtualClock(self.system.lock)
        self.sysmem = MemoryRegion.init_container("system", 1 << 64)
        self.ram = MemoryRegion.init_ram("pc.ram", ram_size)
        self.pci_mem = MemoryRegion.init_container("pci", 1 << 64)
        self.io = MemoryRegion.init_io("io", 0x10000, UnassignedIOOps())
        with self.system.transaction():
            self.memory = AddressSpace(self.sysmem, "memory", system=self.system)
            self.io_as = AddressSpace(self.io, "I/O", system=self.system)
            self.sysmem.add_subregion(0, self.ram)
            self.sysmem.add_subregion_overlap(0, self.pci_mem, -1)
            self.gsi = [IrqLine(f"gsi{n}") for n in range(24)]
            self.host = PCIHost(self.system, mem_space=self.pci_mem, io_space=self.io,
                                dma_root=self.sysmem, irq_lines=self.gsi, map_irq=q35_map_irq,
                                name="pcie.0")
            self.host.map_legacy_io(self.io, 0xCF8)
            self.host.map_ecam(self.sysmem, ECAM_BASE)
            if host_bridge:
                self.host.bus.add_device(PCIHostBridgeDevice(), 0, 0)

    @property
    def bus(self) -> PCIBus:
        """The root bus."""
        return self.host.bus

    def add(self, dev: PCIDevice, slot: int | None = None, function: int = 0) -> PCIDevice:
        """Plug ``dev`` into the root bus; return it."""
        self.bus.add_device(dev, slot, function)
        return dev

    def gsi_of(self, dev: PCIDevice) -> int | None:
        """Return the GSI number ``dev``'s INTx reaches, or None without a pin."""
        line = self.host.irq_line_for(dev)
        return self.gsi.index(line) if line is not None else None

    def enumerate(self, *, enable_bus_master: bool = False,
                  io: bool = True) -> EnumerationResult:
        """Play the firmware: enumerate through ECAM with q35-like windows and GSIs."""
        def irq_for(bus: int, devfn: int, pin: int) -> int | None:
            dev = self.bus.find_device(bus, devfn)
            return self.gsi_of(dev) if dev is not None else None

        enumerator = PCIEnumerator(
            EcamConfigAccess(self.memory, ECAM_BASE), mem_window=MEM32_WINDOW,
            mem64_window=MEM64_WINDOW, io_window=IO_WINDOW if io else None,
            reserved=[(0, self.ram.size), (ECAM_BASE, ECAM_SIZE)],
            enable_bus_master=enable_bus_master, irq_for=irq_for)
        return enumerator.run()

    def driver(self) -> QtestLikeDriver:
        """Return a qtest-like driver for this platform (GSIs as IRQ numbers)."""
        return QtestLikeDriver(self.memory, self.io_as, clock=self.clock, irqs=self.gsi)

    def info_pci(self) -> str:
        """Return ``info pci`` text for the host."""
        return format_info_pci(self.host)
