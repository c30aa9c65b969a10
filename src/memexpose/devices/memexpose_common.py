"""The memexpose register block: one 4 KiB page that glues a guest to a link endpoint.

Both memexpose devices (``memexpose-pci`` BAR0, ``memexpose-platform`` MMIO 0)
show this block (docs/memexpose-devices.md). Offsets, little-endian; every
register is 8 bytes:

======  ============  ====  ===================================================
offset  name          kind  meaning
======  ============  ====  ===================================================
0x000   ENABLE        RW*   write non-zero: connect in the background; write 0:
                            disconnect (BYE). Reads 1 while connected, else 0
0x008   STATUS        RO    ``MemexposeStatus`` bits (not in the seed)
0x010   DROPPED       RO    interrupts dropped, RX queue full, since reset
0x018   PENDING       RO    interrupts waiting in the RX queue (0..16)
0x020   WINDOW_SIZE   RO    bytes of the window (BAR1 / MMIO 1)
0x028   WINDOW_LIMIT  RO    window bytes the peer serves now (0: disconnected)
0x400   RECV          RO*   read: pop the oldest interrupt into RX_TYPE/RX_DATA
                            and return 1; 0 (RX unchanged) when the queue is empty
0x408   RX_TYPE       RO    type of the interrupt RECV popped
0x410   RX_DATA       RO    its 128 data bytes (0x410..0x48f)
0x800   SEND          WO*   write any value: send TX_TYPE + TX_DATA; reads 0
0x808   TX_TYPE       RW    type of the next interrupt
0x810   TX_DATA       RW    its 128 data bytes (0x810..0x88f)
others  reserved            read 0; writes ignored (counted)
======  ============  ====  ===================================================

Access rules:

* accesses of 1, 2, 4 or 8 bytes, naturally aligned (``valid`` 1..8);
  ``impl`` is 1..8 too, so every guest access is exactly one callback: an
  8-byte access never arrives as two 4-byte halves;
* the starred registers *act* on an access that starts at their first byte,
  whatever its size (a 4-byte access to the low half acts once, and so does
  an 8-byte one). Their other bytes are inert: the high half (+4) reads 0
  and ignores writes, so a guest that splits a 64-bit access in two still
  acts once;
* the other registers are plain bytes: any aligned slice reads (and, for
  TX, writes) those bytes.

ENABLE never waits for the peer (the seed froze the VM until the peer
connected): a write of 1 starts ``MemexposeEndpoint.enable_nowait`` and
returns. STATUS shows CONNECTING until the link is up (ENABLE then reads 1)
or the connect timeout passed (CONNECT_FAILED). A link that ends (the peer
died, said BYE, or broke the protocol) shows PEER_LOST; writing ENABLE = 1
again reconnects.

The interrupt level is "RX queue non-empty"; the device turns it into INTx,
MSI or an IRQ line (``irq_handler``).
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from memexpose.errors import ConfigError, LinkStateError
from memexpose.link import (
    INTERRUPT_QUEUE_SIZE,
    Exposure,
    LinkState,
    LinkStatistics,
    MemexposeEndpoint,
    TcpTransport,
    Transport,
    UnixTransport,
)
from memexpose.memory import (
    AccessConstraints,
    Endianness,
    MemoryRegion,
    MemoryRegionOps,
    Owner,
)

__all__ = [
    "MEMEXPOSE_REGS_SIZE",
    "MemexposeCore",
    "MemexposeReg",
    "MemexposeStatistics",
    "MemexposeStatus",
    "make_transport",
]

MEMEXPOSE_REGS_SIZE = 0x1000
"""Bytes of the register block (BAR0, platform MMIO 0)."""

# Plain ints on the hot path (enum members cost a method call per operator).
_ENABLE = 0x000
_INFO_END = 0x030
_RECV = 0x400
_RX = 0x408
_RX_END = 0x490
_SEND = 0x800
_TX = 0x808
_TX_END = 0x890
_DATA_SIZE = 128
_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))

_ST_ENABLED = 1 << 0
_ST_CONNECTED = 1 << 1
_ST_PEER_LOST = 1 << 2
_ST_CONNECTING = 1 << 3
_ST_CONNECT_FAILED = 1 << 4
_ST_SEND_FAILED = 1 << 5
_ST_IRQ = 1 << 6


class MemexposeReg(enum.IntEnum):
    """Register offsets of the block (see the module docstring)."""

    ENABLE = 0x000
    STATUS = 0x008
    DROPPED = 0x010
    PENDING = 0x018
    WINDOW_SIZE = 0x020
    WINDOW_LIMIT = 0x028
    RECV = 0x400
    RX_TYPE = 0x408
    RX_DATA = 0x410
    SEND = 0x800
    TX_TYPE = 0x808
    TX_DATA = 0x810


class MemexposeStatus(enum.IntFlag):
    """Bits of the STATUS register (0x008).

    At most one of CONNECTED, CONNECTING, PEER_LOST and CONNECT_FAILED is set.
    """

    ENABLED = _ST_ENABLED
    """The guest wrote ENABLE = 1 and has not written 0 (nor reset) since."""
    CONNECTED = _ST_CONNECTED
    """The link is up (ENABLE reads 1)."""
    PEER_LOST = _ST_PEER_LOST
    """The link ended: the peer died, said BYE, broke the protocol or timed out."""
    CONNECTING = _ST_CONNECTING
    """An ENABLE is connecting in the background (bounded by the connect timeout)."""
    CONNECT_FAILED = _ST_CONNECT_FAILED
    """The last ENABLE found no peer (or the handshake failed); write 1 to retry."""
    SEND_FAILED = _ST_SEND_FAILED
    """The last SEND was not delivered (no link); cleared by a delivered SEND."""
    IRQ = _ST_IRQ
    """The RX queue is non-empty (the interrupt level)."""


@dataclass(frozen=True, slots=True)
class MemexposeStatistics:
    """A snapshot of a memexpose device's counters (``statistics()``).

    Attributes:
        link: the endpoint's ``LinkStatistics`` (forwarded and direct
            accesses, interrupts sent/received/dropped, ...).
        enables, disables: guest writes of ENABLE = non-zero / 0.
        sends, sends_failed: SEND writes, and those not delivered.
        receives, empty_receives: RECV reads that popped an entry / found none.
        irq_raises: times the interrupt level went high (MSI messages on PCI
            when MSI is on).
        ignored_writes: guest writes to read-only or reserved offsets.
    """

    link: LinkStatistics
    enables: int
    disables: int
    sends: int
    sends_failed: int
    receives: int
    empty_receives: int
    irq_raises: int
    ignored_writes: int


def make_transport(where: Transport | str | os.PathLike[str], *, listen: bool) -> Transport:
    """Return a transport for ``where``.

    Args:
        where: a ``Transport`` (returned as it is), ``"unix:PATH"``,
            ``"tcp:HOST:PORT"``, or a UNIX socket path.
        listen: listen and accept (True) or connect (False); ignored for a
            ``Transport``.

    Raises:
        ConfigError: a ``tcp:`` address without a numeric port, or an empty path.
    """
    if isinstance(where, Transport):
        return where
    text = os.fspath(where)
    if text.startswith("tcp:"):
        host, sep, port = text[4:].rpartition(":")
        if not sep or not port.isdigit():
            raise ConfigError(f"transport {text!r}: write tcp:HOST:PORT, e.g. "
                              "tcp:127.0.0.1:7000")
        return TcpTransport(host.strip("[]") or "127.0.0.1", int(port), listen=listen)
    path = text.removeprefix("unix:")
    if not path:
        raise ConfigError("transport: empty UNIX socket path; give a path or tcp:HOST:PORT")
    return UnixTransport(path, listen=listen)


def check_window_size(window_size: int, what: str) -> None:
    """Check a window size: a power of two from 4 KiB to 2**63 bytes.

    Raises:
        ConfigError: anything else (the message names ``what``).
    """
    if isinstance(window_size, bool) or not isinstance(window_size, int) or \
            window_size < 0x1000 or window_size > 1 << 63 or window_size & (window_size - 1):
        raise ConfigError(f"{what}: window_size {window_size!r} must be a power of two from "
                          "0x1000 (4 KiB) to 2**63 bytes (it is a 64-bit BAR)")


class _RegisterOps(MemoryRegionOps):
    """The block's callbacks: one call per guest access, little-endian."""

    endianness = Endianness.LITTLE
    valid = AccessConstraints(1, 8)
    impl = AccessConstraints(1, 8)

    __slots__ = ("_core",)

    def __init__(self, core: MemexposeCore) -> None:
        self._core = core

    def read(self, offset: int, size: int) -> int:
        return self._core._read(offset, size)

    def write(self, offset: int, value: int, size: int) -> None:
        self._core._write(offset, value, size)


class MemexposeCore:
    """The register block of a memexpose device and the link endpoint behind it.

    Devices build one and map ``regs`` and ``window``; they turn the
    interrupt level into INTx/MSI or an IRQ line with ``irq_handler``.

    Args:
        name: names the endpoint, its regions and threads.
        transport: see ``make_transport`` (a ``Transport``, ``"unix:PATH"``,
            ``"tcp:HOST:PORT"`` or a socket path).
        listen: for a path or address: listen (True) or connect (False).
        exposure: what the peer may reach of this machine's memory; None
            exports nothing.
        window_size: bytes of the window onto the peer's memory, a power of
            two from 4 KiB.
        lock: the machine lock; default the exposure's ``system.lock``.
            Required when ``exposure`` is None.
        irq_handler: called with the new level (True: RX queue non-empty),
            machine lock held.
        owner: the owner of the register region (the device's).
        role, timeout, connect_timeout, readonly_share, direct: as
            ``MemexposeEndpoint``.

    Raises:
        ConfigError: a bad window size, no lock, or what the endpoint refuses.

    Invariants:
        * ``_tx`` and ``_rx`` hold 136 bytes: the 8-byte type, then 128 data bytes;
        * ``_level`` is the last level passed to ``irq_handler``;
        * ``_dropped_base <= endpoint.interrupt_queue.dropped``.
    """

    def __init__(self, name: str, transport: Transport | str | os.PathLike[str], *,
                 listen: bool = False, exposure: Exposure | None = None,
                 window_size: int = 0x1000, lock: threading.RLock | None = None,
                 irq_handler: Callable[[bool], None] | None = None,
                 owner: Owner | None = None, role: int | None = None, timeout: float = 2.0,
                 connect_timeout: float = 5.0, readonly_share: str = "seal",
                 direct: bool = True) -> None:
        check_window_size(window_size, name)
        if exposure is None and lock is None:
            raise ConfigError(f"{name}: without an exposure, pass lock= (the machine lock, "
                              "e.g. machine.lock) so that the window and the link share it")
        self.name = name
        self.irq_handler = irq_handler
        self.endpoint = MemexposeEndpoint(
            name, make_transport(transport, listen=listen), exposure=exposure,
            window_size=window_size, readonly_share=readonly_share, direct=direct, role=role,
            timeout=timeout, connect_timeout=connect_timeout,
            irq_queue_size=INTERRUPT_QUEUE_SIZE, on_irq_level=self._on_level, lock=lock)
        self.regs = MemoryRegion.init_io(f"{name}.regs", MEMEXPOSE_REGS_SIZE,
                                         _RegisterOps(self), owner=owner)
        self.window_size = window_size
        self._window = self.endpoint.window
        assert self._window is not None
        self._queue = self.endpoint.interrupt_queue
        self._tx = bytearray(8 + _DATA_SIZE)
        self._rx = bytearray(8 + _DATA_SIZE)
        self._guest_enabled = False
        self._send_failed = False
        self._level = False
        self._dropped_base = 0
        self.enables = 0
        self.disables = 0
        self.sends = 0
        self.sends_failed = 0
        self.receives = 0
        self.empty_receives = 0
        self.irq_raises = 0
        self.ignored_writes = 0

    # -- what devices map ---------------------------------------------------------------

    @property
    def window(self) -> MemoryRegion:
        """The window region onto the peer's exposed memory (``window_size`` bytes)."""
        return self._window

    @property
    def lock(self) -> threading.RLock:
        """The machine lock the link takes (the memory system's lock)."""
        return self.endpoint.lock

    @property
    def level(self) -> bool:
        """The interrupt level last reported (RX queue non-empty)."""
        return self._level

    # -- register state, as the guest sees it ---------------------------------------

    def status(self) -> int:
        """Return the STATUS register (``MemexposeStatus`` bits)."""
        state = self.endpoint.state
        bits = _ST_ENABLED if self._guest_enabled else 0
        if state is LinkState.CONNECTED:
            bits |= _ST_CONNECTED
        elif state is LinkState.CONNECTING:
            bits |= _ST_CONNECTING
        elif state is LinkState.DISCONNECTED:
            bits |= _ST_PEER_LOST
        elif state is LinkState.DISABLED and self._guest_enabled:
            bits |= _ST_CONNECT_FAILED
        if self._send_failed:
            bits |= _ST_SEND_FAILED
        if self._queue.level:
            bits |= _ST_IRQ
        return bits

    def _info(self, base: int) -> int:
        if base == 0x000:
            return 1 if self.endpoint.state is LinkState.CONNECTED else 0
        if base == 0x008:
            return self.status()
        if base == 0x010:
            return self._queue.dropped - self._dropped_base
        if base == 0x018:
            return len(self._queue)
        if base == 0x020:
            return self.window_size
        importer = self.endpoint.importer
        return importer.limit if importer is not None else 0

    # -- MMIO (machine lock held) ---------------------------------------------------

    def _read(self, offset: int, size: int) -> int:
        if offset < _INFO_END:
            base = offset & ~7
            return (self._info(base) >> ((offset - base) << 3)) & _MASKS[size]
        if offset == _RECV:
            return self._recv()
        if _RX <= offset < _RX_END:
            o = offset - _RX
            return int.from_bytes(self._rx[o:o + size], "little")
        if _TX <= offset < _TX_END:
            o = offset - _TX
            return int.from_bytes(self._tx[o:o + size], "little")
        return 0

    def _write(self, offset: int, value: int, size: int) -> None:
        if _TX <= offset < _TX_END:
            o = offset - _TX
            self._tx[o:o + size] = value.to_bytes(size, "little")
        elif offset == _SEND:
            self._send()
        elif offset == _ENABLE:
            self._set_enable(value != 0)
        else:
            self.ignored_writes += 1

    def _set_enable(self, on: bool) -> None:
        if on:
            self.enables += 1
            self._guest_enabled = True
            self._connect()
        else:
            self.disables += 1
            self._guest_enabled = False
            self.endpoint.disable()

    def _connect(self) -> None:
        """Start connecting in the background; never waits. Machine lock held.

        ``enable_nowait`` neither waits for a connect that an earlier
        ENABLE = 0 cancelled nor lets it change the state (E4).
        """
        try:
            self.endpoint.enable_nowait()
        except LinkStateError:
            pass  # closed: STATUS tells the guest

    def _send(self) -> None:
        self.sends += 1
        tx = self._tx
        ok = self.endpoint.send_interrupt(int.from_bytes(tx[:8], "little"), bytes(tx[8:]))
        self._send_failed = not ok
        if not ok:
            self.sends_failed += 1

    def _recv(self) -> int:
        msg = self.endpoint.pop_interrupt()
        if msg is None:
            self.empty_receives += 1
            return 0
        self.receives += 1
        rx = self._rx
        rx[:8] = msg.type.to_bytes(8, "little")
        rx[8:] = msg.data
        return 1

    def _on_level(self, level: bool) -> None:
        """Endpoint hook: the RX queue turned non-empty/empty. Machine lock held."""
        self._level = level
        if level:
            self.irq_raises += 1
        if self.irq_handler is not None:
            self.irq_handler(level)

    # -- host side ------------------------------------------------------------------------

    def reset(self) -> None:
        """Return to the power-on state: link disabled, RX queue and registers cleared.

        The peer sees a BYE. DROPPED counts from zero again. Machine lock held.
        """
        self._guest_enabled = False
        self._send_failed = False
        self.endpoint.disable()
        self._queue.clear()
        self._tx[:] = bytes(len(self._tx))
        self._rx[:] = bytes(len(self._rx))
        self._dropped_base = self._queue.dropped

    def disable(self) -> None:
        """Disconnect as a guest write of ENABLE = 0 would (without counting it)."""
        self._guest_enabled = False
        self.endpoint.disable()

    def close(self) -> None:
        """Disconnect and release the transport (a listening socket file is removed). Final.

        Call without the machine lock when possible: it joins the link's threads.
        """
        self._guest_enabled = False
        self.endpoint.close()

    def statistics(self) -> MemexposeStatistics:
        """Return a snapshot of the device and link counters."""
        return MemexposeStatistics(
            link=self.endpoint.statistics(), enables=self.enables, disables=self.disables,
            sends=self.sends, sends_failed=self.sends_failed, receives=self.receives,
            empty_receives=self.empty_receives, irq_raises=self.irq_raises,
            ignored_writes=self.ignored_writes)

    def _check_invariants(self) -> None:
        assert len(self._tx) == len(self._rx) == 8 + _DATA_SIZE
        assert 0 <= self._dropped_base <= self._queue.dropped
        status = self.status()
        assert bin(status & (_ST_CONNECTED | _ST_CONNECTING | _ST_PEER_LOST
                             | _ST_CONNECT_FAILED)).count("1") <= 1, hex(status)
        self.endpoint._check_invariants()

    def __repr__(self) -> str:
        return (f"<MemexposeCore {self.name!r} {self.endpoint.state.name} "
                f"status={MemexposeStatus(self.status())!r} pending={len(self._queue)}>")
