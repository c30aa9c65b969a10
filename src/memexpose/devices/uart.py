"""Console UARTs: an ARM PL011 (MMIO) and a 16550A (x86 port I/O, or behind PCI).

Both follow QEMU 7.2's models (``hw/char/pl011.c``, ``hw/char/serial.c``)
closely enough for a bare-metal guest or a kernel console: transmit is
immediate (each byte goes to ``output``), receive goes through a FIFO fed
with ``receive(data)``, and interrupts follow the registers. Bytes sent are
also kept in ``transmitted`` unless an ``output`` callback takes them.

Simplifications, stated: no baud-rate timing; the 16550's character
timeout interrupt fires as soon as data sits below the FIFO trigger level;
no modem-line polling (MSR is fixed at DCD|DSR|CTS unless in loopback).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from memexpose.hw import PCIDevice, SysBusDevice, pci_regs
from memexpose.memory import (
    AccessConstraints,
    Endianness,
    MemoryRegion,
    MemoryRegionOps,
    Owner,
)

__all__ = ["PCISerial", "PL011", "Serial16550"]

Output = Callable[[bytes], None]

# -- PL011 ---------------------------------------------------------------------------

_PL011_ID_ARM = (0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)
_FR_RXFE, _FR_TXFF, _FR_RXFF, _FR_TXFE = 0x10, 0x20, 0x40, 0x80
_INT_RX, _INT_TX = 0x10, 0x20
_LCR_FEN = 0x10


class _PL011Ops(MemoryRegionOps):
    endianness = Endianness.NATIVE

    def __init__(self, uart: PL011) -> None:
        self.uart = uart

    def read(self, offset: int, size: int) -> int:
        return self.uart._read(offset)

    def write(self, offset: int, value: int, size: int) -> None:
        self.uart._write(offset, value)


class PL011(SysBusDevice):
    """ARM PrimeCell UART (PL011), one 4 KiB MMIO region and one combined IRQ.

    Args:
        output: called with each transmitted byte string; default: kept in
            ``transmitted``.
        id, path: device id / canonical path.

    Invariants:
        * ``FR.RXFE`` iff the receive FIFO is empty; ``FR.RXFF`` iff it is full;
        * the IRQ line is high iff ``int_level & int_enabled``.
    """

    def __init__(self, *, output: Output | None = None, id: str | None = None,
                 path: str | None = None) -> None:
        super().__init__("pl011", id=id, path=path)
        self.output = output
        self.transmitted = bytearray()
        self.region = MemoryRegion.init_io("pl011", 0x1000, _PL011Ops(self), owner=self.owner)
        self.init_mmio(self.region)
        self.irq_line = self.init_irq("pl011.irq")
        self._fifo: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        """Power-on state: FIFOs empty, TX and RX enabled, no interrupts."""
        self.flags = _FR_RXFE | _FR_TXFE
        self.lcr = 0
        self.rsr = 0
        self.cr = 0x300
        self.ifl = 0x12
        self.ilpr = self.ibrd = self.fbrd = self.dmacr = 0
        self.int_enabled = 0
        self.int_level = 0
        self._fifo.clear()
        self._update()

    @property
    def fifo_depth(self) -> int:
        """16 with FIFOs enabled (``LCR_H.FEN``), else 1."""
        return 16 if self.lcr & _LCR_FEN else 1

    def _update(self) -> None:
        self.irq_line.set_level(bool(self.int_level & self.int_enabled))

    def _read(self, offset: int) -> int:
        if 0xFE0 <= offset < 0x1000:
            return _PL011_ID_ARM[(offset - 0xFE0) >> 2]
        if offset == 0x000:
            self.flags &= ~_FR_RXFF
            c = self._fifo.popleft() if self._fifo else 0
            if not self._fifo:
                self.flags |= _FR_RXFE
                self.int_level &= ~_INT_RX
            self.rsr = c >> 8
            self._update()
            return c
        return {0x004: self.rsr, 0x018: self.flags, 0x020: self.ilpr, 0x024: self.ibrd,
                0x028: self.fbrd, 0x02C: self.lcr, 0x030: self.cr, 0x034: self.ifl,
                0x038: self.int_enabled, 0x03C: self.int_level,
                0x040: self.int_level & self.int_enabled, 0x048: self.dmacr}.get(offset, 0)

    def _write(self, offset: int, value: int) -> None:
        if offset == 0x000:
            self._transmit(bytes([value & 0xFF]))
            self.int_level |= _INT_TX
            self._update()
        elif offset == 0x004:
            self.rsr = 0
        elif offset == 0x020:
            self.ilpr = value
        elif offset == 0x024:
            self.ibrd = value
        elif offset == 0x028:
            self.fbrd = value
        elif offset == 0x02C:
            if (self.lcr ^ value) & _LCR_FEN:
                self._fifo.clear()
                self.flags = (self.flags | _FR_RXFE) & ~_FR_RXFF
            self.lcr = value
        elif offset == 0x030:
            self.cr = value
        elif offset == 0x034:
            self.ifl = value
        elif offset == 0x038:
            self.int_enabled = value
            self._update()
        elif offset == 0x044:
            self.int_level &= ~value
            self._update()
        elif offset == 0x048:
            self.dmacr = value

    def _transmit(self, data: bytes) -> None:
        if self.output is not None:
            self.output(data)
        else:
            self.transmitted += data

    def can_receive(self) -> int:
        """How many bytes ``receive`` accepts now."""
        return self.fifo_depth - len(self._fifo)

    def receive(self, data: bytes) -> int:
        """Feed ``data`` to the receive FIFO; return how many bytes fit (the rest is dropped)."""
        taken = 0
        for byte in data:
            if len(self._fifo) >= self.fifo_depth:
                break
            self._fifo.append(byte)
            taken += 1
            self.flags &= ~_FR_RXFE
            if len(self._fifo) == self.fifo_depth:
                self.flags |= _FR_RXFF
            if len(self._fifo) == 1:  # QEMU's read trigger is always 1
                self.int_level |= _INT_RX
        self._update()
        return taken


# -- 16550 ----------------------------------------------------------------------------

_IER_RDI, _IER_THRI, _IER_RLSI, _IER_MSI = 0x01, 0x02, 0x04, 0x08
_IIR_NO_INT, _IIR_MSI, _IIR_THRI, _IIR_RDI, _IIR_RLSI, _IIR_CTI = 0x01, 0x00, 0x02, 0x04, 0x06, 0x0C
_LSR_DR, _LSR_OE, _LSR_BI, _LSR_THRE, _LSR_TEMT = 0x01, 0x02, 0x10, 0x20, 0x40
_LSR_INT_ANY = 0x1E
_LCR_DLAB = 0x80
_MCR_LOOP, _MCR_OUT2 = 0x10, 0x08
_MSR_DCD, _MSR_DSR, _MSR_CTS, _MSR_ANY_DELTA = 0x80, 0x20, 0x10, 0x0F
_FCR_FE, _FCR_RFR, _FCR_XFR = 0x01, 0x02, 0x04
_FIFO_SIZE = 16
_ITL = (1, 4, 8, 14)


class _SerialOps(MemoryRegionOps):
    endianness = Endianness.LITTLE
    valid = AccessConstraints(0, 0, unaligned=True)
    impl = AccessConstraints(1, 1)

    def __init__(self, uart: Serial16550) -> None:
        self.uart = uart

    def read(self, offset: int, size: int) -> int:
        return self.uart._read(offset & 7)

    def write(self, offset: int, value: int, size: int) -> None:
        self.uart._write(offset & 7, value & 0xFF)


class Serial16550(SysBusDevice):
    """A 16550A UART: 8 byte-wide registers, one IRQ output.

    Map ``region`` in the I/O space (0x3F8 for COM1 with IRQ 4) or behind a
    BAR (``PCISerial``).

    Args:
        output: called with each transmitted byte string; default: kept in
            ``transmitted``.
        id, path: device id / canonical path.
        type_name: the type name its regions' owner shows.
        owner: share an existing owner (a PCI function embedding the UART).

    Invariants:
        * ``iir``'s low nibble is the highest-priority pending interrupt;
        * the IRQ line is high iff that nibble is not ``NO_INT``.
    """

    def __init__(self, *, output: Output | None = None, id: str | None = None,
                 path: str | None = None, type_name: str = "serial",
                 owner: Owner | None = None) -> None:
        super().__init__(type_name, id=id, path=path, owner=owner)
        self.output = output
        self.transmitted = bytearray()
        self.region = MemoryRegion.init_io("serial", 8, _SerialOps(self), owner=self.owner)
        self.init_mmio(self.region)
        self.irq_line = self.init_irq(f"{type_name}.irq")
        self._fifo: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        """Power-on state (QEMU's ``serial_reset``)."""
        self.rbr = 0
        self.ier = 0
        self.iir = _IIR_NO_INT
        self.lcr = 0
        self.lsr = _LSR_TEMT | _LSR_THRE
        self.msr = _MSR_DCD | _MSR_DSR | _MSR_CTS
        self.mcr = _MCR_OUT2
        self.scr = 0
        self.divider = 0x0C
        self.fcr = 0
        self.thr_ipending = False
        self.timeout_ipending = False
        self._fifo.clear()
        self._update_irq()

    def _update_irq(self) -> None:
        tmp = _IIR_NO_INT
        if self.ier & _IER_RLSI and self.lsr & _LSR_INT_ANY:
            tmp = _IIR_RLSI
        elif self.ier & _IER_RDI and self.timeout_ipending:
            tmp = _IIR_CTI
        elif self.ier & _IER_RDI and self.lsr & _LSR_DR and (
                not self.fcr & _FCR_FE or len(self._fifo) >= _ITL[self.fcr >> 6]):
            tmp = _IIR_RDI
        elif self.ier & _IER_THRI and self.thr_ipending:
            tmp = _IIR_THRI
        elif self.ier & _IER_MSI and self.msr & _MSR_ANY_DELTA:
            tmp = _IIR_MSI
        self.iir = tmp | (self.iir & 0xF0)
        self.irq_line.set_level(tmp != _IIR_NO_INT)

    def _read(self, reg: int) -> int:
        if reg == 0:
            if self.lcr & _LCR_DLAB:
                return self.divider & 0xFF
            if self.fcr & _FCR_FE:
                value = self._fifo.popleft() if self._fifo else 0
                if not self._fifo:
                    self.lsr &= ~(_LSR_DR | _LSR_BI)
                    self.timeout_ipending = False
            else:
                value = self.rbr
                self.lsr &= ~(_LSR_DR | _LSR_BI)
            self._update_irq()
            return value
        if reg == 1:
            return self.divider >> 8 & 0xFF if self.lcr & _LCR_DLAB else self.ier
        if reg == 2:
            value = self.iir
            if value & 0x0F == _IIR_THRI:
                self.thr_ipending = False
                self._update_irq()
            return value
        if reg == 3:
            return self.lcr
        if reg == 4:
            return self.mcr
        if reg == 5:
            value = self.lsr
            if self.lsr & (_LSR_BI | _LSR_OE):
                self.lsr &= ~(_LSR_BI | _LSR_OE)
                self._update_irq()
            return value
        if reg == 6:
            if self.mcr & _MCR_LOOP:
                return (self.mcr & 0x0C) << 4 | (self.mcr & 0x02) << 3 | (self.mcr & 0x01) << 5
            value = self.msr
            if self.msr & _MSR_ANY_DELTA:
                self.msr &= 0xF0
                self._update_irq()
            return value
        return self.scr

    def _write(self, reg: int, value: int) -> None:
        if reg == 0:
            if self.lcr & _LCR_DLAB:
                self.divider = (self.divider & 0xFF00) | value
                return
            self.thr_ipending = False
            self.lsr &= ~(_LSR_THRE | _LSR_TEMT)
            if self.mcr & _MCR_LOOP:
                self._receive_byte(value)
            elif self.output is not None:
                self.output(bytes([value]))
            else:
                self.transmitted.append(value)
            self.lsr |= _LSR_THRE | _LSR_TEMT
            self.thr_ipending = True
            self._update_irq()
        elif reg == 1:
            if self.lcr & _LCR_DLAB:
                self.divider = (self.divider & 0x00FF) | value << 8
                return
            changed = (self.ier ^ value) & 0x0F
            self.ier = value & 0x0F
            if changed & _IER_THRI:
                self.thr_ipending = bool(self.ier & _IER_THRI and self.lsr & _LSR_THRE)
            if changed:
                self._update_irq()
        elif reg == 2:
            if value & _FCR_RFR:
                self._fifo.clear()
                self.lsr &= ~(_LSR_DR | _LSR_BI)
                self.timeout_ipending = False
            self.fcr = value & 0xC9
            if self.fcr & _FCR_FE:
                self.iir |= 0xC0
            else:
                self.iir &= ~0xC0 & 0xFF
            self._update_irq()
        elif reg == 3:
            self.lcr = value
        elif reg == 4:
            self.mcr = value & 0x1F
        elif reg == 7:
            self.scr = value

    def _receive_byte(self, byte: int) -> None:
        if self.fcr & _FCR_FE:
            if len(self._fifo) >= _FIFO_SIZE:
                self.lsr |= _LSR_OE
            else:
                self._fifo.append(byte)
            self.timeout_ipending = len(self._fifo) < _ITL[self.fcr >> 6]
        else:
            if self.lsr & _LSR_DR:
                self.lsr |= _LSR_OE
            self.rbr = byte
        self.lsr |= _LSR_DR
        self._update_irq()

    def receive(self, data: bytes) -> None:
        """Feed received bytes (overruns set ``LSR.OE``, as on hardware)."""
        for byte in data:
            self._receive_byte(byte)


class PCISerial(PCIDevice):
    """A 16550A behind an 8-byte I/O BAR: QEMU's ``pci-serial`` (1b36:0002, class 0x0700)."""

    def __init__(self, *, output: Output | None = None, id: str | None = None,
                 path: str | None = None) -> None:
        super().__init__("pci-serial", vendor_id=pci_regs.PCI_VENDOR_ID_REDHAT,
                         device_id=0x0002, revision=1,
                         class_code=pci_regs.PCI_CLASS_COMMUNICATION_SERIAL, prog_if=0x02,
                         interrupt_pin=1, id=id, path=path)
        self.uart = Serial16550(output=output, type_name="pci-serial", owner=self.owner)
        self.uart.irq_line.add_listener(self.set_irq)
        self.register_bar(0, self.uart.region, io=True)

    def device_reset(self) -> None:
        """Reset the UART too."""
        self.uart.reset()
