"""What a device sees in the remote process: guest RAM, a bus, a clock, one INTx line.

``RemotePlatform`` is the remote half of QEMU's multi-process split (QEMU's
``x-remote`` machine, reduced to what one PCI function needs):

* ``sysmem``: a container holding only the guest RAM the VM side shared
  with ``SYNC_SYSMEM`` (foreign ``HostMemory`` mappings of its fds). It is
  the DMA root of the bus, so a device's bus-master accesses land in the
  VM's own RAM, zero copy (docs/remote.md R4);
* ``pci_mem``/``pci_io``: where the device's BARs appear, at the bus
  addresses the VM side programmed through forwarded config writes; BAR
  accesses, which arrive as absolute bus addresses, are decoded there
  (``mem_as``/``io_as``, R3);
* ``host``: a PCI host whose root bus holds the device at 00.0, with one
  IRQ line, ``intx``, that follows the device's INTx pin (R5);
* ``clock``: the virtual clock device timers run on; the server advances it
  with wall time.

Nothing here reads a socket; ``RemoteDeviceServer`` does.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

from memexpose.errors import ConfigError, HostMemoryError, ProtocolError
from memexpose.hw import IrqLine, PCIDevice, PCIHost, VirtualClock
from memexpose.memory import (
    ADDR_SPACE_END,
    AddressSpace,
    HostMemory,
    MemoryRegion,
    MemorySystem,
    UnassignedIOOps,
)
from memexpose.remote.wire import close_fds

__all__ = ["RamEntry", "RemotePlatform"]

log = logging.getLogger(__name__)

RamEntry = tuple[int, int, int]
"""One region of guest RAM: ``(gpa, size, offset in its fd)``."""


class _Ram:
    __slots__ = ("gpa", "hostmem", "key", "offset", "region", "size")

    def __init__(self, gpa: int, size: int, offset: int, key: tuple[int, int],
                 hostmem: HostMemory, region: MemoryRegion) -> None:
        self.gpa = gpa
        self.size = size
        self.offset = offset
        self.key = key
        self.hostmem = hostmem
        self.region = region


class RemotePlatform:
    """The remote process's view: guest RAM from the VM side, a PCI bus, a clock.

    Args:
        name: the memory system's name (messages, ``info mtree``).

    Attributes:
        system: the memory system; its lock is the machine lock of this process.
        clock: the virtual clock of device timers.
        sysmem, memory: guest RAM (container) and its address space.
        pci_mem, pci_io, mem_as, io_as: where BARs appear, and their address spaces.
        host: the PCI host; ``intx``: its one IRQ line.
        device: the plugged device, or None.

    Invariants:
        * ``_ram`` holds the regions of the last RAM map, sorted by gpa and
          non-overlapping; each owns one ``HostMemory`` (one received fd);
          they are exactly the subregions of ``sysmem``;
        * a superseded ``HostMemory`` is closed once the new map is committed.
    """

    def __init__(self, name: str = "remote") -> None:
        self.system = MemorySystem(name)
        self.clock = VirtualClock(self.system.lock)
        self.sysmem = MemoryRegion.init_container("system", 1 << 64)
        self.pci_mem = MemoryRegion.init_container("pci", 1 << 64)
        self.pci_io = MemoryRegion.init_io("io", 0x10000, UnassignedIOOps())
        self.intx = IrqLine(f"{name}.intx")
        with self.system.transaction():
            self.memory = AddressSpace(self.sysmem, "memory", system=self.system)
            self.mem_as = AddressSpace(self.pci_mem, "pci-memory", system=self.system)
            self.io_as = AddressSpace(self.pci_io, "I/O", system=self.system)
            self.host = PCIHost(self.system, mem_space=self.pci_mem, io_space=self.pci_io,
                                dma_root=self.sysmem, irq_lines=[self.intx],
                                map_irq=lambda slot, pin: 0, name="remote-pci.0")
        self.device: PCIDevice | None = None
        self._ram: list[_Ram] = []
        self._closers: list[Callable[[], None]] = []
        self.ram_syncs = 0
        """How many RAM maps were applied (statistics; unchanged maps do not count)."""

    # -- the device ---------------------------------------------------------------

    def plug(self, device: PCIDevice) -> PCIDevice:
        """Put ``device`` at 00.0 of the root bus; return it.

        Raises:
            ConfigError: a device is plugged already (one device per process,
                as QEMU's ``x-remote-object``).
        """
        if self.device is not None:
            raise ConfigError(f"remote platform {self.system.name!r} already serves "
                              f"{self.device.type_name}; run one server process per device")
        self.host.bus.add_device(device, 0, 0)
        self.device = device
        return device

    def add_closer(self, closer: Callable[[], None]) -> None:
        """Call ``closer()`` in ``close``, after the device left the bus (machine lock free).

        For device resources that outlive unplugging, e.g. ``MemexposePCI.close``
        (its link threads and transport). Closers run once, last added first.
        """
        self._closers.append(closer)

    # -- guest RAM (docs/remote.md R4) ------------------------------------------------

    def ram_map(self) -> list[RamEntry]:
        """Return the current RAM map as ``(gpa, size, offset)`` entries, sorted by gpa."""
        return [(r.gpa, r.size, r.offset) for r in self._ram]

    def set_ram_map(self, entries: list[RamEntry], fds: list[int] | tuple[int, ...]) -> bool:
        """Replace the whole RAM map: map ``fds[i]`` at ``entries[i]``; take every fd.

        The map is checked first (sizes positive, inside 2**64, no overlaps).
        A map equal to the current one (same gpas, sizes, offsets and files)
        keeps the current mappings and closes the new fds. Otherwise the new
        regions replace the old ones in one transaction, and the old mappings
        and their fds are closed after it.

        Returns:
            Whether the map changed.

        Raises:
            ProtocolError: a malformed map, or an fd that cannot be mapped as
                described; every fd is closed and the old map stays.
        """
        if len(entries) != len(fds):
            close_fds(fds)
            raise ProtocolError(f"RAM map of {len(entries)} regions came with {len(fds)} fds")
        try:
            items = _check_map(entries, fds)
        except ProtocolError:
            close_fds(fds)
            raise
        if [item[:3] + item[4:] for item in items] == \
                [(r.gpa, r.size, r.offset, r.key) for r in self._ram]:
            close_fds(fds)
            return False
        new: list[_Ram] = []
        try:
            for gpa, size, offset, fd, key in items:
                hostmem = HostMemory.foreign(f"ram@{gpa:#x}", fd, size, offset=offset)
                region = MemoryRegion.init_ram(f"ram@{gpa:#x}", size, hostmem=hostmem)
                new.append(_Ram(gpa, size, offset, key, hostmem, region))
        except HostMemoryError as exc:
            for ram in new:
                ram.hostmem.close()
            close_fds([item[3] for item in items[len(new) + 1:]])
            raise ProtocolError(f"cannot map guest RAM region at gpa {items[len(new)][0]:#x}: "
                                f"{exc}") from exc
        old = self._ram
        with self.system.transaction():
            for ram in old:
                self.sysmem.del_subregion(ram.region)
            for ram in new:
                self.sysmem.add_subregion(ram.gpa, ram.region)
            self._ram = new
        for ram in old:
            ram.hostmem.close()
        self.ram_syncs += 1
        return True

    def close(self) -> None:
        """Unplug the device, run the closers, release every RAM mapping (and its fd).

        Idempotent. A closer that fails is logged; the others still run.
        """
        with self.system.transaction():
            if self.device is not None and self.device.bus is not None:
                self.device.bus.remove_device(self.device)
        closers, self._closers = self._closers, []
        for closer in reversed(closers):
            try:
                closer()
            except Exception:
                log.exception("remote platform %r: closing %r failed", self.system.name,
                              closer)
        with self.system.transaction():
            for ram in self._ram:
                self.sysmem.del_subregion(ram.region)
        for ram in self._ram:
            ram.hostmem.close()
        self._ram = []

    def _check_invariants(self) -> None:
        subs = sorted((mr.addr, id(mr)) for mr in self.sysmem.subregions)
        assert subs == sorted((r.gpa, id(r.region)) for r in self._ram)
        for prev, ram in zip(self._ram, self._ram[1:]):
            assert prev.gpa + prev.size <= ram.gpa
        for ram in self._ram:
            assert not ram.hostmem.closed

    def __repr__(self) -> str:
        dev = self.device.type_name if self.device is not None else "no device"
        return f"<RemotePlatform {self.system.name!r} {dev}, {len(self._ram)} RAM regions>"


def _check_map(entries: list[RamEntry], fds: list[int] | tuple[int, ...]
               ) -> list[tuple[int, int, int, int, tuple[int, int]]]:
    """Return ``(gpa, size, offset, fd, (st_dev, st_ino))`` sorted by gpa, or raise."""
    items = []
    for i, ((gpa, size, offset), fd) in enumerate(zip(entries, fds)):
        if size <= 0 or gpa < 0 or gpa + size > ADDR_SPACE_END or offset < 0:
            raise ProtocolError(f"RAM region {i}: gpa {gpa:#x} size {size:#x} offset "
                                f"{offset:#x} is empty or outside 0..2**64")
        try:
            st = os.fstat(fd)
        except OSError as exc:
            raise ProtocolError(f"RAM region {i}: fd {fd} is unusable: {exc}") from exc
        items.append((gpa, size, offset, fd, (st.st_dev, st.st_ino)))
    items.sort(key=lambda item: item[0])
    for prev, cur in zip(items, items[1:]):
        if prev[0] + prev[1] > cur[0]:
            raise ProtocolError(f"RAM regions overlap: [{prev[0]:#x}, {prev[0] + prev[1]:#x}) "
                                f"and [{cur[0]:#x}, {cur[0] + cur[1]:#x})")
    return items
