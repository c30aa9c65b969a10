"""``info pci`` text in QEMU 7.2's format (lines checked against QEMU's own output)."""

from __future__ import annotations

from memexpose.devices import EduDevice, PCISerial
from memexpose.hw import MiniPC, PCIBridge, PCIDevice, format_info_pci
from memexpose.hw import pci_regs as R
from memexpose.memory import MemoryRegion

# Captured from qemu-system-x86_64 7.2 -M q35 -device edu,addr=4 (HMP `info pci`).
QEMU_EDU_UNMAPPED = """\
  Bus  0, device   4, function 0:
    Class 0255: PCI device 1234:11e8
      PCI subsystem 1af4:1100
      IRQ 0, pin A
      BAR0: 32 bit memory at 0xffffffffffffffff [0x000ffffe].
      id ""
"""
QEMU_EDU_MAPPED = """\
  Bus  0, device   4, function 0:
    Class 0255: PCI device 1234:11e8
      PCI subsystem 1af4:1100
      IRQ 11, pin A
      BAR0: 32 bit memory at 0xfe000000 [0xfe0fffff].
      id ""
"""


def test_edu_block_matches_qemu() -> None:
    pc = MiniPC(host_bridge=False)
    edu = pc.add(EduDevice(pc.clock), slot=4)
    assert format_info_pci(pc.host) == QEMU_EDU_UNMAPPED
    edu.config_write(0x10, 0xFE000000, 4)
    edu.config_write(R.PCI_COMMAND, 0x6, 2)
    edu.config_write(R.PCI_INTERRUPT_LINE, 0x0B, 1)
    assert pc.info_pci() == QEMU_EDU_MAPPED


def test_bridge_io_bar_64bit_prefetch_and_rom_lines() -> None:
    pc = MiniPC(host_bridge=False)
    bridge = pc.add(PCIBridge(id="br0"), slot=5)
    assert bridge.secondary_bus is not None
    serial = PCISerial()
    bridge.secondary_bus.add_device(serial, 2)
    dev = PCIDevice("ram-dev", vendor_id=0x1AF4, device_id=0x1110, class_code=0x0500)
    dev.register_bar(2, MemoryRegion.init_ram("shm", 0x100000), mem64=True, prefetchable=True)
    dev.register_rom(MemoryRegion.init_rom("rom", 0x800))
    pc.add(dev, slot=6)
    bridge.config_write(R.PCI_PRIMARY_BUS, 0x00020100, 4)
    bridge.config_write(R.PCI_IO_BASE, 0x2020, 2)
    serial.config_write(0x10, 0x2000, 4)
    serial.config_write(R.PCI_COMMAND, 1, 2)
    text = pc.info_pci()
    # These lines are what QEMU 7.2 printed for the same registers (pci-bridge, pci-serial,
    # ivshmem-plain).
    assert """\
  Bus  0, device   5, function 0:
    PCI bridge: PCI device 1b36:0001
      IRQ 0, pin A
      BUS 0.
      secondary bus 1.
      subordinate bus 2.
      IO range [0x2000, 0x2fff]
      memory range [0x00000000, 0x000fffff]
      prefetchable memory range [0x00000000, 0x000fffff]
      id "br0"
  Bus  1, device   2, function 0:
    Serial port: PCI device 1b36:0002
      PCI subsystem 1af4:1100
      IRQ 0, pin A
      BAR0: I/O at 0x2000 [0x2007].
      id ""
""" in text
    assert """\
    RAM controller: PCI device 1af4:1110
      PCI subsystem 1af4:1100
      BAR2: 64 bit prefetchable memory at 0xffffffffffffffff [0x000ffffe].
      BAR6: 32 bit memory at 0xffffffffffffffff [0x000007fe].
      id ""
""" in text
    assert format_info_pci([pc.host, pc.host]).count("RAM controller") == 2
    assert format_info_pci(pc.bus).startswith("  Bus  0, device   5")
