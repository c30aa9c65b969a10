"""QEMU's ``edu`` teaching device (docs/specs/edu.rst, hw/misc/edu.c), as QEMU 7.2 runs it.

PCI 1234:11e8, revision 0x10, class 0x00ff, INTA, a 64-bit MSI capability
with one vector, BAR0 = 1 MiB of MMIO. Register map (offsets in BAR0):

======  ====  ===========================================================
0x00    RO    identification ``0x010000ed``
0x04    RW    liveness: reads the inverse of what was written
0x08    RW    factorial: a write starts computing n! (32-bit), if idle
0x20    RW    status: bit 0 computing (RO), bit 7 raise FACT_IRQ (0x1) when done
0x24    RO    interrupt status
0x60    WO    raise: OR the value into the interrupt status, interrupt
0x64    WO    acknowledge: clear those bits; INTx drops when none is left
0x80    RW    DMA source (64-bit)
0x88    RW    DMA destination (64-bit)
0x90    RW    DMA count (64-bit)
0x98    RW    DMA command: bit 0 start, bit 1 direction (1: buffer to RAM),
              bit 2 raise DMA_IRQ (0x100) when done
======  ====  ===========================================================

Access rules, checked against QEMU 7.2 with qtest (tests/qemu/):

* ``valid`` and ``impl`` are 4..8 bytes: 1- and 2-byte accesses never
  reach the device (reads give 0 with ``MEMTX_DECODE_ERROR``);
* below 0x80 only 4-byte accesses count: an 8-byte read returns all-ones
  and an 8-byte write is ignored; from 0x80, 4 and 8 bytes (a 4-byte write
  to a DMA register zero-extends it; 0x84 is no register);
* unknown offsets read all-ones, including the DMA buffer: the buffer at
  0x40000 is reachable only by DMA, not through BAR0;
* DMA runs on a virtual-clock timer 100 ms after the command; while it
  runs, writes to the DMA registers are ignored. Bus addresses are clamped
  to ``dma_mask`` (28 bits by default). With bus mastering off, a read
  from RAM fills the buffer with zeros and a write to RAM is lost;
* the factorial completes ``fact_delay_ns`` of virtual time after the
  write (QEMU uses a host thread; a driver must poll status bit 0 either
  way). 32-bit arithmetic: 13! wraps, n >= 34 gives 0;
* raising with MSI enabled sends vector 0 instead of asserting INTx,
  and acknowledging never sends anything.

Where we differ from QEMU 7.2 (on purpose): a DMA whose buffer-side range
leaves 0x40000..0x40fff (count 0 included) makes QEMU abort the whole VM
(``hw_error``); here the transfer is refused, a guest error is logged and
kept in ``guest_errors``, and the command completes (RUN cleared, DMA_IRQ
raised if asked). Like QEMU, a device reset leaves the registers alone.
"""

from __future__ import annotations

import logging

from memexpose.hw import MSICap, PCIDevice, VirtualClock, pci_regs
from memexpose.memory import AccessConstraints, Endianness, MemoryRegion, MemoryRegionOps

__all__ = ["EduDevice"]

log = logging.getLogger(__name__)

FACT_IRQ = 0x00000001
DMA_IRQ = 0x00000100
DMA_START = 0x40000
DMA_SIZE = 4096
STATUS_COMPUTING = 0x01
STATUS_IRQFACT = 0x80
DMA_RUN = 0x1
DMA_DIR_TO_RAM = 0x2
DMA_IRQ_BIT = 0x4
DMA_DELAY_NS = 100_000_000
_ALL_ONES = (1 << 64) - 1
_U64 = (1 << 64) - 1


def factorial32(n: int) -> int:
    """Return ``n!`` modulo 2**32, as edu's 32-bit loop computes it (0 from 34 on)."""
    n &= 0xFFFFFFFF
    if n >= 34:  # 34! holds 2**32 as a factor
        return 0
    result = 1
    while n > 0:
        result = (result * n) & 0xFFFFFFFF
        n -= 1
    return result


class _EduOps(MemoryRegionOps):
    endianness = Endianness.NATIVE
    valid = AccessConstraints(4, 8)
    impl = AccessConstraints(4, 8)

    def __init__(self, edu: EduDevice) -> None:
        self.edu = edu

    def read(self, offset: int, size: int) -> int:
        return self.edu._mmio_read(offset, size)

    def write(self, offset: int, value: int, size: int) -> None:
        self.edu._mmio_write(offset, value, size)


class EduDevice(PCIDevice):
    """The edu PCI device.

    Args:
        clock: the machine's virtual clock (DMA and factorial timers).
        dma_mask: bus addresses are AND-ed with it (QEMU's ``dma_mask`` property).
        fact_delay_ns: virtual time a factorial takes.
        id, path: as ``PCIDevice``.

    Invariants:
        * ``status & STATUS_COMPUTING`` iff the factorial timer is armed;
        * ``dma_cmd & DMA_RUN`` iff the DMA timer is armed;
        * INTx is asserted iff ``irq_status != 0`` and MSI is off (at the last change).
    """

    def __init__(self, clock: VirtualClock, *, dma_mask: int = (1 << 28) - 1,
                 fact_delay_ns: int = 1_000, id: str | None = None,
                 path: str | None = None) -> None:
        super().__init__("edu", vendor_id=pci_regs.PCI_VENDOR_ID_QEMU, device_id=0x11E8,
                         revision=0x10, class_code=pci_regs.PCI_CLASS_OTHERS, interrupt_pin=1,
                         id=id, path=path)
        self.clock = clock
        self.dma_mask = dma_mask & _U64
        self.fact_delay_ns = fact_delay_ns
        MSICap(self, nr_vectors=1, msi64bit=True, per_vector_mask=False)
        self.mmio = MemoryRegion.init_io("edu-mmio", 1 << 20, _EduOps(self), owner=self.owner)
        self.register_bar(0, self.mmio)
        self.addr4 = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = 0
        self.dma_dst = 0
        self.dma_cnt = 0
        self.dma_cmd = 0
        self.dma_buf = bytearray(DMA_SIZE)
        self.guest_errors: list[str] = []
        self._fact_timer = clock.new_timer(self._fact_done, "edu-fact")
        self._dma_timer = clock.new_timer(self._dma_done, "edu-dma")

    # -- MMIO -------------------------------------------------------------------------

    def _mmio_read(self, offset: int, size: int) -> int:
        if (offset < 0x80 and size != 4) or (offset >= 0x80 and size not in (4, 8)):
            return _ALL_ONES
        if offset == 0x00:
            return 0x010000ED
        if offset == 0x04:
            return self.addr4
        if offset == 0x08:
            return self.fact
        if offset == 0x20:
            return self.status
        if offset == 0x24:
            return self.irq_status
        if offset == 0x80:
            return self.dma_src
        if offset == 0x88:
            return self.dma_dst
        if offset == 0x90:
            return self.dma_cnt
        if offset == 0x98:
            return self.dma_cmd
        return _ALL_ONES

    def _mmio_write(self, offset: int, value: int, size: int) -> None:
        if (offset < 0x80 and size != 4) or (offset >= 0x80 and size not in (4, 8)):
            return
        if offset == 0x04:
            self.addr4 = ~value & 0xFFFFFFFF
        elif offset == 0x08:
            if self.status & STATUS_COMPUTING:
                return
            self.fact = value & 0xFFFFFFFF
            self.status |= STATUS_COMPUTING
            self._fact_timer.mod_in(self.fact_delay_ns)
        elif offset == 0x20:
            if value & STATUS_IRQFACT:
                self.status |= STATUS_IRQFACT
            else:
                self.status &= ~STATUS_IRQFACT
        elif offset == 0x60:
            self.raise_irq(value & 0xFFFFFFFF)
        elif offset == 0x64:
            self.lower_irq(value & 0xFFFFFFFF)
        elif offset in (0x80, 0x88, 0x90, 0x98):
            if self.dma_cmd & DMA_RUN:
                return  # registers are frozen while a transfer runs
            if offset == 0x80:
                self.dma_src = value
            elif offset == 0x88:
                self.dma_dst = value
            elif offset == 0x90:
                self.dma_cnt = value
            elif value & DMA_RUN:
                self.dma_cmd = value
                self._dma_timer.mod(self.clock.now_ns + DMA_DELAY_NS)

    # -- interrupts ---------------------------------------------------------------------

    @property
    def msi_enabled(self) -> bool:
        """Whether the guest enabled MSI."""
        return self.msi is not None and self.msi.enabled

    def raise_irq(self, value: int) -> None:
        """OR ``value`` into the interrupt status; interrupt if any bit is set. Lock held."""
        self.irq_status |= value
        if self.irq_status:
            if self.msi_enabled:
                assert self.msi is not None
                self.msi.notify(0)
            else:
                self.set_irq(1)

    def lower_irq(self, value: int) -> None:
        """Clear ``value``'s bits; drop INTx when none is left (not with MSI). Lock held."""
        self.irq_status &= ~value & 0xFFFFFFFF
        if not self.irq_status and not self.msi_enabled:
            self.set_irq(0)

    # -- timers --------------------------------------------------------------------------

    def _fact_done(self) -> None:
        self.fact = factorial32(self.fact)
        self.status &= ~STATUS_COMPUTING
        if self.status & STATUS_IRQFACT:
            self.raise_irq(FACT_IRQ)

    def _clamp(self, addr: int) -> int:
        clamped = addr & self.dma_mask
        if clamped != addr:
            log.info("edu: guest error: clamping DMA %#018x to %#018x", addr, clamped)
        return clamped

    def _in_buffer(self, start: int, count: int) -> bool:
        end = start + count
        return start >= DMA_START and count > 0 and end <= DMA_START + DMA_SIZE

    def _dma_done(self) -> None:
        cmd = self.dma_cmd
        if not cmd & DMA_RUN:
            return
        count = self.dma_cnt
        buf_addr = self.dma_src if cmd & DMA_DIR_TO_RAM else self.dma_dst
        if not self._in_buffer(buf_addr, count):
            message = (f"edu: DMA range {buf_addr:#018x}-{(buf_addr + count - 1) & _U64:#018x} "
                       f"out of bounds ({DMA_START:#018x}-{DMA_START + DMA_SIZE - 1:#018x}); "
                       "transfer refused (QEMU 7.2 aborts the VM here)")
            log.warning("%s", message)
            self.guest_errors.append(message)
        elif cmd & DMA_DIR_TO_RAM:
            start = buf_addr - DMA_START
            self.dma_write(self._clamp(self.dma_dst), self.dma_buf[start:start + count])
        else:
            start = buf_addr - DMA_START
            view = memoryview(self.dma_buf)[start:start + count]
            self.dma_read_into(self._clamp(self.dma_src), view)
        self.dma_cmd &= ~DMA_RUN
        if self.dma_cmd & DMA_IRQ_BIT:
            self.raise_irq(DMA_IRQ)

    def unrealize(self) -> None:
        """Stop both timers."""
        self._fact_timer.delete()
        self._dma_timer.delete()

    def __repr__(self) -> str:
        return (f"<EduDevice at {self.address} status={self.status:#x} "
                f"irq_status={self.irq_status:#x} dma_cmd={self.dma_cmd:#x}>")
