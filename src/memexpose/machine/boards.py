"""Boards: ``virt`` (AArch64) and ``pc`` (x86_64), with fixed, documented memory maps.

A board builds a ``Machine``: RAM, a console UART, a PCI host bridge with
its windows, PSCI (``virt``) and an empty *memexpose slot*: a register
block, a window and an IRQ line where a device (the memexpose platform
device, or a test device) plugs in with ``plug_slot``. ``boot`` loads an
image and sets the registers a bare-metal image expects.

docs/machine.md has the maps as tables; the constants below are the
source.
"""

from __future__ import annotations

import abc
import os
from dataclasses import dataclass

from memexpose.devices import PL011, Serial16550
from memexpose.errors import ConfigError, MachineError
from memexpose.hw import IrqLine, PCIHost, PCIHostBridgeDevice
from memexpose.machine.cpu import Arch, Trap
from memexpose.machine.fdt import FdtNode, build_fdt
from memexpose.machine.loader import LoadedImage, load_image
from memexpose.machine.machine import Machine
from memexpose.memory import MemoryRegion, Owner

__all__ = [
    "BOARDS",
    "Board",
    "MapEntry",
    "PcBoard",
    "SlotSpec",
    "VirtBoard",
    "get_board",
    "parse_size",
]

MiB = 1 << 20
GiB = 1 << 30

PSCI_VERSION = 0x8400_0000
PSCI_CPU_OFF = 0x8400_0002
PSCI_SYSTEM_OFF = 0x8400_0008
PSCI_SYSTEM_RESET = 0x8400_0009
PSCI_FEATURES = 0x8400_000A
_PSCI_NOT_SUPPORTED = (1 << 64) - 1


@dataclass(frozen=True)
class MapEntry:
    """One line of a board's memory map."""

    name: str
    addr: int
    size: int
    what: str


@dataclass(frozen=True)
class SlotSpec:
    """Where a board's memexpose slot lives: registers, a window, an IRQ line.

    Attributes:
        regs_addr, regs_size: the register block.
        window_addr, window_size: the window (for a device's exposed memory).
    """

    regs_addr: int
    regs_size: int
    window_addr: int
    window_size: int


def parse_size(value: int | str, *, what: str = "size") -> int:
    """Return bytes from an int or a string with a K/M/G/T suffix (``"256M"``).

    Raises:
        ConfigError: not a positive size.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a size like 256M or 1G, got {value!r}")
    if isinstance(value, int):
        size = value
    elif isinstance(value, str):
        text = value.strip().upper().removesuffix("B").removesuffix("I")
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}.get(text[-1:], 1)
        digits = text[:-1] if scale != 1 else text
        try:
            size = int(digits, 0) * scale
        except ValueError:
            raise ConfigError(f"{what}: cannot read {value!r} as a size; write e.g. 256M "
                              "or 1G") from None
    else:
        raise ConfigError(f"{what}: expected a size like 256M or 1G, got {value!r}")
    if size <= 0:
        raise ConfigError(f"{what}: size must be positive, got {value!r}")
    return size


class Board(abc.ABC):
    """A machine type: a memory map, the devices every machine of it has, boot rules.

    Subclasses set the class attributes and implement ``_populate`` and ``boot``.
    """

    name = ""
    arch = Arch.AARCH64
    ram_base = 0
    default_ram = 128 * MiB
    max_ram = 0
    slot = SlotSpec(0, 0, 0, 0)
    image_addr = 0

    @abc.abstractmethod
    def memory_map(self, ram_size: int) -> list[MapEntry]:
        """Return the board's memory map for ``ram_size`` bytes of RAM, by address."""

    def build(self, *, ram_size: int | None = None, name: str | None = None) -> Machine:
        """Return a new machine of this board, not yet started.

        Raises:
            ConfigError: RAM size outside what the board holds.
        """
        ram_size = self.default_ram if ram_size is None else ram_size
        if ram_size <= 0 or ram_size % (1 << 20):
            raise ConfigError(f"board {self.name}: RAM size {ram_size:#x} must be a positive "
                              "multiple of 1 MiB")
        if ram_size > self.max_ram:
            raise ConfigError(f"board {self.name}: at most {self.max_ram >> 30} GiB of RAM, "
                              f"not {ram_size / GiB:g} GiB")
        machine = Machine(self.arch, name=name or self.name)
        machine.board = self
        machine.ram_size = ram_size
        with machine.memory.transaction():
            self._populate(machine, ram_size)
        return machine

    @abc.abstractmethod
    def _populate(self, machine: Machine, ram_size: int) -> None:
        """Add the board's RAM, ROM and devices to ``machine`` (inside a transaction)."""

    def plug_slot(self, machine: Machine, regs: MemoryRegion,
                  window: MemoryRegion | None = None, *, device: object = None) -> IrqLine:
        """Put a device's registers (and window) into the memexpose slot.

        Args:
            machine: a machine of this board.
            regs: the register block (at most the slot's register size).
            window: the device's window (at most the slot's window size).
            device: the device object, kept in ``machine.slot_device``.

        Returns:
            The IRQ line the device drives (it reaches the CPU's IRQ input).

        Raises:
            MachineError: the slot is taken, or a region does not fit.
        """
        spec = self.slot
        if machine.slot_device is not None:
            raise MachineError(f"{machine.name}: the memexpose slot already holds "
                               f"{machine.slot_device!r}; one device per slot")
        if regs.size > spec.regs_size:
            raise MachineError(f"{machine.name}: slot registers are {spec.regs_size:#x} bytes;"
                               f" {regs.name!r} has {regs.size:#x}")
        if window is not None and window.size > spec.window_size:
            raise MachineError(f"{machine.name}: the slot window is {spec.window_size:#x} "
                               f"bytes; {window.name!r} has {window.size:#x}")
        with machine.memory.transaction():
            machine.system_memory.add_subregion(spec.regs_addr, regs)
            if window is not None:
                machine.system_memory.add_subregion(spec.window_addr, window)
        machine.slot_device = device if device is not None else regs
        return machine.slot_irq

    def boot(self, machine: Machine, path: str | os.PathLike[str], *,
             addr: int | None = None) -> LoadedImage:
        """Load ``path`` (ELF, or raw at ``addr``) and set the entry registers.

        Raises:
            LoaderError: see ``load_image``.
        """
        image = load_image(machine.address_space, path, self.arch, addr=addr, cpu=machine.cpu)
        with machine.lock:
            machine.cpu.pc = image.entry
            self._boot_registers(machine, image)
        return image

    @abc.abstractmethod
    def _boot_registers(self, machine: Machine, image: LoadedImage) -> None:
        """Set the registers the board's boot protocol hands to ``image``."""


class VirtBoard(Board):
    """``virt``: an AArch64 board shaped like QEMU's ``virt`` (no GIC).

    Memory map:

    ============== ============== ==============================================
    0x0900_0000    4 KiB          PL011 UART (console)
    0x0c00_0000    4 KiB          memexpose slot registers
    0x1000_0000    0x2eff_0000    PCIe MMIO window (bus address = CPU address)
    0x3eff_0000    64 KiB         PCIe I/O window (port 0 at its start)
    0x3f00_0000    16 MiB         PCIe ECAM (buses 0-15)
    0x4000_0000    RAM            RAM; the device tree sits in its first 64 KiB
    0x80_0000_0000 64 GiB         memexpose slot window
    ============== ============== ==============================================

    Interrupts: no GIC. Every source (UART, PCI INTA-D, the slot) is OR-ed
    into the CPU's one IRQ input; the handler polls the devices.
    Boot: x0 = the device tree's address, SP = top of RAM, EL1h, DAIF
    masked, MMU off. PSCI 1.0 through ``hvc`` (and ``smc``): SYSTEM_OFF,
    SYSTEM_RESET (no reset model) and CPU_OFF end the run with SHUTDOWN.
    Other smc/hvc calls go to handlers added with ``Machine.add_trap_handler``.
    """

    name = "virt"
    arch = Arch.AARCH64
    ram_base = 0x4000_0000
    default_ram = 128 * MiB
    max_ram = 255 * GiB
    uart_addr = 0x0900_0000
    pcie_mmio = (0x1000_0000, 0x2EFF_0000)
    pcie_pio = (0x3EFF_0000, 0x1_0000)
    pcie_ecam = (0x3F00_0000, 0x100_0000)
    slot = SlotSpec(0x0C00_0000, 0x1000, 0x80_0000_0000, 64 * GiB)
    dtb_addr = 0x4000_0000
    dtb_max = 0x1_0000
    image_addr = 0x4008_0000

    def memory_map(self, ram_size: int) -> list[MapEntry]:
        """Return the map above for ``ram_size`` bytes of RAM."""
        return [
            MapEntry("pl011", self.uart_addr, 0x1000, "PL011 UART"),
            MapEntry("memexpose-regs", self.slot.regs_addr, self.slot.regs_size,
                     "memexpose slot registers"),
            MapEntry("pcie-mmio", *self.pcie_mmio, "PCIe MMIO window"),
            MapEntry("pcie-pio", *self.pcie_pio, "PCIe I/O window"),
            MapEntry("pcie-ecam", *self.pcie_ecam, "PCIe ECAM, buses 0-15"),
            MapEntry("mach-virt.ram", self.ram_base, ram_size, "RAM (device tree at its start)"),
            MapEntry("memexpose-window", self.slot.window_addr, self.slot.window_size,
                     "memexpose slot window"),
        ]

    def _populate(self, machine: Machine, ram_size: int) -> None:
        sysmem = machine.system_memory
        machine.ram = machine.add_ram("mach-virt.ram", self.ram_base, ram_size)
        uart = PL011(output=machine.write_console, path="/machine/pl011")
        uart.mmio_map(0, sysmem, self.uart_addr)
        uart.irq_line.connect(machine.cpu_irq.new_input("pl011"))
        machine.uart = machine.add_device(uart)
        # PCIe: a "pcie-mmio" container (bus addresses), shown through aliases.
        pci_mem = MemoryRegion.init_container("pcie-mmio", 1 << 64)
        pci_io = MemoryRegion.init_container("gpex_ioport", 0x1_0000)
        host = PCIHost(machine.memory, mem_space=pci_mem, io_space=pci_io,
                       dma_root=sysmem, name="pcie.0", express=True,
                       ecam_buses=self.pcie_ecam[1] >> 20)
        owner = Owner("obj", type_name="gpex-pcihost")
        sysmem.add_subregion(self.pcie_mmio[0], MemoryRegion.init_alias(
            "pcie-mmio", pci_mem, self.pcie_mmio[0], self.pcie_mmio[1], owner=owner))
        sysmem.add_subregion(self.pcie_pio[0], MemoryRegion.init_alias(
            "pcie-pio", pci_io, 0, self.pcie_pio[1], owner=owner))
        host.map_ecam(sysmem, self.pcie_ecam[0])
        for i, line in enumerate(host.irq_lines):
            line.connect(machine.cpu_irq.new_input(f"pcie.int{'ABCD'[i]}"))
        host.bus.add_device(PCIHostBridgeDevice(), 0, 0)
        machine.pci_host = host
        machine.pci_bus = host.bus
        machine.add_trap_handler(("hvc", "smc"), lambda trap: _psci(trap), last=True)

    def device_tree(self, machine: Machine) -> FdtNode:
        """Describe ``machine`` (RAM, CPU, PSCI, UART, PCIe, the slot if used)."""
        ram_size = machine.ram_size

        def reg(addr: int, size: int) -> list[int]:
            return [addr >> 32, addr & 0xFFFF_FFFF, size >> 32, size & 0xFFFF_FFFF]

        root = FdtNode("", {"#address-cells": 2, "#size-cells": 2,
                            "compatible": ["memexpose,virt", "linux,dummy-virt"],
                            "model": "memexpose virt (AArch64)"})
        uart_name = f"pl011@{self.uart_addr:x}"
        root.add("chosen", stdout_path=f"/{uart_name}")
        root.add(f"memory@{self.ram_base:x}", device_type="memory",
                 reg=reg(self.ram_base, ram_size))
        cpus = root.add("cpus", address_cells=1, size_cells=0)
        cpus.add("cpu@0", device_type="cpu", compatible="arm,cortex-a72", reg=0,
                 enable_method="psci")
        root.add("psci", compatible=["arm,psci-1.0", "arm,psci-0.2", "arm,psci"], method="hvc")
        root.add(uart_name, compatible=["arm,pl011", "arm,primecell"],
                 reg=reg(self.uart_addr, 0x1000))
        ecam, ecam_size = self.pcie_ecam
        mmio, mmio_size = self.pcie_mmio
        pio, pio_size = self.pcie_pio
        root.add(f"pcie@{ecam:x}", compatible="pci-host-ecam-generic", device_type="pci",
                 reg=reg(ecam, ecam_size), bus_range=[0, (ecam_size >> 20) - 1],
                 address_cells=3, size_cells=2,
                 ranges=[0x0100_0000, 0, 0, 0, pio, 0, pio_size,
                         0x0200_0000, 0, mmio, 0, mmio, 0, mmio_size])
        if machine.slot_device is not None:
            s = self.slot
            describe = getattr(machine.slot_device, "fdt_node", None)
            if describe is not None:  # the device knows its window size (memexpose-platform)
                node = describe(s.regs_addr, s.window_addr)
                root.children.append(FdtNode(node.name, dict(node.props)))
            else:
                root.add(f"memexpose@{s.regs_addr:x}", compatible="memexpose,platform",
                         reg=reg(s.regs_addr, s.regs_size) + reg(s.window_addr, s.window_size),
                         reg_names=["registers", "window"])
        return root

    def _boot_registers(self, machine: Machine, image: LoadedImage) -> None:
        blob = build_fdt(self.device_tree(machine))
        if len(blob) > self.dtb_max:
            raise MachineError(f"device tree of {len(blob)} bytes exceeds {self.dtb_max:#x}")
        if image.segments and min(a for a, _ in image.segments) < self.dtb_addr + len(blob):
            raise MachineError(f"{image.path} overlaps the device tree at {self.dtb_addr:#x}; "
                               f"link it at {self.image_addr:#x}")
        machine.address_space.write_rom(self.dtb_addr, blob)
        cpu = machine.cpu
        cpu.write_register("x0", self.dtb_addr)
        cpu.write_register("sp", self.ram_base + machine.ram_size)


def _psci(trap: Trap) -> bool:
    function = trap.arg(0) & 0xFFFF_FFFF
    if function == PSCI_VERSION:
        trap.set_result(0x0001_0000)
    elif function == PSCI_FEATURES:
        known = trap.arg(1) & 0xFFFF_FFFF in (PSCI_VERSION, PSCI_CPU_OFF, PSCI_SYSTEM_OFF,
                                              PSCI_SYSTEM_RESET, PSCI_FEATURES)
        trap.set_result(0 if known else _PSCI_NOT_SUPPORTED)
    elif function in (PSCI_SYSTEM_OFF, PSCI_SYSTEM_RESET):
        what = "SYSTEM_OFF" if function == PSCI_SYSTEM_OFF else "SYSTEM_RESET (no reset model)"
        trap.cpu.request_stop(f"guest PSCI {what}")
    elif function == PSCI_CPU_OFF:
        trap.cpu.request_stop("guest PSCI CPU_OFF")
    else:
        return False
    return True


class PcBoard(Board):
    """``pc``: an x86_64 board shaped like QEMU's ``pc`` (no legacy chipset).

    Memory map:

    ============== ============== ==============================================
    0x0            RAM below 3G   RAM (images at 1 MiB; stack below 512 KiB)
    0xc000_0000    0x3ec0_0000    PCI MMIO window (the ``pci`` container)
    0xfed0_0000    4 KiB          memexpose slot registers
    0x1_0000_0000  RAM above 3G   RAM beyond 3 GiB, if any
    0x80_0000_0000 64 GiB         memexpose slot window
    ============== ============== ==============================================

    I/O ports: 16550 UART at 0x3f8, PCI configuration at 0xcf8/0xcfc.
    Interrupts: every source is OR-ed into the CPU's IRQ input, delivered at
    IDT vector 32 (see ``UnicornCPU.inject_irq``). Boot: the loader leaves
    the CPU in 64-bit long mode with flat segments and paging off (Unicorn's
    reset state in 64-bit mode) at the ELF entry, RSP = 0x80000, RDI = RAM
    size.
    """

    name = "pc"
    arch = Arch.X86_64
    ram_base = 0
    default_ram = 128 * MiB
    max_ram = 64 * GiB
    below_4g = 0xC000_0000
    pci_window = (0xC000_0000, 0xFEC0_0000 - 0xC000_0000)
    uart_port = 0x3F8
    slot = SlotSpec(0xFED0_0000, 0x1000, 0x80_0000_0000, 64 * GiB)
    stack_top = 0x8_0000
    image_addr = 0x10_0000

    def memory_map(self, ram_size: int) -> list[MapEntry]:
        """Return the map above for ``ram_size`` bytes of RAM."""
        low = min(ram_size, self.below_4g)
        entries = [MapEntry("pc.ram", 0, low, "RAM"),
                   MapEntry("pci", *self.pci_window, "PCI MMIO window"),
                   MapEntry("memexpose-regs", self.slot.regs_addr, self.slot.regs_size,
                            "memexpose slot registers")]
        if ram_size > low:
            entries.append(MapEntry("ram-above-4g", 1 << 32, ram_size - low, "RAM above 4 GiB"))
        entries.append(MapEntry("memexpose-window", self.slot.window_addr,
                                self.slot.window_size, "memexpose slot window"))
        return entries

    def _populate(self, machine: Machine, ram_size: int) -> None:
        sysmem = machine.system_memory
        low = min(ram_size, self.below_4g)
        ram = machine.add_ram("pc.ram", 0, ram_size)
        # The RAM region itself holds all RAM; aliases show it below and above 4 GiB.
        sysmem.del_subregion(ram)
        sysmem.add_subregion(0, MemoryRegion.init_alias("ram-below-4g", ram, 0, low))
        if ram_size > low:
            sysmem.add_subregion(1 << 32, MemoryRegion.init_alias(
                "ram-above-4g", ram, low, ram_size - low))
        machine.ram = ram
        pci_mem = MemoryRegion.init_container("pci", 1 << 64)
        sysmem.add_subregion_overlap(0, pci_mem, -1)
        uart = Serial16550(output=machine.write_console, path="/machine/serial0")
        uart.mmio_map(0, machine.io_region, self.uart_port)
        uart.irq_line.connect(machine.cpu_irq.new_input("serial0"))
        machine.uart = machine.add_device(uart)
        host = PCIHost(machine.memory, mem_space=pci_mem, io_space=machine.io_region,
                       dma_root=sysmem, name="pci.0", express=False, ecam_buses=1)
        host.map_legacy_io(machine.io_region, 0xCF8)
        for i, line in enumerate(host.irq_lines):
            line.connect(machine.cpu_irq.new_input(f"pci.int{'ABCD'[i]}"))
        host.bus.add_device(PCIHostBridgeDevice(), 0, 0)
        machine.pci_host = host
        machine.pci_bus = host.bus

    def _boot_registers(self, machine: Machine, image: LoadedImage) -> None:
        cpu = machine.cpu
        cpu.write_register("rsp", self.stack_top)
        cpu.write_register("rdi", machine.ram_size)


BOARDS: dict[str, Board] = {"virt": VirtBoard(), "pc": PcBoard()}
"""The boards by name."""


def get_board(name: str) -> Board:
    """Return the board called ``name``.

    Raises:
        ConfigError: no such board (the message lists the known ones).
    """
    try:
        return BOARDS[name]
    except KeyError:
        raise ConfigError(f"unknown board {name!r}; known boards: "
                          f"{', '.join(sorted(BOARDS))}") from None
