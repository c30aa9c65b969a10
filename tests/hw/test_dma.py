"""DMA through the bus-master address space: bus mastering, IOMMUs, and why it failed."""

from __future__ import annotations

from memexpose.hw import MiniPC, PCIDevice, explain_access
from memexpose.hw import pci_regs as R
from memexpose.memory import (
    IOMMU_NONE,
    IOMMU_RO,
    IOMMU_RW,
    MEMTX_DECODE_ERROR,
    MEMTX_OK,
    AccessConstraints,
    AddressSpace,
    IOMMUMemoryRegion,
    IOMMUTLBEntry,
    MemoryRegion,
    MemoryRegionOps,
    MemTxAttrs,
)


class Strict(MemoryRegionOps):
    valid = AccessConstraints(4, 4)


class PageIOMMU(IOMMUMemoryRegion):
    """Maps bus page n to RAM page n + shift with the given permissions."""

    def __init__(self, target: AddressSpace, perm: int, shift_pages: int = 0) -> None:
        super().__init__("test-iommu", 1 << 64)
        self.target = target
        self.perm = perm
        self.shift = shift_pages << 12
        self.requesters: list[int] = []

    def translate(self, offset: int, is_write: bool, attrs: MemTxAttrs) -> IOMMUTLBEntry:
        self.requesters.append(attrs.requester_id)
        if offset >= 1 << 30:
            return IOMMUTLBEntry(None, 0, 0xFFF, IOMMU_NONE)
        return IOMMUTLBEntry(self.target, (offset & ~0xFFF) + self.shift, 0xFFF, self.perm)


def dma_device(pc: MiniPC, slot: int = 4) -> PCIDevice:
    return pc.add(PCIDevice("dma", vendor_id=1, device_id=2), slot=slot)


def test_dma_to_and_from_ram() -> None:
    pc = MiniPC(ram_size=1 << 20)
    dev = dma_device(pc)
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MASTER, 2)
    assert dev.dma_write(0x3000, b"hello, ram") == MEMTX_OK
    assert pc.memory.read_bytes(0x3000, 10)[0] == b"hello, ram"
    assert dev.dma_read(0x3000, 5) == (b"hello", MEMTX_OK)
    assert dev.dma_write(0x3000, b"") == MEMTX_OK
    assert dev.last_dma_fault is None and dev.dma_attrs().requester_id == 0x20


def test_bus_mastering_off_nothing_reaches_ram() -> None:
    pc = MiniPC(ram_size=1 << 20)
    dev = dma_device(pc)
    pc.memory.write_bytes(0x3000, b"\x11" * 8)
    assert dev.dma_write(0x3000, b"\xee" * 8) == MEMTX_DECODE_ERROR
    assert pc.memory.read_bytes(0x3000, 8)[0] == b"\x11" * 8
    data, result = dev.dma_read(0x3000, 8)
    assert data == bytes(8) and result == MEMTX_DECODE_ERROR  # QEMU fills zeros too
    fault = dev.last_dma_fault
    assert fault is not None and not fault.is_write and fault.size == 8
    assert "bus mastering is off" in fault.reason and "0x3000" in str(fault)
    assert dev.dma_faults == 2


def test_dma_outside_ram_says_nothing_is_mapped() -> None:
    pc = MiniPC(ram_size=1 << 20)
    dev = dma_device(pc)
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MASTER, 2)
    assert dev.dma_write(0xF0000000, b"x") == MEMTX_DECODE_ERROR
    assert dev.last_dma_fault is not None
    assert "nothing is mapped at 0xf0000000" in dev.last_dma_fault.reason
    # straddling the end of RAM: the RAM part lands, the rest is reported
    assert dev.dma_write((1 << 20) - 2, b"abcd") == MEMTX_DECODE_ERROR
    assert pc.memory.read_bytes((1 << 20) - 2, 2)[0] == b"ab"
    assert "0x100000" in dev.last_dma_fault.reason


def test_iommu_denies_writes_and_says_why() -> None:
    pc = MiniPC(ram_size=1 << 20)
    iommu = PageIOMMU(pc.memory, IOMMU_RO)
    pc.host.set_iommu(lambda bus, devfn: iommu if devfn == 0x20 else None)
    dev = dma_device(pc)
    other = dma_device(pc, slot=5)
    for d in (dev, other):
        d.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MASTER, 2)
    pc.memory.write_bytes(0x5000, b"original")
    assert dev.dma_write(0x5000, b"changed!") == MEMTX_DECODE_ERROR
    assert pc.memory.read_bytes(0x5000, 8)[0] == b"original"
    reason = dev.last_dma_fault.reason  # type: ignore[union-attr]
    assert "IOMMU 'test-iommu' denies the write" in reason and "read-only" in reason
    assert dev.dma_read(0x5000, 8) == (b"original", MEMTX_OK)
    assert iommu.requesters[-1] == 0x20  # the requester id travels with the access
    assert other.dma_write(0x5000, b"bypass!!") == MEMTX_OK  # devfn 0x28 has no IOMMU
    assert dev.dma_read(1 << 30, 4)[1] == MEMTX_DECODE_ERROR
    assert "no translation" in dev.last_dma_fault.reason  # type: ignore[union-attr]


def test_iommu_translates() -> None:
    pc = MiniPC(ram_size=1 << 20)
    iommu = PageIOMMU(pc.memory, IOMMU_RW, shift_pages=0x10)
    pc.host.set_iommu(lambda bus, devfn: iommu)
    dev = dma_device(pc)
    dev.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MASTER, 2)
    assert dev.dma_write(0x0FFC, b"12345678") == MEMTX_OK  # crosses a page: two translations
    assert pc.memory.read_bytes(0x10FFC, 8)[0] == b"12345678"


def test_explain_access_other_cases() -> None:
    pc = MiniPC(ram_size=1 << 20)
    rom = MemoryRegion.init_rom("fw", 0x1000)
    pc.sysmem.add_subregion(0x1_0000_0000, rom)
    attrs = MemTxAttrs()
    assert "read-only" in explain_access(pc.memory, 0x1_0000_0000, 4, True, attrs)
    pc.sysmem.add_subregion(0x2_0000_0000, MemoryRegion.init_io("strict", 0x100, Strict()))
    assert "region 'strict' refused a 1-byte read at offset 0x1" in explain_access(
        pc.memory, 0x2_0000_0001, 1, False, attrs)
    assert "reported the error itself" in explain_access(pc.memory, 0x100, 4, False, attrs)
