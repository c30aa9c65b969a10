"""The edu device: registers, factorial, interrupts (INTx and MSI), DMA, bad input."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from memexpose.devices import EduDevice, factorial32
from memexpose.hw import MiniPC
from memexpose.hw import pci_regs as R
from memexpose.memory import (
    IOMMU_RO,
    MEMTX_DECODE_ERROR,
    AddressSpace,
    IOMMUMemoryRegion,
    IOMMUTLBEntry,
    MemTxAttrs,
    format_mtree,
)

BAR = 0xE0000000
RAM = 0x20000


@pytest.fixture
def pc_edu() -> tuple[MiniPC, EduDevice]:
    pc = MiniPC(ram_size=1 << 20)
    edu = pc.add(EduDevice(pc.clock), slot=4)
    edu.config_write(0x10, BAR, 4)
    edu.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_MASTER, 2)
    return pc, edu


def rd(pc: MiniPC, offset: int, size: int = 4) -> int:
    return pc.memory.read(BAR + offset, size)[0]


def wr(pc: MiniPC, offset: int, value: int, size: int = 4) -> None:
    pc.memory.write(BAR + offset, value, size)


def test_identity_and_config(pc_edu: tuple[MiniPC, EduDevice]) -> None:
    pc, edu = pc_edu
    assert edu.config_read(0, 4) == 0x11E81234
    assert edu.config_read(R.PCI_REVISION_ID, 4) == 0x00FF0010
    assert edu.config_read(R.PCI_SUBSYSTEM_VENDOR_ID, 4) == 0x11001AF4
    assert edu.config_read(0x40, 4) == 0x00800005  # MSI, 64-bit, one vector
    assert edu.config_read(R.PCI_INTERRUPT_PIN, 1) == 1
    assert rd(pc, 0) == 0x010000ED
    assert rd(pc, 0, 8) == (1 << 64) - 1  # 8 bytes below 0x80: all-ones
    assert pc.memory.read(BAR, 2) == (0, MEMTX_DECODE_ERROR)  # 2 bytes never reach it
    assert rd(pc, 0x0C) == 0xFFFFFFFF and rd(pc, 0x40000) == 0xFFFFFFFF


def test_liveness(pc_edu: tuple[MiniPC, EduDevice]) -> None:
    pc, _ = pc_edu
    wr(pc, 4, 0x12345678)
    assert rd(pc, 4) == 0xEDCBA987
    wr(pc, 4, 0xFFFFFFFF, 8)  # ignored: 8 bytes below 0x80
    assert rd(pc, 4) == 0xEDCBA987


@pytest.mark.parametrize(("n", "expect"), [(0, 1), (1, 1), (5, 120), (12, 479001600),
                                           (13, 6227020800 & 0xFFFFFFFF), (33, 0x80000000),
                                           (34, 0), (0xFFFFFFFF, 0)])
def test_factorial32(n: int, expect: int) -> None:
    assert factorial32(n) == expect


def test_factorial_runs_on_the_clock(pc_edu: tuple[MiniPC, EduDevice]) -> None:
    pc, edu = pc_edu
    wr(pc, 8, 6)
    assert rd(pc, 0x20) == 0x01  # computing until virtual time passes
    wr(pc, 8, 3)  # ignored while computing
    assert rd(pc, 8) == 6
    pc.clock.step(edu.fact_delay_ns)
    assert rd(pc, 0x20) == 0 and rd(pc, 8) == 720
    assert edu.irq_status == 0  # no interrupt without status bit 7


def test_factorial_interrupt_intx(pc_edu: tuple[MiniPC, EduDevice]) -> None:
    pc, edu = pc_edu
    gsi = pc.gsi[pc.gsi_of(edu)]
    wr(pc, 0x20, 0xFF)  # only bit 7 is writable
    assert rd(pc, 0x20) == 0x80
    wr(pc, 8, 4)
    pc.clock.step(None)
    assert rd(pc, 8) == 24 and rd(pc, 0x24) == 0x1 and gsi.level
    assert edu.config_read(R.PCI_STATUS, 2) & R.PCI_STATUS_INTERRUPT
    wr(pc, 0x64, 0x1)
    assert not gsi.level and rd(pc, 0x24) == 0


def test_raise_ack_intx_and_msi(pc_edu: tuple[MiniPC, EduDevice]) -> None:
    pc, edu = pc_edu
    gsi = pc.gsi[20]
    wr(pc, 0x60, 0x30)
    assert gsi.level and rd(pc, 0x24) == 0x30
    wr(pc, 0x64, 0x10)
    assert gsi.level
    wr(pc, 0x64, 0x20)
    assert not gsi.level
    msi = edu.msi
    assert msi is not None
    edu.config_write(msi.offset + 4, 0x9000, 4)
    edu.config_write(msi.offset + 12, 0x41, 2)
    edu.config_write(msi.offset + 2, 1, 2)
    assert edu.msi_enabled
    wr(pc, 0x60, 0x2)
    assert not gsi.level and pc.memory.read(0x9000, 4)[0] == 0x41 and msi.sent == 1
    wr(pc, 0x64, 0x2)  # acknowledging sends nothing
    assert msi.sent == 1


def test_dma_both_ways(pc_edu: tuple[MiniPC, EduDevice]) -> None:
    pc, edu = pc_edu
    pc.memory.write_bytes(RAM, bytes(range(32)))
    for reg, value in ((0x80, RAM), (0x88, 0x40000), (0x90, 32), (0x98, 0x5)):
        wr(pc, reg, value, 8)
    assert rd(pc, 0x98, 8) == 0x5
    wr(pc, 0x80, 0xDEAD, 8)  # frozen while running
    pc.clock.step(99_999_999)
    assert rd(pc, 0x98, 8) == 0x5
    pc.clock.step(1)
    assert rd(pc, 0x98, 8) == 0x4 and edu.dma_buf[:32] == bytes(range(32))
    assert rd(pc, 0x24) == 0x100
    for reg, value in ((0x80, 0x40008), (0x88, RAM + 0x100), (0x90, 8), (0x98, 0x3)):
        wr(pc, reg, value, 8)
    pc.clock.step(100_000_000)
    assert pc.memory.read_bytes(RAM + 0x100, 8)[0] == bytes(range(8, 16))
    assert edu.last_dma_fault is None


def test_dma_bus_master_off_and_out_of_ram(pc_edu: tuple[MiniPC, EduDevice]) -> None:
    pc, edu = pc_edu
    edu.dma_buf[:4] = b"\xaa\xbb\xcc\xdd"
    edu.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    pc.memory.write_bytes(RAM, b"\x01\x02\x03\x04")
    for reg, value in ((0x80, 0x40000), (0x88, RAM), (0x90, 4), (0x98, 0x3)):
        wr(pc, reg, value, 8)
    pc.clock.step(100_000_000)
    assert pc.memory.read_bytes(RAM, 4)[0] == b"\x01\x02\x03\x04"  # nothing reached RAM
    assert "bus mastering is off" in edu.last_dma_fault.reason  # type: ignore[union-attr]
    edu.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_MASTER, 2)
    for reg, value in ((0x80, 0x40000), (0x88, 0x0F000000), (0x90, 4), (0x98, 0x3)):
        wr(pc, reg, value, 8)  # within the 28-bit mask, but no RAM there
    pc.clock.step(100_000_000)
    assert edu.last_dma_fault.result == MEMTX_DECODE_ERROR  # type: ignore[union-attr]
    assert "nothing is mapped at 0xf000000" in edu.last_dma_fault.reason  # type: ignore


def test_dma_out_of_buffer_is_refused_not_fatal(pc_edu: tuple[MiniPC, EduDevice],
                                                caplog: pytest.LogCaptureFixture) -> None:
    pc, edu = pc_edu
    pc.memory.write_bytes(RAM, b"\x55" * 16)
    with caplog.at_level(logging.WARNING):
        for count, dst in ((16, 0x40FF8), (0, 0x40000)):
            for reg, value in ((0x80, RAM), (0x88, dst), (0x90, count), (0x98, 0x5)):
                wr(pc, reg, value, 8)
            pc.clock.step(100_000_000)
            assert rd(pc, 0x98, 8) == 0x4  # completed, nothing copied
    assert len(edu.guest_errors) == 2 and "out of bounds" in caplog.text
    assert edu.dma_buf == bytearray(4096)
    assert rd(pc, 0x24) == 0x100  # the completion interrupt still comes


def test_dma_mask_clamps(pc_edu: tuple[MiniPC, EduDevice]) -> None:
    pc, edu = pc_edu
    edu.dma_buf[:2] = b"hi"
    for reg, value in ((0x80, 0x40000), (0x88, (1 << 28) + RAM), (0x90, 2), (0x98, 0x3)):
        wr(pc, reg, value, 8)
    pc.clock.step(100_000_000)
    assert pc.memory.read_bytes(RAM, 2)[0] == b"hi"
    wide = EduDevice(pc.clock, dma_mask=(1 << 64) - 1)
    assert wide.dma_mask == (1 << 64) - 1


def test_reset_keeps_registers_and_unplug_stops_timers(
        pc_edu: tuple[MiniPC, EduDevice]) -> None:
    pc, edu = pc_edu
    wr(pc, 4, 0)
    wr(pc, 8, 5)
    edu.reset()  # QEMU's edu has no reset handler: registers survive
    assert edu.addr4 == 0xFFFFFFFF and edu.config_read(R.PCI_COMMAND, 2) == 0
    pc.bus.remove_device(edu)
    pc.clock.step(10**9)
    assert edu.status & 1  # the timer was deleted
    assert "EduDevice" in repr(edu)
    assert pc.memory.read(BAR, 4) == (0, MEMTX_DECODE_ERROR)


class ReadOnlyIOMMU(IOMMUMemoryRegion):
    """Identity-maps bus addresses to RAM, read-only."""

    def __init__(self, target: AddressSpace) -> None:
        super().__init__("ro-iommu", 1 << 64)
        self.target = target

    def translate(self, offset: int, is_write: bool, attrs: MemTxAttrs) -> IOMMUTLBEntry:
        return IOMMUTLBEntry(self.target, offset & ~0xFFF, 0xFFF, IOMMU_RO)


def test_edu_dma_through_an_iommu_that_denies_writes() -> None:
    pc = MiniPC(ram_size=1 << 20)
    pc.host.set_iommu(lambda bus, devfn: ReadOnlyIOMMU(pc.memory))
    edu = pc.add(EduDevice(pc.clock), slot=4)
    edu.config_write(0x10, BAR, 4)
    edu.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY | R.PCI_COMMAND_MASTER, 2)
    pc.memory.write_bytes(RAM, b"ram data")
    for reg, value in ((0x80, RAM), (0x88, 0x40000), (0x90, 8), (0x98, 0x1)):
        wr(pc, reg, value, 8)
    pc.clock.step(100_000_000)
    assert bytes(edu.dma_buf[:8]) == b"ram data" and edu.last_dma_fault is None  # reads pass
    edu.dma_buf[:8] = b"dev data"
    for reg, value in ((0x80, 0x40000), (0x88, RAM), (0x90, 8), (0x98, 0x3)):
        wr(pc, reg, value, 8)
    pc.clock.step(100_000_000)
    assert pc.memory.read_bytes(RAM, 8)[0] == b"ram data"  # the write was denied
    fault = edu.last_dma_fault
    assert fault is not None and fault.is_write and fault.result == MEMTX_DECODE_ERROR
    assert "IOMMU 'ro-iommu' denies the write at bus address 0x20000" in fault.reason
    assert rd(pc, 0x98, 8) == 0x2  # the command completed anyway, as edu ignores errors
    edu._check_invariants()


def test_mapped_bar_line_matches_the_qemu_oracle(shared_dir: Path) -> None:
    """SeaBIOS put edu's BAR0 at 0xfe900000 in QEMU's pc oracle: same line in our tree."""
    oracle = (shared_dir / "oracle/mtree/pc-devices-booted.tree.txt").read_text().splitlines()
    line = "      00000000fe900000-00000000fe9fffff (prio 1, i/o): edu-mmio"
    assert line in oracle
    pc = MiniPC(ram_size=1 << 20)
    edu = pc.add(EduDevice(pc.clock), slot=4)
    edu.config_write(0x10, 0xFE900000, 4)
    edu.config_write(R.PCI_COMMAND, R.PCI_COMMAND_MEMORY, 2)
    ours = format_mtree([pc.memory]).splitlines()
    assert line in ours and "    0000000000000000-ffffffffffffffff (prio -1, i/o): pci" in ours
