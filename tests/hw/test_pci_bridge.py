"""PCI-to-PCI bridges: windows forward the secondary bus, INTx swizzles, bus reset."""

from __future__ import annotations

from memexpose.hw import MiniPC, PCIBridge, PCIDevice
from memexpose.hw import pci_regs as R
from memexpose.memory import MemoryRegion, MemoryRegionOps


class Ident(MemoryRegionOps):
    def read(self, offset: int, size: int) -> int:
        return 0x1D1D0000 | offset


def setup() -> tuple[MiniPC, PCIBridge, PCIDevice]:
    pc = MiniPC()
    bridge = pc.add(PCIBridge(id="br"), slot=6)
    dev = PCIDevice("behind", vendor_id=0x1234, device_id=1, interrupt_pin=1)
    dev.register_bar(0, MemoryRegion.init_io("behind-mmio", 0x1000, Ident(), owner=dev.owner))
    dev.register_bar(1, MemoryRegion.init_io("behind-pio", 0x10, Ident(), owner=dev.owner),
                     io=True)
    assert bridge.secondary_bus is not None
    bridge.secondary_bus.add_device(dev, 2)
    bridge.config_write(R.PCI_PRIMARY_BUS, 0x00010100, 4)
    return pc, bridge, dev


def test_device_behind_bridge_is_reached_only_through_the_window() -> None:
    pc, bridge, dev = setup()
    dev.config_write(0x10, 0xE0200000, 4)
    dev.config_write(0x14, 0xD000, 4)
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_IO, 2)
    assert pc.memory.find_flat_range(0xE0200000) is None  # bridge forwards nothing yet
    bridge.config_write(R.PCI_MEMORY_BASE, (0xE030 << 16) | 0xE020, 4)  # [E0200000, E03FFFFF]
    bridge.config_write(R.PCI_IO_BASE, 0xD0D0, 2)  # [D000, DFFF]
    assert pc.memory.find_flat_range(0xE0200000) is None  # decoding off on the bridge
    bridge.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_IO, 2)
    assert pc.memory.read(0xE0200010, 4)[0] == 0x1D1D0010
    assert pc.io_as.read(0xD004, 4)[0] == 0x1D1D0004
    assert bridge.mem_base() == 0xE0200000 and bridge.mem_limit() == 0xE03FFFFF
    assert bridge.io_base() == 0xD000 and bridge.io_limit() == 0xDFFF
    names = [w.name for w in bridge.windows]
    assert names == ["pci_bridge_io", "pci_bridge_mem", "pci_bridge_pref_mem"]
    assert all(w.priority == 1 for w in bridge.windows)
    bridge.config_write(R.PCI_MEMORY_BASE, (0xE020 << 16) | 0xE030, 4)  # limit < base: closed
    assert pc.memory.find_flat_range(0xE0200000) is None
    assert pc.io_as.read(0xD004, 4)[0] == 0x1D1D0004


def test_prefetchable_window_is_64bit() -> None:
    pc, bridge, dev = setup()
    big = PCIDevice("pref", vendor_id=1, device_id=2)
    big.register_bar(0, MemoryRegion.init_ram("pref-ram", 0x100000, owner=big.owner),
                     mem64=True, prefetchable=True)
    assert bridge.secondary_bus is not None
    bridge.secondary_bus.add_device(big, 3)
    big.config_write(0x10, 0x0000000C, 4)
    big.config_write(0x14, 0x40, 4)
    big.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    bridge.config_write(R.PCI_PREF_MEMORY_BASE, 0x00010001, 4)
    bridge.config_write(R.PCI_PREF_BASE_UPPER32, 0x40, 4)
    bridge.config_write(R.PCI_PREF_LIMIT_UPPER32, 0x40, 4)
    bridge.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    assert bridge.pref_base() == 0x40_0000_0000 and bridge.pref_limit() == 0x40_000F_FFFF
    pc.memory.write(0x40_0000_0100, 0x55, 1)
    assert pc.memory.read(0x40_0000_0100, 1)[0] == 0x55


def test_intx_swizzles_through_the_bridge() -> None:
    pc, bridge, dev = setup()
    # slot 2 INTA -> bridge pin (2 + 0) % 4 = INTC -> q35 slot 6: PIRQ (6 + 2) % 4 + 4 = E
    assert pc.gsi_of(dev) == 20
    dev.set_irq(1)
    assert [n for n, line in enumerate(pc.gsi) if line.level] == [20]
    dev.set_irq(0)
    assert not pc.gsi[20].level


def test_secondary_bus_reset_resets_devices_behind() -> None:
    pc, bridge, dev = setup()
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    bridge.config_write(R.PCI_BRIDGE_CONTROL, R.PCI_BRIDGE_CTL_BUS_RESET, 2)
    assert dev.config_read(R.PCI_COMMAND, 2) == 0
    bridge.config_write(R.PCI_BRIDGE_CONTROL, 0, 2)
    bridge.reset()
    assert bridge.config_read(R.PCI_SECONDARY_BUS, 1) == 0
    assert pc.host.config_read(1, 0x10, 0, 2) == 0xFFFF


def test_unplugging_the_bridge_unplugs_what_is_behind() -> None:
    pc, bridge, dev = setup()
    pc.bus.remove_device(bridge)
    assert dev.bus is None and bridge.secondary_bus is None
    assert pc.bus.children == []
