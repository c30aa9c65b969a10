"""The VM side: ``remote-pci``, a proxy PCI function for memexpose's own machines.

``RemotePCIDevice(sock)`` plays in our machines the part QEMU's
``x-pci-proxy-dev`` plays in QEMU, in the same wire format, so one device
server (``RemoteDeviceServer``, or QEMU's own ``x-remote``) plugs into both
(docs/remote.md V1-V7):

* **Identity and BARs** are probed through the remote when the proxy is
  created: vendor, device, revision, class, subsystem, then every BAR sized
  the classic way (save, all-ones, read back, restore). Unlike QEMU's
  proxy, 64-bit BARs are understood (both halves sized) and I/O BARs are
  masked with their own mask. The ROM BAR is not proxied.
* **Config reads** are answered by the remote; **config writes** are applied
  to the local copy first (so BARs map and unmap here) and then forwarded.
* **BAR accesses** of 1..8 bytes are forwarded whole, with the absolute bus
  address where the BAR is mapped.
* **Guest RAM**: a memory listener on the DMA root sends ``SYNC_SYSMEM``
  (shareable RAM only, adjacent pieces of one backing merged, at most 8)
  whenever the map changes, so the remote's DMA lands in our RAM, zero copy.
* **INTx**: the proxy makes the two eventfds of ``SET_IRQFD``. A signal on
  ``intr`` (seen by a watcher thread, or right after a forwarded access)
  means "asserted"; because our machines have no EOI to deassert on, the
  proxy reads the remote's ``PCI_STATUS`` interrupt bit after an access
  while the line is high (or a signal is pending) and follows it, signalling
  ``resample`` when it lowers the line.
* **A dead remote** (end of stream, broken pipe, a reply timeout, a
  malformed reply) is reported once, loudly, with what was being done;
  ``state`` becomes ``DISCONNECTED``, reads return all-ones and writes are
  dropped (what QEMU's proxy does). ``reconnect(sock)`` attaches a
  restarted server and replays the BAR and command registers.

Concurrency: every socket exchange happens with the machine lock held (MMIO
dispatch, config cycles, memory commits, the watcher thread all take it);
two users at once raise ``LinkBusyError``.
"""

from __future__ import annotations

import enum
import logging
import os
import select
import socket
import threading

from memexpose.errors import (
    ConfigError,
    HwModelError,
    LinkBusyError,
    LinkClosedError,
    LinkError,
    ProtocolError,
)
from memexpose.hw import PCIDevice, pci_regs
from memexpose.memory import (
    AccessConstraints,
    AddressSpace,
    Endianness,
    MemoryListener,
    MemoryRegion,
    MemoryRegionOps,
    MemoryRegionSection,
)
from memexpose.remote.wire import (
    RET_ERROR,
    RET_U64,
    MPQemuCmd,
    pack_bar_access,
    pack_pci_conf,
    pack_sync_sysmem,
    recv_message,
    send_message,
)

__all__ = ["RemotePCIDevice", "RemoteState"]

log = logging.getLogger(__name__)

_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))
_EFD_FLAGS = os.EFD_NONBLOCK | os.EFD_CLOEXEC


class RemoteState(enum.Enum):
    """Where a ``RemotePCIDevice`` stands with its device process."""

    CONNECTED = "connected"
    """Requests go to the remote."""
    DISCONNECTED = "disconnected"
    """The remote is gone: reads give all-ones, writes are dropped; ``reconnect`` helps."""
    CLOSED = "closed"
    """``close()`` ran; the proxy is done."""


class _ProxyBarOps(MemoryRegionOps):
    endianness = Endianness.LITTLE
    valid = AccessConstraints(1, 8)
    impl = AccessConstraints(1, 8)

    def __init__(self, proxy: RemotePCIDevice, index: int) -> None:
        self.proxy = proxy
        self.index = index

    def read(self, offset: int, size: int) -> int:
        return self.proxy._bar_access(self.index, offset, size, 0, False)

    def write(self, offset: int, value: int, size: int) -> None:
        self.proxy._bar_access(self.index, offset, size, value, True)


class _SysmemListener(MemoryListener):
    """Collects the shareable RAM of the DMA root; sends it at each commit (V4)."""

    priority = 100

    def __init__(self, proxy: RemotePCIDevice) -> None:
        self.proxy = proxy
        self.sections: dict[int, MemoryRegionSection] = {}

    def region_add(self, section: MemoryRegionSection) -> None:
        mr = section.mr
        if mr.ram and not mr.readonly and not section.readonly and mr.hostmem is not None:
            self.sections[section.offset_within_address_space] = section

    def region_del(self, section: MemoryRegionSection) -> None:
        self.sections.pop(section.offset_within_address_space, None)

    def commit(self) -> None:
        self.proxy._sync_sysmem()


class RemotePCIDevice(PCIDevice):
    """A PCI function whose config space and BARs live in another process.

    Args:
        sock: a connected ``AF_UNIX`` stream socket to a device server
            (``memexpose serve-device``, or QEMU's ``x-remote``); the proxy owns it.
        id, path: as ``PCIDevice``.
        timeout: seconds to wait for any reply; a remote that does not
            answer in time is declared gone.

    Raises:
        LinkError: the remote does not answer the probe (the socket is closed).
        ConfigError: the remote describes BARs a PCI function cannot have.

    Invariants:
        * ``state`` is CONNECTED iff the socket is usable; once DISCONNECTED,
          nothing is sent until ``reconnect``;
        * ``_last_sysmem`` is the RAM map the remote last received (None
          forces the next commit to send it);
        * the watcher thread runs iff the device is realized and not closed.
    """

    def __init__(self, sock: socket.socket, *, id: str | None = None,
                 path: str | None = None, timeout: float = 5.0) -> None:
        if timeout <= 0:
            raise ConfigError(f"remote-pci: timeout must be positive, not {timeout!r}")
        self._sock = sock
        self.timeout = timeout
        self._state = RemoteState.CONNECTED
        self.last_error: str | None = None
        """Why the remote was declared gone (None while connected)."""
        self._busy = False
        self._intr: int | None = None
        self._resample: int | None = None
        self._wake: tuple[int, int] | None = None
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        self._intr_poll = select.poll()
        self._listener: _SysmemListener | None = None
        self._sysmem_as: AddressSpace | None = None
        self._last_sysmem: list[tuple[int, int, int, int]] | None = None
        self._sysmem_warned: set[str] = set()
        self.requests = 0
        """Requests answered by the remote (statistics)."""
        self.failed_requests = 0
        """Requests that found the remote gone (statistics)."""
        sock.settimeout(timeout)
        try:
            ident, bars = self._probe()
        except BaseException:
            sock.close()
            self._state = RemoteState.CLOSED
            raise
        self._bar_layout = bars
        super().__init__("remote-pci", vendor_id=ident["vendor"], device_id=ident["device"],
                         revision=ident["revision"], class_code=ident["class"],
                         prog_if=ident["prog_if"], subsystem_vendor_id=ident["subvendor"],
                         subsystem_id=ident["subsystem"], interrupt_pin=1, id=id, path=path)
        # As QEMU's proxy (its local copy only; guest reads come from the remote).
        self.config.config[pci_regs.PCI_LATENCY_TIMER] = 0xFF
        try:
            for index, (size, io, mem64, prefetch) in bars.items():
                region = MemoryRegion.init_io(f"remote-pci-bar{index}", size,
                                              _ProxyBarOps(self, index), owner=self.owner)
                self.register_bar(index, region, io=io, mem64=mem64, prefetchable=prefetch)
        except HwModelError as exc:
            sock.close()
            self._state = RemoteState.CLOSED
            raise ConfigError(f"remote-pci: the remote's BARs cannot be proxied: {exc}") from exc

    # -- state -------------------------------------------------------------------------

    @property
    def state(self) -> RemoteState:
        """CONNECTED, DISCONNECTED (the remote is gone) or CLOSED."""
        return self._state

    @property
    def connected(self) -> bool:
        """Whether requests reach the remote."""
        return self._state is RemoteState.CONNECTED

    # -- the exchange ------------------------------------------------------------------

    def _request(self, cmd: int, payload: bytes, what: str) -> int:
        """Send one request and return the RET value; ``RET_ERROR`` if the remote is gone.

        Machine lock held (or, before the device is on a bus, the creating thread).

        Raises:
            LinkBusyError: another thread is in an exchange on this socket.
        """
        if self._state is not RemoteState.CONNECTED:
            self.failed_requests += 1
            return RET_ERROR
        if self._busy:
            raise LinkBusyError(f"remote-pci {self.address}: two threads used the device "
                                "socket at once; take the machine lock around accesses")
        self._busy = True
        try:
            send_message(self._sock, cmd, payload)
            reply = recv_message(self._sock, from_proxy=False)
            if reply is None:
                raise LinkClosedError("the device process closed the connection")
        except (OSError, LinkError, ProtocolError) as exc:
            self._gone(exc, what)
            return RET_ERROR
        finally:
            self._busy = False
        self.requests += 1
        return RET_U64.unpack(reply.payload)[0] if reply.payload else 0

    def _send(self, cmd: int, payload: bytes, fds: list[int], what: str) -> None:
        """Send a message that has no reply (SYNC_SYSMEM, SET_IRQFD)."""
        if self._state is not RemoteState.CONNECTED:
            return
        if self._busy:
            raise LinkBusyError(f"remote-pci {self.address}: two threads used the device "
                                "socket at once; take the machine lock around accesses")
        self._busy = True
        try:
            send_message(self._sock, cmd, payload, fds)
        except (OSError, LinkError) as exc:
            self._gone(exc, what)
        finally:
            self._busy = False

    def _gone(self, exc: BaseException, what: str) -> None:
        """Declare the remote gone (once, loudly); V5."""
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, TimeoutError):
            reason = f"no reply within {self.timeout} s"
        self.last_error = f"{reason} (during {what})"
        self._state = RemoteState.DISCONNECTED
        self.failed_requests += 1
        name = getattr(self, "type_name", "remote-pci")
        where = self.address if hasattr(self, "bus") else "(probing)"
        log.error("%s %s: the device process is gone: %s. Config and BAR reads now return "
                  "all-ones and writes are dropped; restart the device server (memexpose "
                  "serve-device) and call reconnect() with a new socket", name, where,
                  self.last_error)
        try:
            self._sock.close()
        except OSError:
            pass

    # -- probing (V1) ------------------------------------------------------------------

    def _cfg_read(self, offset: int, size: int) -> int:
        value = self._request(MPQemuCmd.PCI_CFGREAD, pack_pci_conf(offset, 0, size),
                              f"config read of {size} bytes at {offset:#x}")
        if self._state is not RemoteState.CONNECTED:
            raise LinkClosedError(f"remote-pci: probing failed: {self.last_error}")
        return value & _MASKS[size]

    def _cfg_write(self, offset: int, value: int, size: int) -> None:
        self._request(MPQemuCmd.PCI_CFGWRITE, pack_pci_conf(offset, value, size),
                      f"config write of {size} bytes at {offset:#x}")
        if self._state is not RemoteState.CONNECTED:
            raise LinkClosedError(f"remote-pci: probing failed: {self.last_error}")

    def _size_bar(self, reg: int) -> int:
        orig = self._cfg_read(reg, 4)
        self._cfg_write(reg, 0xFFFFFFFF, 4)
        readback = self._cfg_read(reg, 4)
        self._cfg_write(reg, orig, 4)
        return readback

    def _probe(self) -> tuple[dict[str, int], dict[int, tuple[int, bool, bool, bool]]]:
        ident = {
            "vendor": self._cfg_read(pci_regs.PCI_VENDOR_ID, 2),
            "device": self._cfg_read(pci_regs.PCI_DEVICE_ID, 2),
        }
        if ident["vendor"] in (0, 0xFFFF):
            raise ConfigError(f"remote-pci: the remote reports vendor id "
                              f"{ident['vendor']:#06x}: no device there")
        class_rev = self._cfg_read(pci_regs.PCI_REVISION_ID, 4)
        ident["revision"] = class_rev & 0xFF
        ident["prog_if"] = class_rev >> 8 & 0xFF
        ident["class"] = class_rev >> 16
        sub = self._cfg_read(pci_regs.PCI_SUBSYSTEM_VENDOR_ID, 4)
        ident["subvendor"] = sub & 0xFFFF
        ident["subsystem"] = sub >> 16
        bars: dict[int, tuple[int, bool, bool, bool]] = {}
        index = 0
        while index < 6:
            reg = pci_regs.PCI_BASE_ADDRESS_0 + 4 * index
            readback = self._size_bar(reg)
            if readback == 0:
                index += 1
                continue
            if readback & pci_regs.PCI_BASE_ADDRESS_SPACE_IO:
                masked = readback & 0xFFFFFFFC
                bars[index] = (masked & -masked, True, False, False)
                index += 1
                continue
            masked = readback & 0xFFFFFFF0
            mem64 = readback & pci_regs.PCI_BASE_ADDRESS_MEM_TYPE_64 != 0 and index < 5
            if mem64:
                masked |= self._size_bar(reg + 4) << 32
            prefetch = bool(readback & pci_regs.PCI_BASE_ADDRESS_MEM_PREFETCH)
            bars[index] = (masked & -masked, False, mem64, prefetch)
            index += 2 if mem64 else 1
        return ident, bars

    # -- config space (V2) -------------------------------------------------------------

    def do_config_read(self, offset: int, size: int) -> int:
        """Ask the remote (QEMU's proxy answers no config read itself)."""
        value = self._request(MPQemuCmd.PCI_CFGREAD, pack_pci_conf(offset, 0, size),
                              f"config read of {size} bytes at {offset:#x}")
        return value & _MASKS[size]

    def do_config_write(self, offset: int, value: int, size: int) -> None:
        """Apply the write to the local copy (BARs move here), then forward it."""
        super().do_config_write(offset, value, size)
        self._request(MPQemuCmd.PCI_CFGWRITE, pack_pci_conf(offset, value, size),
                      f"config write of {size} bytes at {offset:#x}")
        self._sync_intx()

    def device_reset(self) -> None:
        """Forward the reset (``DEVICE_RESET``); the local copy was reset already."""
        self._request(MPQemuCmd.DEVICE_RESET, b"", "device reset")
        self._sync_intx()

    # -- BARs (V3) ---------------------------------------------------------------------

    def _bar_access(self, index: int, offset: int, size: int, value: int, write: bool) -> int:
        bar = self.bars[index]
        assert bar is not None
        addr = bar.addr + offset
        if write:
            self._request(MPQemuCmd.BAR_WRITE, pack_bar_access(addr, value, size, not bar.is_io),
                          f"BAR{index} write of {size} bytes at {addr:#x}")
            result = 0
        else:
            result = self._request(MPQemuCmd.BAR_READ,
                                   pack_bar_access(addr, 0, size, not bar.is_io),
                                   f"BAR{index} read of {size} bytes at {addr:#x}")
        if self._intr is not None:
            self._sync_intx()
        return result & _MASKS[size]

    # -- guest RAM (V4) ----------------------------------------------------------------

    def _sync_sysmem(self) -> None:
        """Send the shareable RAM map when it changed. Machine lock held (a commit)."""
        listener = self._listener
        if listener is None:
            return
        entries: list[tuple[int, int, int, int]] = []  # gpa, size, fd offset, fd
        last_hostmem = None
        for gpa in sorted(listener.sections):
            section = listener.sections[gpa]
            mr = section.mr
            hostmem = mr.hostmem
            assert hostmem is not None
            if hostmem.fd is None:
                if mr.name not in self._sysmem_warned:
                    self._sysmem_warned.add(mr.name)
                    log.warning("remote-pci %s: RAM %r at %#x is not shareable (no fd); the "
                                "remote device cannot DMA there. Back it with a memfd",
                                self.address, mr.name, gpa)
                continue
            fd_offset = hostmem.fd_offset + mr.hostmem_offset + section.offset_within_region
            if entries and hostmem is last_hostmem:
                pgpa, psize, poff, pfd = entries[-1]
                if pgpa + psize == gpa and poff + psize == fd_offset:
                    entries[-1] = (pgpa, psize + section.size, poff, pfd)
                    continue
            entries.append((gpa, section.size, fd_offset, hostmem.fd))
            last_hostmem = hostmem
        if entries == self._last_sysmem:
            return
        if len(entries) > 8:
            log.error("remote-pci %s: %d RAM regions, more than the 8 SYNC_SYSMEM carries; "
                      "the remote keeps its old RAM map", self.address, len(entries))
            return
        if not entries:
            self._last_sysmem = entries
            return  # SYNC_SYSMEM needs at least one fd
        self._send(MPQemuCmd.SYNC_SYSMEM, pack_sync_sysmem([e[:3] for e in entries]),
                   [e[3] for e in entries], "SYNC_SYSMEM")
        if self._state is RemoteState.CONNECTED:
            self._last_sysmem = entries

    # -- INTx (V6) ---------------------------------------------------------------------

    def _sync_intx(self) -> None:
        """Follow the remote's INTx after an access, or on a signal. Machine lock held.

        A signal on ``intr`` (written by the remote before its reply, or later
        by a timer) or a line we hold high makes the proxy read the remote's
        ``PCI_STATUS`` interrupt bit and drive the line to it; lowering it
        signals ``resample``, as KVM does at the guest's EOI.
        """
        intr = self._intr
        if intr is None or self._state is not RemoteState.CONNECTED:
            return
        signalled = bool(self._intr_poll.poll(0))
        if signalled:
            try:
                os.eventfd_read(intr)
            except BlockingIOError:  # the other thread took it first
                pass
        elif not self.irq_level():
            return
        status = self._request(MPQemuCmd.PCI_CFGREAD,
                               pack_pci_conf(pci_regs.PCI_STATUS, 0, 2), "INTx status read")
        if self._state is not RemoteState.CONNECTED:
            return
        level = bool(status & pci_regs.PCI_STATUS_INTERRUPT)
        was = self.irq_level()
        self.set_irq(level)
        if was and not level and self._resample is not None:
            os.eventfd_write(self._resample, 1)

    def _watch(self, intr: int, wake: int, stop: threading.Event) -> None:
        poller = select.poll()
        poller.register(intr, select.POLLIN)
        poller.register(wake, select.POLLIN)
        lock = self._lock
        while True:
            poller.poll()
            # Never block on the lock for good: unrealize holds it while it joins us.
            while not lock.acquire(timeout=0.05):
                if stop.is_set():
                    return
            try:
                if stop.is_set():
                    return
                if self._state is RemoteState.CONNECTED:
                    try:
                        self._sync_intx()
                    except LinkBusyError as exc:  # a caller without the lock: say so, go on
                        log.error("%s", exc)
                else:
                    try:
                        os.eventfd_read(intr)
                    except BlockingIOError:
                        pass
            finally:
                lock.release()

    # -- life cycle --------------------------------------------------------------------

    def realize(self) -> None:
        """On the bus: start the RAM listener, send the irqfds, start the watcher."""
        assert self.bus is not None
        self._sysmem_as = AddressSpace(self.bus.dma_root_for(self),
                                       f"{self.type_name} sysmem", system=self.bus.system)
        self._listener = _SysmemListener(self)
        self._sysmem_as.register_listener(self._listener)
        self._intr = os.eventfd(0, _EFD_FLAGS)
        self._resample = os.eventfd(0, _EFD_FLAGS)
        self._intr_poll = select.poll()
        self._intr_poll.register(self._intr, select.POLLIN)
        self._send(MPQemuCmd.SET_IRQFD, b"", [self._intr, self._resample], "SET_IRQFD")
        self._wake = os.pipe()
        self._stop = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, args=(self._intr, self._wake[0], self._stop),
            name=f"remote-pci-intx-{self.address}", daemon=True)
        self._watcher.start()

    def unrealize(self) -> None:
        """Leaving the bus: stop the watcher and the listener, close the eventfds."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None and self._wake is not None:
            self._stop.set()
            os.write(self._wake[1], b"x")
            if watcher is not threading.current_thread():
                watcher.join()
        for fd in (*(self._wake or ()), self._intr, self._resample):
            if fd is not None:
                os.close(fd)
        self._wake = None
        self._intr = self._resample = None
        if self._listener is not None and self._sysmem_as is not None:
            self._sysmem_as.unregister_listener(self._listener)
            self._sysmem_as.destroy()
        self._listener = None
        self._sysmem_as = None
        self._last_sysmem = None

    def close(self) -> None:
        """Leave the bus (if on one) and close the socket. Idempotent."""
        if self._state is RemoteState.CLOSED:
            return
        if self.bus is not None:
            with self.bus.system.transaction():
                self.bus.remove_device(self)
        self._state = RemoteState.CLOSED
        try:
            self._sock.close()
        except OSError:
            pass

    def reconnect(self, sock: socket.socket) -> None:
        """Attach a restarted device server and replay what the guest programmed.

        The new remote must be the same device (ids and BAR layout). It gets
        the irqfds, the RAM map, and the local copy of the BARs, the
        interrupt line and (last) the command register; any other device
        state starts from the device's reset state.

        Raises:
            LinkError: the new remote does not answer.
            ConfigError: it is a different device (the proxy stays disconnected).
        """
        with self._lock:
            if self._state is RemoteState.CLOSED:
                raise LinkClosedError(f"remote-pci {self.address} is closed; create a new "
                                      "RemotePCIDevice instead")
            try:
                self._sock.close()
            except OSError:
                pass
            sock.settimeout(self.timeout)
            self._sock = sock
            self._state = RemoteState.CONNECTED
            self.last_error = None
            ident, bars = self._probe()
            mine = (self.vendor_id, self.device_id, self.class_code)
            if (ident["vendor"], ident["device"], ident["class"]) != mine or \
                    bars != self._bar_layout:
                self._gone(ConfigError("a different device answered"), "reconnect")
                raise ConfigError(
                    f"remote-pci {self.address}: the new server is "
                    f"{ident['vendor']:04x}:{ident['device']:04x} with BARs {bars}, not "
                    f"{self.vendor_id:04x}:{self.device_id:04x} with {self._bar_layout}")
            if self._intr is not None and self._resample is not None:
                self._send(MPQemuCmd.SET_IRQFD, b"", [self._intr, self._resample], "SET_IRQFD")
            self._last_sysmem = None
            self._sync_sysmem()
            cfg = self.config
            for reg in [*range(pci_regs.PCI_BASE_ADDRESS_0, pci_regs.PCI_BASE_ADDRESS_0 + 24, 4),
                        pci_regs.PCI_INTERRUPT_LINE, pci_regs.PCI_COMMAND]:
                size = 1 if reg == pci_regs.PCI_INTERRUPT_LINE else \
                    2 if reg == pci_regs.PCI_COMMAND else 4
                self._request(MPQemuCmd.PCI_CFGWRITE, pack_pci_conf(reg, cfg.get(reg, size),
                                                                     size), "replay")
            if self._state is not RemoteState.CONNECTED:
                raise LinkClosedError(f"remote-pci {self.address}: reconnect failed: "
                                      f"{self.last_error}")
            self._sync_intx()
            log.info("remote-pci %s: reconnected to the device process", self.address)

    def _check_invariants(self) -> None:
        """Assert the class invariants (tests call this)."""
        super()._check_invariants()
        assert (self._sock.fileno() != -1) == (self._state is RemoteState.CONNECTED)
        realized = self.bus is not None
        assert (self._watcher is not None and self._watcher.is_alive()) == realized
        assert (self._intr is not None) == realized == (self._listener is not None)

    def statistics(self) -> dict[str, object]:
        """Return ``state``, ``last_error``, ``requests``, ``failed_requests``, ``ram_map``."""
        return {"state": self._state.value, "last_error": self.last_error,
                "requests": self.requests, "failed_requests": self.failed_requests,
                "ram_map": [(g, s, o) for g, s, o, _ in self._last_sysmem or []]}

    def __repr__(self) -> str:
        return (f"<RemotePCIDevice {self.vendor_id:04x}:{self.device_id:04x} at "
                f"{self.address} {self._state.value}>")
