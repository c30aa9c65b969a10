"""PL011 and 16550 UARTs: transmit, receive FIFOs, flags and interrupts."""

from __future__ import annotations

from memexpose.devices import PL011, PCISerial, Serial16550
from memexpose.hw import MiniPC
from memexpose.memory import AddressSpace, MemoryRegion

UART = 0x09000000


def pl011_system() -> tuple[PL011, AddressSpace]:
    uart = PL011()
    root = MemoryRegion.init_container("system", 1 << 32)
    as_ = AddressSpace(root, "memory")
    uart.mmio_map(0, root, UART)
    return uart, as_


def test_pl011_transmit_is_what_a_bare_metal_guest_needs() -> None:
    uart, as_ = pl011_system()
    assert as_.read(UART + 0x18, 4)[0] == 0x90  # TXFE | RXFE
    for ch in b"hello\n":
        while as_.read(UART + 0x18, 4)[0] & 0x20:  # TXFF
            pass
        as_.write(UART, ch, 4)
    assert bytes(uart.transmitted) == b"hello\n"
    ids = [as_.read(UART + 0xFE0 + 4 * i, 4)[0] for i in range(8)]
    assert ids == [0x11, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1]
    got = []
    uart.output = got.append
    as_.write(UART, ord("!"), 4)
    assert got == [b"!"]


def test_pl011_receive_fifo_and_interrupts() -> None:
    uart, as_ = pl011_system()
    assert uart.can_receive() == 1 and uart.receive(b"ab") == 1  # no FIFO: one deep
    as_.write(UART + 0x38, 0x10, 4)  # IMSC: RX
    assert uart.irq_line.level and as_.read(UART + 0x40, 4)[0] == 0x10
    assert as_.read(UART, 4)[0] == ord("a")
    assert not uart.irq_line.level and as_.read(UART + 0x18, 4)[0] & 0x10
    as_.write(UART + 0x2C, 0x70, 4)  # FIFOs on, 8 bits
    assert uart.receive(bytes(range(20))) == 16
    assert as_.read(UART + 0x18, 4)[0] & 0x40  # RXFF
    assert [as_.read(UART, 4)[0] for _ in range(16)] == list(range(16))
    as_.write(UART + 0x38, 0x20, 4)
    as_.write(UART, 0x41, 4)
    assert uart.irq_line.level  # TX interrupt
    as_.write(UART + 0x44, 0x20, 4)  # ICR
    assert not uart.irq_line.level
    uart.reset()
    assert as_.read(UART + 0x30, 4)[0] == 0x300 and as_.read(UART + 0x34, 4)[0] == 0x12


def test_16550_on_port_0x3f8() -> None:
    uart = Serial16550()
    io = MemoryRegion.init_container("io", 0x10000)
    as_ = AddressSpace(io, "I/O")
    uart.mmio_map(0, io, 0x3F8)

    def inb(reg: int) -> int:
        return as_.read(0x3F8 + reg, 1)[0]

    def outb(reg: int, value: int) -> None:
        as_.write(0x3F8 + reg, value, 1)

    assert inb(5) == 0x60 and inb(2) == 0x01 and inb(4) == 0x08 and inb(6) == 0xB0
    outb(3, 0x80)  # DLAB: divisor latch
    outb(0, 0x01)
    outb(1, 0x00)
    assert inb(0) == 0x01 and uart.divider == 1
    outb(3, 0x03)
    for ch in b"OK":
        outb(0, ch)
    assert bytes(uart.transmitted) == b"OK"
    outb(1, 0x02)  # THRI: THR empty interrupts at once
    assert uart.irq_line.level and inb(2) == 0x02
    assert not uart.irq_line.level  # reading IIR cleared the THRE interrupt
    outb(1, 0x01)  # RDI
    uart.receive(b"x")
    assert uart.irq_line.level and inb(2) == 0x04 and inb(5) & 1
    assert inb(0) == ord("x") and not uart.irq_line.level
    uart.receive(b"yz")  # overrun without a FIFO
    assert inb(5) & 0x02 and not inb(5) & 0x02  # OE clears on read
    assert inb(0) == ord("z")
    outb(2, 0xC7)  # FIFO on, clear both, trigger at 14 bytes
    assert inb(2) & 0xC0 == 0xC0
    uart.receive(b"abc")
    assert inb(2) & 0x0F == 0x0C  # below the trigger: character timeout
    assert bytes(inb(0) for _ in range(3)) == b"abc" and not uart.irq_line.level
    outb(2, 0x01)  # trigger at 1 byte: data available
    uart.receive(b"d")
    assert inb(2) & 0x0F == 0x04 and inb(0) == ord("d")
    outb(4, 0x10 | 0x0B)  # loopback, OUT2, RTS, DTR
    assert inb(6) == 0xB0
    outb(0, ord("L"))
    assert inb(0) == ord("L") and bytes(uart.transmitted) == b"OK"
    outb(7, 0x5A)
    assert inb(7) == 0x5A


def test_pci_serial_behind_an_io_bar() -> None:
    pc = MiniPC()
    out: list[bytes] = []
    serial = pc.add(PCISerial(output=out.append), slot=5)
    assert serial.config_read(0, 4) == 0x00021B36
    assert serial.config_read(8, 4) == 0x07000201
    pc.enumerate()
    port = serial.bar(0).addr
    pc.io_as.write(port, ord("Z"), 1)
    assert out == [b"Z"]
    pc.io_as.write(port + 1, 0x02, 1)  # THRI
    assert pc.gsi[pc.gsi_of(serial)].level
    assert pc.io_as.read(port + 2, 1)[0] == 0x02
    assert not pc.gsi[pc.gsi_of(serial)].level
    serial.reset()
    assert serial.uart.ier == 0
