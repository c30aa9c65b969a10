"""The firmware-like enumerator: bus numbers, sizing, placement, enabling."""

from __future__ import annotations

import pytest

from memexpose.devices import EduDevice, PCISerial
from memexpose.errors import PCIResourceError
from memexpose.hw import (
    PCI_BAR_UNMAPPED,
    LegacyConfigAccess,
    MiniPC,
    PCIBridge,
    PCIDevice,
    PCIEnumerator,
)
from memexpose.hw import pci_regs as R
from memexpose.memory import MemoryRegion, MemoryRegionOps

MEM32 = (0xC0000000, 0xFEC00000 - 0xC0000000)
MEM64 = (0x80_0000_0000, 0x80_0000_0000)


def kitchen_sink() -> tuple[MiniPC, list[PCIDevice]]:
    pc = MiniPC()
    multi = PCIDevice("multi", vendor_id=1, device_id=1, interrupt_pin=2, multifunction=True)
    multi.register_bar(0, MemoryRegion.init_io("m32", 0x4000, MemoryRegionOps()))
    multi.register_bar(1, MemoryRegion.init_io("pio", 0x40, MemoryRegionOps()), io=True)
    multi.register_bar(2, MemoryRegion.init_ram("m64", 0x200000), mem64=True,
                       prefetchable=True)
    multi.register_rom(MemoryRegion.init_rom("rom", 0x10000))
    second = PCIDevice("fn1", vendor_id=1, device_id=2, interrupt_pin=1)
    second.register_bar(0, MemoryRegion.init_io("fn1-m", 0x100, MemoryRegionOps()))
    edu = EduDevice(pc.clock)
    serial = PCISerial()
    bridge = PCIBridge(id="br0")
    pc.add(edu, slot=4)
    pc.add(multi, slot=7)
    pc.add(second, slot=7, function=1)
    pc.add(serial, slot=9)
    pc.add(bridge, slot=10)
    assert bridge.secondary_bus is not None
    behind = EduDevice(pc.clock, id="edu1")
    bridge.secondary_bus.add_device(behind, 0)
    pref = PCIDevice("pref", vendor_id=1, device_id=3)
    pref.register_bar(0, MemoryRegion.init_ram("pref-ram", 0x400000), mem64=True,
                      prefetchable=True)
    bridge.secondary_bus.add_device(pref, 1)
    serial2 = PCISerial(id="ser1")
    bridge.secondary_bus.add_device(serial2, 2)
    return pc, [edu, multi, second, serial, bridge, behind, pref, serial2]


def check_layout(pc: MiniPC, devices: list[PCIDevice]) -> None:
    spans = []
    for dev in devices:
        for bar in dev.bars:
            if bar is None or bar.is_rom:
                continue
            assert bar.addr != PCI_BAR_UNMAPPED, (dev, bar)
            assert bar.addr % bar.size == 0, (dev, bar)
            as_ = pc.io_as if bar.is_io else pc.memory
            fr = as_.find_flat_range(bar.addr)
            assert fr is not None and (fr.mr is bar.region or fr.mr in bar.region.subregions)
            if bar.is_io:
                assert 0xC000 <= bar.addr < 0x10000
            elif bar.is_64:
                assert MEM64[0] <= bar.addr < sum(MEM64), (dev, bar)
            else:
                assert MEM32[0] <= bar.addr < sum(MEM32)
            spans.append((bar.is_io, bar.addr, bar.addr + bar.size))
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        assert a[0] != b[0] or a[2] <= b[1], f"overlap {a} {b}"


def test_enumerate_places_everything_and_enables_decoding() -> None:
    pc, devs = kitchen_sink()
    edu, multi, second, serial, bridge, behind, pref, serial2 = devs
    result = pc.enumerate()
    check_layout(pc, devs)
    assert [f.address for f in result.functions] == [
        "00:00.0", "00:04.0", "00:07.0", "00:07.1", "00:09.0", "00:0a.0", "01:00.0", "01:01.0",
        "01:02.0"]
    assert bridge.config_read(R.PCI_PRIMARY_BUS, 4) & 0xFFFFFF == 0x010100
    assert result.last_bus == 1 and result.find(0, 10).secondary_bus == 1
    # behind the bridge: the windows cover the children
    assert bridge.mem_base() <= behind.bar(0).addr <= bridge.mem_limit()
    assert bridge.pref_base() <= pref.bar(0).addr <= bridge.pref_limit()
    assert bridge.pref_base() >= MEM64[0]  # only 64-bit BARs inside: above 4 GiB
    assert bridge.io_base() <= serial2.bar(0).addr <= bridge.io_limit()
    assert pc.memory.read(behind.bar(0).addr, 4)[0] == 0x010000ED
    assert pc.io_as.read(serial2.bar(0).addr + 5, 1)[0] == 0x60  # LSR through the window
    # ROM: sized and placed, left disabled
    rom = result.find(0, 7).bars[-1]
    assert rom.kind == "rom" and rom.size == 0x10000
    assert multi.config_read(R.PCI_ROM_ADDRESS, 4) == rom.addr
    assert multi.bar(6).addr == PCI_BAR_UNMAPPED
    # interrupt lines: the GSI each pin reaches (q35 routing, swizzled behind the bridge)
    assert edu.config_read(R.PCI_INTERRUPT_LINE, 1) == 20
    assert multi.config_read(R.PCI_INTERRUPT_LINE, 1) == pc.gsi_of(multi) == 16 + (7 + 1) % 4 + 4
    assert behind.config_read(R.PCI_INTERRUPT_LINE, 1) == pc.gsi_of(behind)
    for dev in devs:
        assert dev.config_read(R.PCI_COMMAND, 2) & 3 == 3
        assert not dev.bus_master_enabled


def test_enumerate_through_0xcf8_gives_the_same_layout() -> None:
    pc1, devs1 = kitchen_sink()
    pc1.enumerate()
    pc2, devs2 = kitchen_sink()
    PCIEnumerator(LegacyConfigAccess(pc2.io_as), mem_window=MEM32, mem64_window=MEM64,
                  io_window=(0xC000, 0x4000)).run()
    assert [[b.addr for b in d.bars if b] for d in devs1] == \
        [[b.addr for b in d.bars if b] for d in devs2]
    again = pc2.enumerate()  # enumerating twice gives the same answer
    assert [[b.addr for b in d.bars if b] for d in devs2] == \
        [[b.addr for b in d.bars if b] for d in devs1]
    assert "01:01.0" in str(again) and "window pref" in str(again)


def test_enumerate_with_bus_mastering_and_without_io_window() -> None:
    pc = MiniPC()
    serial = pc.add(PCISerial(), slot=3)
    edu = pc.add(EduDevice(pc.clock), slot=4)
    pc.enumerate(enable_bus_master=True, io=False)
    assert edu.bus_master_enabled
    assert serial.bar(0).addr == PCI_BAR_UNMAPPED  # no I/O window: left unassigned


def test_window_too_small_names_the_culprit() -> None:
    pc, _ = kitchen_sink()
    enumerator = PCIEnumerator(pc.host, mem_window=(0xC0000000, 0x180000),
                               io_window=(0xC000, 0x4000))
    with pytest.raises(PCIResourceError) as info:
        enumerator.run()
    assert info.value.device is not None and "does not fit" in str(info.value)


def test_window_overlapping_ram_is_refused() -> None:
    pc = MiniPC()
    with pytest.raises(PCIResourceError, match="reserved range"):
        PCIEnumerator(pc.host, mem_window=(0x07000000, 0x2000000),
                      reserved=[(0, pc.ram.size)])
    with pytest.raises(PCIResourceError, match="empty"):
        PCIEnumerator(pc.host, mem_window=(0xC0000000, 0))
