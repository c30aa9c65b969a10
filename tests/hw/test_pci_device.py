"""PCIDevice: BAR sizing answers, BARs mapped where the guest puts them, INTx, reset."""

from __future__ import annotations

import pytest

from memexpose.errors import HwModelError, PCIConfigAccessError
from memexpose.hw import PCI_BAR_UNMAPPED, MiniPC, PCIDevice
from memexpose.hw import pci_regs as R
from memexpose.memory import (
    MemoryListener,
    MemoryRegion,
    MemoryRegionOps,
    MemoryRegionSection,
)


class Regs(MemoryRegionOps):
    def read(self, offset: int, size: int) -> int:
        return 0xA5A5A5A5 ^ offset


def make_device(**kwargs: object) -> PCIDevice:
    """One function with every BAR kind: mem32, I/O, 64-bit prefetchable, 8 GiB, ROM."""
    dev = PCIDevice("multi", vendor_id=0x1234, device_id=0x5678, interrupt_pin=1,
                    **kwargs)  # type: ignore[arg-type]
    dev.register_bar(0, MemoryRegion.init_io("m32", 0x1000, Regs(), owner=dev.owner))
    dev.register_bar(1, MemoryRegion.init_io("pio", 0x20, Regs(), owner=dev.owner), io=True)
    dev.register_bar(2, MemoryRegion.init_ram("m64", 0x10000, owner=dev.owner), mem64=True,
                     prefetchable=True)
    dev.register_bar(4, MemoryRegion.init_io("huge", 1 << 33, Regs(), owner=dev.owner),
                     mem64=True)
    dev.register_rom(MemoryRegion.init_rom("rom", 0x8000, owner=dev.owner))
    return dev


class Recorder(MemoryListener):
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int, int]] = []

    def region_add(self, section: MemoryRegionSection) -> None:
        self.events.append(("add", section.mr.name, section.offset_within_address_space,
                            section.size))

    def region_del(self, section: MemoryRegionSection) -> None:
        self.events.append(("del", section.mr.name, section.offset_within_address_space,
                            section.size))


def sized(dev: PCIDevice, reg: int, probe: int = 0xFFFFFFFF) -> int:
    old = dev.config_read(reg, 4)
    dev.config_write(reg, probe, 4)
    value = dev.config_read(reg, 4)
    dev.config_write(reg, old, 4)
    return value


def test_sizing_answers_for_every_bar_kind() -> None:
    dev = make_device()
    assert sized(dev, 0x10) == 0xFFFFF000  # 4 KiB, 32-bit, not prefetchable
    assert sized(dev, 0x14) == 0xFFFFFFE1  # 32-byte I/O BAR: QEMU keeps the upper bits
    assert sized(dev, 0x18) == 0xFFFF000C  # 64 KiB, 64-bit, prefetchable
    assert sized(dev, 0x1C) == 0xFFFFFFFF  # its upper half
    assert sized(dev, 0x20) == 0x00000004  # 8 GiB: nothing in the low dword
    assert sized(dev, 0x24) == 0xFFFFFFFE
    assert sized(dev, 0x30, 0xFFFFF800) == 0xFFFF8000  # ROM: enable bit stays as written
    assert sized(dev, 0x30) == 0xFFFF8001
    assert dev.config_read(0x10, 4) == 0 and dev.config_read(0x18, 4) == 0x0C


def test_register_bar_errors() -> None:
    dev = PCIDevice("d", vendor_id=1, device_id=2)
    ram = MemoryRegion.init_ram("r", 0x1000)
    dev.register_bar(4, ram, mem64=True)
    with pytest.raises(HwModelError, match="already in use"):
        dev.register_bar(5, MemoryRegion.init_io("x", 16, None))
    with pytest.raises(HwModelError, match="needs register 6"):
        dev.register_bar(5, MemoryRegion.init_io("x", 16, None), mem64=True)
    with pytest.raises(HwModelError, match="power of two"):
        dev.register_bar(0, MemoryRegion.init_io("x", 0x3000, None))
    with pytest.raises(HwModelError, match="power of two"):
        dev.register_bar(0, MemoryRegion.init_io("x", 8, None))  # memory BARs >= 16 bytes
    with pytest.raises(HwModelError, match="smaller than"):
        dev.register_bar(0, MemoryRegion.init_io("x", 0x2000, None), size=0x1000)
    with pytest.raises(HwModelError, match="not in 0..5"):
        dev.register_bar(6, MemoryRegion.init_io("x", 16, None))
    with pytest.raises(HwModelError, match="neither"):
        dev.register_bar(0, MemoryRegion.init_io("x", 16, None), io=True, mem64=True)
    bar = dev.register_bar(0, MemoryRegion.init_io("odd", 0x3000, None), size=0x4000)
    assert bar.size == 0x4000 and bar.region.size == 0x4000  # wrapped in a container
    with pytest.raises(HwModelError, match="no BAR 1"):
        dev.bar(1)
    with pytest.raises(HwModelError):
        PCIDevice("d", vendor_id=1 << 16, device_id=0)
    with pytest.raises(HwModelError):
        PCIDevice("d", vendor_id=1, device_id=0, interrupt_pin=5)


def test_bars_appear_move_and_vanish_in_the_flat_view() -> None:
    pc = MiniPC()
    dev = pc.add(make_device(), slot=3)
    rec = Recorder()
    pc.memory.register_listener(rec)
    rec.events.clear()
    dev.config_write(0x10, 0xE0000000, 4)
    assert pc.memory.find_flat_range(0xE0000000) is None  # decoding still off
    assert dev.bar(0).addr == PCI_BAR_UNMAPPED
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    fr = pc.memory.find_flat_range(0xE0000000)
    assert fr is not None and fr.mr.name == "m32" and fr.size == 0x1000
    assert dev.bar(0).region.priority == 1 and dev.bar(0).region.container is pc.pci_mem
    assert rec.events == [("add", "m32", 0xE0000000, 0x1000)]
    assert pc.memory.read(0xE0000010, 4)[0] == 0xA5A5A5A5 ^ 0x10
    rec.events.clear()
    dev.config_write(0x10, 0xE0100000, 4)
    assert rec.events == [("del", "m32", 0xE0000000, 0x1000), ("add", "m32", 0xE0100000, 0x1000)]
    rec.events.clear()
    dev.config_write(R.PCI_COMMAND, 0, 2)
    assert rec.events == [("del", "m32", 0xE0100000, 0x1000)]
    assert pc.memory.find_flat_range(0xE0100000) is None
    dev._check_invariants()
    rec.events.clear()
    dev.config_write(0x10, 0xFFFFFFFF, 4)  # sizing with decoding on: stays unmapped
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    assert rec.events == [] and dev.bar(0).addr == PCI_BAR_UNMAPPED
    dev.config_write(0x10, 0, 4)  # address 0 is "unmapped" on PCs
    assert dev.bar(0).addr == PCI_BAR_UNMAPPED


def test_64bit_io_and_rom_bars() -> None:
    pc = MiniPC()
    dev = pc.add(make_device(), slot=3)
    dev.config_write(0x18, 0x0000000C, 4)
    dev.config_write(0x1C, 0x00000080, 4)  # 0x80_0000_0000
    dev.config_write(0x20, 0, 4)
    dev.config_write(0x24, 0x00000002, 4)  # 8 GiB at 0x2_0000_0000
    dev.config_write(0x14, 0xC101, 4)
    dev.config_write(0x30, 0xE8000000, 4)  # ROM address, enable bit clear
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_IO, 2)
    assert dev.bar(2).addr == 0x80_0000_0000
    assert pc.memory.find_flat_range(0x80_0000_0000).mr.name == "m64"
    assert dev.bar(4).addr == 0x2_0000_0000
    assert pc.memory.find_flat_range(0x3_FFFF_F000).mr.name == "huge"
    assert dev.bar(1).addr == 0xC100 and pc.io_as.find_flat_range(0xC100).mr.name == "pio"
    assert dev.bar(6).addr == PCI_BAR_UNMAPPED
    dev.config_write(0x30, 0xE8000001, 4)
    assert dev.bar(6).addr == 0xE8000000
    assert pc.memory.find_flat_range(0xE8000000).mr.name == "rom"
    dev._check_invariants()
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    assert dev.bar(1).addr == PCI_BAR_UNMAPPED and pc.io_as.find_flat_range(0xC100).mr.name \
        == "io"
    # a 32-bit BAR may not wrap past 4 GiB; a 64-bit one past 2**64 neither
    dev.config_write(0x1C, 0xFFFFFFFF, 4)
    dev.config_write(0x18, 0xFFFF0000, 4)
    assert dev.bar(2).addr == PCI_BAR_UNMAPPED


def test_bar_over_ram_is_shadowed_and_the_model_stays_consistent() -> None:
    pc = MiniPC(ram_size=1 << 20)
    dev = pc.add(make_device(), slot=3)
    pc.memory.write(0x4000, 0x11223344, 4)
    dev.config_write(0x10, 0x4000, 4)
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    # QEMU's answer: the BAR is "mapped" (info pci shows it) but RAM, above the pci
    # container, wins in the flat view; the guest keeps reading RAM.
    assert dev.bar(0).addr == 0x4000
    assert pc.memory.find_flat_range(0x4000).mr is pc.ram
    assert pc.memory.read(0x4000, 4)[0] == 0x11223344
    dev.config_write(0x10, 0xE0000000, 4)
    assert pc.memory.find_flat_range(0xE0000000).mr.name == "m32"
    assert pc.memory.read(0x4000, 4)[0] == 0x11223344
    pc.sysmem._check_invariants()


def test_intx_status_bit_disable_and_sharing() -> None:
    pc = MiniPC()
    a = pc.add(make_device(), slot=4)
    b = pc.add(make_device(), slot=8)  # (8 + 0) % 4 == (4 + 0) % 4: the same GSI
    gsi = pc.gsi[pc.gsi_of(a)]
    assert pc.gsi_of(a) == pc.gsi_of(b) == 20
    a.set_irq(1)
    assert gsi.level and a.config_read(R.PCI_STATUS, 2) & R.PCI_STATUS_INTERRUPT
    b.set_irq(1)
    a.set_irq(0)
    assert gsi.level
    b.set_irq(0)
    assert not gsi.level
    a.set_irq(1)
    a.config_write(R.PCI_COMMAND, R.PCI_COMMAND_INTX_DISABLE, 2)
    assert not gsi.level and a.config_read(R.PCI_STATUS, 2) & R.PCI_STATUS_INTERRUPT
    a.config_write(R.PCI_COMMAND, 0, 2)
    assert gsi.level
    a._check_invariants()
    a.reset()
    a._check_invariants()
    assert not gsi.level and not a.config_read(R.PCI_STATUS, 2) & R.PCI_STATUS_INTERRUPT
    nopin = PCIDevice("nopin", vendor_id=1, device_id=1)
    with pytest.raises(HwModelError, match="no interrupt pin"):
        nopin.set_irq(1)


def test_reset_clears_writable_state_and_unmaps() -> None:
    pc = MiniPC()
    dev = pc.add(make_device(), slot=3)
    dev.config_write(0x10, 0xE0000000, 4)
    dev.config_write(R.PCI_COMMAND, 0x0507, 2)
    dev.config_write(R.PCI_INTERRUPT_LINE, 11, 1)
    dev.config_write(R.PCI_CACHE_LINE_SIZE, 0x10, 1)
    dev.reset()
    assert dev.config_read(R.PCI_COMMAND, 2) == 0
    assert dev.config_read(0x10, 4) == 0 and dev.config_read(0x18, 4) == 0x0C
    assert dev.config_read(R.PCI_INTERRUPT_LINE, 1) == 0
    assert dev.config_read(R.PCI_CACHE_LINE_SIZE, 1) == 0
    assert pc.memory.find_flat_range(0xE0000000) is None
    assert not dev.bus_master_enabled


def test_config_api_validates() -> None:
    dev = make_device()
    for offset, size in ((1, 2), (0, 3), (0xFE, 4), (0x100, 1)):
        with pytest.raises(PCIConfigAccessError):
            dev.config_read(offset, size)
        with pytest.raises(PCIConfigAccessError):
            dev.config_write(offset, 0, size)
    with pytest.raises(HwModelError, match="on no bus"):
        dev.dma_read(0, 4)


def test_unplug_removes_bars_and_address_space() -> None:
    pc = MiniPC()
    dev = pc.add(make_device(), slot=3)
    dev.config_write(0x10, 0xE0000000, 4)
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    spaces = len(pc.system.address_spaces)
    pc.bus.remove_device(dev)
    assert pc.memory.find_flat_range(0xE0000000) is None
    assert len(pc.system.address_spaces) == spaces - 1
    assert dev.bus is None and dev.address == "??:??.?"
    with pytest.raises(HwModelError):
        pc.bus.remove_device(dev)
