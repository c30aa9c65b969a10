"""A qtest-shaped driver for our own models: the same verbs as QEMU's qtest.

``QtestLikeDriver`` answers ``readl``/``writel``/``inb``/``outl``/``read``/
``write``/``clock_step``/``irq_intercept_in`` against a memory address
space, an I/O address space, a ``VirtualClock`` and IRQ lines, with QEMU's
qtest semantics:

* memory and port accesses take the *byte path* (QEMU's ``address_space_rw``,
  our ``read_bytes``/``write_bytes``): an access is cut into pieces the
  device allows, so ``readq`` of two 4-byte registers reads both, and a
  2-byte read of a 4-byte-only register reads 0;
* values are little-endian (x86), as qtest's ``tswap`` gives on x86;
* each command runs with the machine lock held, as qtest holds QEMU's;
* ``clock_step(ns)`` advances the virtual clock, firing due timers.

A script written against this class runs unchanged against
``memexpose.qemu.QtestClient`` (stock QEMU), so both can be compared.
"""

from __future__ import annotations

from collections.abc import Sequence

from memexpose.errors import HwModelError
from memexpose.hw.clock import VirtualClock
from memexpose.hw.irq import IrqLine
from memexpose.memory import AddressSpace

__all__ = ["QtestLikeDriver"]


class QtestLikeDriver:
    """Drive memory, ports, time and interrupts of our models like qtest drives QEMU.

    Args:
        memory: the CPU's view of memory (system memory address space).
        io: the I/O port address space (x86), or None.
        clock: the virtual clock ``clock_step`` advances, or None.
        irqs: interrupt lines by number (GSI), observed after ``irq_intercept_in``.

    Invariants:
        * ``irq_events`` lists ``("raise"|"lower", n)`` in the order the lines
          changed since interception; ``irq_level(n)`` is line n's level.
    """

    def __init__(self, memory: AddressSpace, io: AddressSpace | None = None, *,
                 clock: VirtualClock | None = None, irqs: Sequence[IrqLine] = ()) -> None:
        self.memory = memory
        self.io = io
        self.clock = clock
        self.irqs = list(irqs)
        self.lock = memory.system.lock
        self.irq_events: list[tuple[str, int]] = []
        self._intercepted = False

    # -- memory -------------------------------------------------------------------------

    def _load(self, as_: AddressSpace | None, addr: int, size: int) -> int:
        if as_ is None:
            raise HwModelError("QtestLikeDriver has no I/O address space; pass io=")
        with self.lock:
            data, _ = as_.read_bytes(addr, size)
        return int.from_bytes(data, "little")

    def _store(self, as_: AddressSpace | None, addr: int, value: int, size: int) -> None:
        if as_ is None:
            raise HwModelError("QtestLikeDriver has no I/O address space; pass io=")
        with self.lock:
            as_.write_bytes(addr, (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little"))

    def readb(self, addr: int) -> int:
        """Read 1 byte of memory."""
        return self._load(self.memory, addr, 1)

    def readw(self, addr: int) -> int:
        """Read 2 bytes of memory (little-endian)."""
        return self._load(self.memory, addr, 2)

    def readl(self, addr: int) -> int:
        """Read 4 bytes of memory (little-endian)."""
        return self._load(self.memory, addr, 4)

    def readq(self, addr: int) -> int:
        """Read 8 bytes of memory (little-endian)."""
        return self._load(self.memory, addr, 8)

    def writeb(self, addr: int, value: int) -> None:
        """Write 1 byte of memory."""
        self._store(self.memory, addr, value, 1)

    def writew(self, addr: int, value: int) -> None:
        """Write 2 bytes of memory (little-endian)."""
        self._store(self.memory, addr, value, 2)

    def writel(self, addr: int, value: int) -> None:
        """Write 4 bytes of memory (little-endian)."""
        self._store(self.memory, addr, value, 4)

    def writeq(self, addr: int, value: int) -> None:
        """Write 8 bytes of memory (little-endian)."""
        self._store(self.memory, addr, value, 8)

    def read(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes of memory."""
        with self.lock:
            data, _ = self.memory.read_bytes(addr, size)
        return data

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` to memory."""
        with self.lock:
            self.memory.write_bytes(addr, data)

    # -- ports --------------------------------------------------------------------------

    def inb(self, port: int) -> int:
        """Read a byte from an I/O port."""
        return self._load(self.io, port, 1)

    def inw(self, port: int) -> int:
        """Read 2 bytes from an I/O port."""
        return self._load(self.io, port, 2)

    def inl(self, port: int) -> int:
        """Read 4 bytes from an I/O port."""
        return self._load(self.io, port, 4)

    def outb(self, port: int, value: int) -> None:
        """Write a byte to an I/O port."""
        self._store(self.io, port, value, 1)

    def outw(self, port: int, value: int) -> None:
        """Write 2 bytes to an I/O port."""
        self._store(self.io, port, value, 2)

    def outl(self, port: int, value: int) -> None:
        """Write 4 bytes to an I/O port."""
        self._store(self.io, port, value, 4)

    # -- time and interrupts --------------------------------------------------------------

    def clock_step(self, ns: int | None = None) -> None:
        """Advance the virtual clock by ``ns`` (to the next deadline when None)."""
        if self.clock is None:
            raise HwModelError("QtestLikeDriver has no clock; pass clock=")
        self.clock.step(ns)

    def irq_intercept_in(self, name: str = "ioapic") -> None:
        """Start recording changes of every IRQ line (the name is accepted for symmetry)."""
        if self._intercepted:
            return
        self._intercepted = True
        for n, line in enumerate(self.irqs):
            line.add_listener(lambda level, n=n: self.irq_events.append(
                ("raise" if level else "lower", n)))

    def irq_level(self, n: int) -> bool:
        """Return the level of IRQ line ``n``."""
        return self.irqs[n].level if 0 <= n < len(self.irqs) else False
