"""MSI and MSI-X: messages are DMA writes; masking, pending bits, bad input."""

from __future__ import annotations

import logging

import pytest

from memexpose.errors import HwModelError
from memexpose.hw import MiniPC, MSICap, MSIXCap, PCIDevice, msix_init_exclusive_bar
from memexpose.hw import pci_regs as R
from memexpose.memory import MemoryRegion

MSI_ADDR = 0x9000


def device_with_msi(**kwargs: object) -> tuple[MiniPC, PCIDevice, MSICap]:
    pc = MiniPC(ram_size=1 << 20)
    dev = PCIDevice("msi-dev", vendor_id=1, device_id=2, interrupt_pin=1)
    cap = MSICap(dev, **kwargs)  # type: ignore[arg-type]
    pc.add(dev, slot=4)
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MASTER, 2)
    return pc, dev, cap


def word(pc: MiniPC, addr: int = MSI_ADDR) -> int:
    value = pc.memory.read(addr, 4)[0]
    pc.memory.write(addr, 0, 4)
    return value


def test_msi_64bit_single_vector_like_edu() -> None:
    pc, dev, cap = device_with_msi(nr_vectors=1, msi64bit=True)
    base = cap.offset
    assert base == 0x40 and dev.config_read(base, 4) == 0x00800005
    assert not cap.notify(0)  # disabled: nothing is sent
    dev.config_write(base + 4, MSI_ADDR | 3, 4)  # low two bits are read-only
    assert dev.config_read(base + 4, 4) == MSI_ADDR
    dev.config_write(base + 12, 0xABCD4321, 4)
    assert dev.config_read(base + 12, 2) == 0x4321
    dev.set_irq(1)
    dev.config_write(base, 0x00010005, 4)  # enable: INTx is dropped
    assert cap.enabled and not dev.irq_level()
    assert cap.notify(0)
    assert word(pc) == 0x4321
    assert cap.statistics() == {"sent": 1, "dropped": 0, "failed": 0}
    with pytest.raises(HwModelError, match="does not exist"):
        cap.notify(1)


def test_msi_multiple_vectors_and_clamping(caplog: pytest.LogCaptureFixture) -> None:
    pc, dev, cap = device_with_msi(nr_vectors=4, msi64bit=False)
    base = cap.offset
    assert dev.config_read(base + 2, 2) == 0x0004  # MMC = log2(4)
    dev.config_write(base + 4, MSI_ADDR, 4)
    dev.config_write(base + 8, 0x0040, 2)
    dev.config_write(base + 2, 0x0071, 2)  # ask for 128 vectors: clamped to 4
    assert cap.nr_vectors == 4
    assert cap.notify(3) and word(pc) == 0x0043
    dev.config_write(base + 2, 0x0011, 2)  # two vectors enabled
    assert cap.notify(1) and word(pc) == 0x0041
    with caplog.at_level(logging.WARNING):
        assert not cap.notify(3)  # not enabled by the guest: dropped (QEMU asserts)
    assert cap.dropped == 1 and "only 2 enabled" in caplog.text
    assert word(pc) == 0


def test_msi_per_vector_masking_and_pending() -> None:
    pc, dev, cap = device_with_msi(nr_vectors=2, msi64bit=True, per_vector_mask=True)
    base = cap.offset
    assert cap.cap_size == 0x18
    dev.config_write(base + 4, MSI_ADDR, 4)
    dev.config_write(base + 12, 0x10, 2)
    dev.config_write(base + 16, 0xFFFFFFFF, 4)
    assert dev.config_read(base + 16, 4) == 0x3  # only existing vectors are maskable
    dev.config_write(base + 2, 0x0011, 2)
    assert cap.notify(1) and cap.pending == 0b10 and word(pc) == 0
    dev.config_write(base + 16, 0x1, 4)  # unmask vector 1: the pending message goes out
    assert cap.pending == 0 and word(pc) == 0x11
    cap.reset()
    assert not cap.enabled and dev.config_read(base + 4, 4) == 0


def test_msi_without_bus_mastering_fails_and_says_why() -> None:
    pc, dev, cap = device_with_msi()
    dev.config_write(cap.offset + 4, MSI_ADDR, 4)
    dev.config_write(cap.offset, 0x00010005, 4)
    dev.config_write(R.PCI_COMMAND, 0, 2)
    assert not cap.notify(0) and cap.failed == 1
    assert dev.last_dma_fault is not None and "bus mastering is off" in dev.last_dma_fault.reason


def test_msi_construction_errors() -> None:
    dev = PCIDevice("d", vendor_id=1, device_id=2)
    with pytest.raises(HwModelError, match="1, 2, 4"):
        MSICap(dev, nr_vectors=3)
    MSICap(dev)
    with pytest.raises(HwModelError, match="already has"):
        MSICap(dev)


def test_msix_table_pba_masking() -> None:
    pc = MiniPC(ram_size=1 << 20)
    dev = PCIDevice("msix-dev", vendor_id=1, device_id=3, interrupt_pin=1)
    cap = msix_init_exclusive_bar(dev, 4, 1)
    pc.add(dev, slot=5)
    assert dev.bar(1).size == 4096 and cap.table_region.size == 64 and cap.pba_region.size == 8
    base = cap.offset
    assert dev.config_read(base, 4) == 0x00030011  # id 0x11, 4 entries
    assert dev.config_read(base + 4, 4) == 0x1 and dev.config_read(base + 8, 4) == 0x801
    dev.config_write(0x14, 0xE0000000, 4)
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_MASTER, 2)
    table, pba = 0xE0000000, 0xE0000800
    assert pc.memory.read(table + 12, 4)[0] == 1  # every vector starts masked
    pc.memory.write(table + 16, MSI_ADDR, 4)  # entry 1: address, data
    pc.memory.write(table + 24, 0x77, 4)
    assert not cap.notify(1)  # MSI-X disabled
    dev.config_write(base + 2, 0x8000, 2)  # enable
    assert cap.notify(1) and cap.is_pending(1)  # vector 1 still masked: pending
    assert pc.memory.read(pba, 4)[0] == 0b10
    pc.memory.write(pba, 0, 4)  # the PBA is read-only
    assert pc.memory.read(pba, 4)[0] == 0b10
    pc.memory.write(table + 28, 0, 4)  # unmask: delivered
    assert word(pc) == 0x77 and not cap.is_pending(1)
    dev.config_write(base + 2, 0xC000, 2)  # function mask
    assert cap.notify(1) and word(pc) == 0
    dev.config_write(base + 2, 0x8000, 2)  # function unmask delivers the pending vector
    assert word(pc) == 0x77
    assert pc.memory.read(table + 16, 8)[0] == MSI_ADDR  # 8-byte table read
    with pytest.raises(HwModelError):
        cap.notify(4)
    cap.reset()
    assert not cap.enabled and cap.is_masked(1)


def test_msix_layout_errors() -> None:
    dev = PCIDevice("d", vendor_id=1, device_id=2)
    bar = MemoryRegion.init_container("bar", 0x1000)
    with pytest.raises(HwModelError, match="overlap"):
        MSIXCap(dev, 8, bar, 0, 0, bar, 0, 0x40)
    with pytest.raises(HwModelError, match="aligned"):
        MSIXCap(dev, 8, bar, 0, 0, bar, 0, 0x804)
    with pytest.raises(HwModelError, match="1..2048"):
        MSIXCap(dev, 0, bar, 0, 0, bar, 0, 0x800)
    big = PCIDevice("big", vendor_id=1, device_id=2)
    cap = msix_init_exclusive_bar(big, 300, 0)
    assert big.bar(0).size == 8192 and cap.pba_region.addr == 300 * 16
