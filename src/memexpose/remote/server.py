"""The device side: serve one PCI device over one socket to QEMU's ``x-pci-proxy-dev``.

``RemoteDeviceServer(platform, sock).serve()`` answers the VM side until it
closes the socket (docs/remote.md R1-R8):

* ``PCI_CFGREAD``/``PCI_CFGWRITE`` go to the device's own config space, with
  its masks, so BAR sizing, the command register and capabilities answer as
  the device would on a local bus (the proxy answers no config read itself);
* ``BAR_READ``/``BAR_WRITE`` carry absolute bus addresses; they are decoded in
  ``platform.mem_as``/``io_as``, where the device's BARs sit at the bases the
  forwarded config writes programmed. The access takes the byte path, as
  QEMU's own remote does (``address_space_rw``);
* ``SYNC_SYSMEM`` replaces the device's view of guest RAM
  (``RemotePlatform.set_ram_map``; superseded fds are closed);
* ``SET_IRQFD`` gives two eventfds: every rising edge of the device's INTx
  writes ``intr``; a signal on ``resample`` (the guest's EOI, seen by KVM)
  writes ``intr`` again while the line is still high: level semantics;
* ``DEVICE_RESET`` resets the device.

The serving thread blocks in ``recvmsg`` on the socket (one system call per
read: the access path stays short) and handles each message with the
machine lock held, after bringing ``platform.clock`` to wall time. A ticker
thread, started and joined by ``serve``, fires device timers on time and
answers the resample eventfd; the serving thread wakes it when a message
arms an earlier timer.

Bad input (short header, payload over 192 bytes, too many fds, an unknown
command, a payload or fd count that does not fit the command) is logged
with what arrived; the connection is then closed and ``serve`` raises
``ProtocolError``. A clean end of stream makes ``serve`` return.
"""

from __future__ import annotations

import logging
import os
import select
import socket
import struct
import threading
import time

from memexpose.errors import LinkBusyError, ProtocolError
from memexpose.memory import (
    AddressSpace,
    Endianness,
    FlatRange,
    FlatView,
    MemoryRegionOps,
)
from memexpose.remote.platform import RemotePlatform
from memexpose.remote.wire import (
    BAR_ACCESS,
    HEADER,
    HEADER_SIZE,
    PCI_CONF,
    RET_ERROR,
    MessageReader,
    MPQemuCmd,
    MPQemuMessage,
    close_fds,
    unpack_sync_sysmem,
)

__all__ = ["RemoteDeviceServer"]

log = logging.getLogger(__name__)

_RET = struct.Struct("<iIQQ")  # header + u64: one RET message
_RET_EMPTY = HEADER.pack(MPQemuCmd.RET, 0, 0)
_CLOCK_SLACK_NS = 50_000  # the device clock may lag wall time by this much
_IDLE_MS = 50  # the ticker wakes at least this often (timers armed by other threads)
_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))
_BAR_READ = int(MPQemuCmd.BAR_READ)
_BAR_WRITE = int(MPQemuCmd.BAR_WRITE)
_BAR_SIZE = BAR_ACCESS.size
_RET_CMD = int(MPQemuCmd.RET)
_RET_ZERO = _RET.pack(_RET_CMD, 0, 8, 0)


class _BarRoute:
    """Where BAR accesses in one flat range go, and when they may skip the address space.

    ``fast_read[size]``/``fast_write[size]`` say that ``AddressSpace.read``/
    ``write`` would make exactly one plain ``ops.read``/``write`` call of that
    size for an aligned access (docs/memory.md M6-M9: no ``accepts`` filter,
    no attrs variant, the size valid and implemented as is, the target's
    byte order); then the server makes that call itself, re-entrancy guard
    included. Anything else takes the address space's byte path.
    ``tests/remote/test_server.py`` checks the two paths agree. A route is
    valid for the flat view it was computed from (views are immutable).
    """

    __slots__ = ("as_", "delta", "end", "fast_read", "fast_write", "guard", "memory", "ops",
                 "start", "view")

    def __init__(self, as_: AddressSpace, view: FlatView, fr: FlatRange, memory: bool,
                 big_endian: bool) -> None:
        self.as_ = as_
        self.view = view
        self.start = fr.start
        self.end = fr.end
        self.memory = memory
        self.delta = fr.offset_in_region - fr.start
        mr = fr.mr
        self.ops = mr.ops
        plain_mmio = mr.terminates and not (mr.ram or mr.rom_device or mr.is_iommu)
        self.fast_read = _fast_sizes(mr.ops, False, big_endian) if plain_mmio else _NO_FAST
        self.fast_write = _fast_sizes(mr.ops, True, big_endian) if plain_mmio else _NO_FAST
        owner = mr.owner
        self.guard = owner if owner is not None and owner.is_device and \
            not mr.disable_reentrancy_guard and not mr.readonly else None


_NO_FAST = (False,) * 9


def _fast_sizes(ops: MemoryRegionOps, is_write: bool, big_endian: bool) -> tuple[bool, ...]:
    """Per size 0..8: would ``AddressSpace`` make exactly one plain callback call?"""
    cls = type(ops)
    if cls.accepts is not MemoryRegionOps.accepts:
        return _NO_FAST
    if (cls.write_with_attrs if is_write else cls.read_with_attrs) is not \
            (MemoryRegionOps.write_with_attrs if is_write else MemoryRegionOps.read_with_attrs):
        return _NO_FAST
    valid, impl = ops.valid, ops.impl
    dev_big = big_endian if ops.endianness is Endianness.NATIVE else \
        ops.endianness is Endianness.BIG
    out = []
    for size in range(9):
        ok = size in (1, 2, 4, 8)
        if ok and valid.max_access_size:
            ok = valid.min_access_size <= size <= valid.max_access_size
        if ok:
            ok = (impl.min_access_size or 1) <= size <= (impl.max_access_size or 4)
        out.append(ok and (size == 1 or dev_big == big_endian))
    return tuple(out)


class RemoteDeviceServer:
    """Serve ``platform.device`` over ``sock`` in QEMU 7.2's multi-process format.

    Args:
        platform: a ``RemotePlatform`` with its device plugged.
        sock: a connected ``AF_UNIX`` stream socket (the server owns it).
        name: a label for log messages (default: the device type).
        trace: log every message at DEBUG level (off: nothing is logged on
            the access path).

    Invariants:
        * ``_intr``/``_resample`` are the eventfds of the last ``SET_IRQFD``
          (or None); earlier ones are closed;
        * after ``close()``, the socket and both eventfds are closed.
    """

    def __init__(self, platform: RemotePlatform, sock: socket.socket, *,
                 name: str | None = None, trace: bool = False) -> None:
        if platform.device is None:
            raise ProtocolError("RemoteDeviceServer: plug a device into the platform first")
        self.platform = platform
        self.device = platform.device
        self.sock = sock
        self.name = name or self.device.type_name
        self.trace = trace
        # BAR accesses are counted in bar_reads/bar_writes (the fast path).
        self.counts = dict.fromkeys((c.name for c in MPQemuCmd), 0)
        self.bar_reads = 0
        self.bar_writes = 0
        self.bar_misses = 0
        """BAR accesses outside every mapped BAR (answered with ``RET_ERROR``)."""
        self.config_errors = 0
        """Config accesses outside the config space (answered with ``RET_ERROR``)."""
        self._intr: int | None = None
        self._resample: int | None = None
        self._wake: int | None = None
        self._stop = False
        self._ticker_deadline = 0
        self._busy = False
        self._closed = False
        self._buf = bytearray(8)
        self._route: _BarRoute | None = None
        self._t0 = time.monotonic_ns() - platform.clock.now_ns
        platform.intx.add_listener(self._intx_changed)

    # -- the loop ------------------------------------------------------------------

    def serve(self) -> None:
        """Answer the VM side until it closes the socket.

        Starts a ticker thread (device timers on wall time, the resample
        eventfd) and joins it before returning. Returns at a clean end of
        stream (the VM side closed, or QEMU exited); the socket stays open
        until ``close``.

        Raises:
            ProtocolError: a malformed message (logged with what arrived; the
                socket is closed first).
            LinkBusyError: ``serve`` is already running in another thread.
        """
        if self._busy:
            raise LinkBusyError(f"remote {self.name}: serve() is already running; one "
                                "thread serves one socket")
        self._busy = True
        self._stop = False
        self._wake = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        ticker = threading.Thread(target=self._tick_loop, name=f"remote-{self.name}-ticker",
                                  daemon=True)
        ticker.start()
        try:
            self._loop()
        except ProtocolError as exc:
            log.error("remote %s: bad message from the VM side: %s; closing the connection",
                      self.name, exc)
            self._stop_ticker(ticker)
            self.close()
            raise
        except (ConnectionResetError, BrokenPipeError) as exc:
            log.info("remote %s: the VM side went away (%s)", self.name, exc.strerror)
        except Exception:
            log.exception("remote %s: serving failed (a device or server bug); closing the "
                          "connection", self.name)
            self._stop_ticker(ticker)
            self.close()
            raise
        finally:
            self._stop_ticker(ticker)
            self._busy = False

    def _loop(self) -> None:
        """Read and answer messages until the end of the stream (the serving thread)."""
        self.sock.settimeout(None)
        read = MessageReader(self.sock).read
        lock = self.platform.system.lock
        clock = self.platform.clock
        handle_bar = self._handle_bar
        advance = self._advance_clock
        while True:
            got = read()
            if got is None:
                log.info("remote %s: the VM side closed the connection", self.name)
                return
            cmd, data, fds = got
            if self.trace:
                log.debug("remote %s: <- %s %s%s", self.name, MPQemuCmd(cmd).name,
                          data[HEADER_SIZE:].hex(), f" fds={list(fds)}" if fds else "")
            with lock:
                advance()
                if cmd in (_BAR_READ, _BAR_WRITE):
                    handle_bar(cmd, data)
                else:
                    self._handle_other(MPQemuMessage(cmd, data[HEADER_SIZE:], fds))
                deadline = clock.deadline_ns()
            if deadline is not None and deadline < self._ticker_deadline:
                os.eventfd_write(self._wake, 1)  # an earlier timer: tell the ticker

    def _tick_loop(self) -> None:
        """The ticker thread: fire device timers on time, answer resample signals."""
        lock = self.platform.system.lock
        clock = self.platform.clock
        wake = self._wake
        assert wake is not None
        while not self._stop:
            with lock:
                try:
                    self._advance_clock()
                except Exception:  # a device timer failed: say so, keep the clock going
                    log.exception("remote %s: a device timer failed", self.name)
                deadline = clock.deadline_ns()
                resample = self._resample
            now = time.monotonic_ns() - self._t0
            idle_until = now + _IDLE_MS * 1_000_000
            self._ticker_deadline = min(deadline, idle_until) if deadline is not None \
                else idle_until
            poller = select.poll()
            poller.register(wake, select.POLLIN)
            if resample is not None:
                poller.register(resample, select.POLLIN)
            timeout_ms = max(0, -(-(self._ticker_deadline - now) // 1_000_000))
            for fd, events in poller.poll(timeout_ms):
                if fd == wake:
                    try:
                        os.eventfd_read(wake)
                    except BlockingIOError:
                        pass
                elif not events & select.POLLNVAL:
                    self._resampled(fd)

    def _stop_ticker(self, ticker: threading.Thread) -> None:
        if self._wake is None:
            return
        self._stop = True
        os.eventfd_write(self._wake, 1)
        ticker.join()
        os.close(self._wake)
        self._wake = None

    # -- BAR accesses (R3) ---------------------------------------------------------------

    def _handle_bar(self, cmd: int, data: bytes) -> None:
        addr, val, size, memory = BAR_ACCESS.unpack_from(data, HEADER_SIZE)
        if cmd == _BAR_READ:
            self.bar_reads += 1
        else:
            self.bar_writes += 1
        route = self._route
        if route is None or route.view is not (self.platform.mem_as if memory else
                                               self.platform.io_as).flatview \
                or not route.start <= addr or addr + size > route.end \
                or route.memory != memory or size not in (1, 2, 4, 8):
            route = self._route = self._find_route(addr, size, memory)
            if route is None:
                self.bar_misses += 1
                if self.trace:
                    log.debug("remote %s: %s of %d bytes at %#x hits no BAR", self.name,
                              "read" if cmd == _BAR_READ else "write", size, addr)
                self._reply(RET_ERROR)
                return
        offset = addr + route.delta
        guard = route.guard
        if cmd == _BAR_READ:
            if route.fast_read[size] and not offset & (size - 1) and \
                    (guard is None or not guard.engaged_in_io):
                if guard is None:
                    value = route.ops.read(offset, size) & _MASKS[size]
                else:
                    guard.engaged_in_io = True
                    try:
                        value = route.ops.read(offset, size) & _MASKS[size]
                    finally:
                        guard.engaged_in_io = False
            else:
                value = self._slow_read(route.as_, addr, size)
            self.sock.sendall(_RET.pack(_RET_CMD, 0, 8, value))
        else:
            value = 0
            if route.fast_write[size] and not offset & (size - 1) and \
                    (guard is None or not guard.engaged_in_io):
                if guard is None:
                    route.ops.write(offset, val & _MASKS[size], size)
                else:
                    guard.engaged_in_io = True
                    try:
                        route.ops.write(offset, val & _MASKS[size], size)
                    finally:
                        guard.engaged_in_io = False
            else:
                route.as_.write_bytes(addr, (val & _MASKS[size]).to_bytes(size, "little"))
            self.sock.sendall(_RET_ZERO)
        if self.trace:
            log.debug("remote %s: -> RET %#x", self.name, value)

    def _slow_read(self, as_: AddressSpace, addr: int, size: int) -> int:
        """The byte path (QEMU's ``address_space_rw``): the device's answer, even when it
        refused the size (then 0, as a local device gives the guest; QEMU's own
        remote would fail here)."""
        view = memoryview(self._buf)[:size]
        as_.read_into(addr, view)
        value = int.from_bytes(view, "little")
        view.release()
        return value

    def _find_route(self, addr: int, size: int, memory: bool) -> _BarRoute | None:
        if size not in (1, 2, 4, 8):
            return None
        as_ = self.platform.mem_as if memory else self.platform.io_as
        view = as_.flatview
        fr = view.find_flat_range(addr, size)
        if fr is None:
            return None
        return _BarRoute(as_, view, fr, memory, as_.system.big_endian)

    # -- everything else ---------------------------------------------------------------------

    def _handle_other(self, msg: MPQemuMessage) -> None:
        cmd = msg.cmd
        self.counts[MPQemuCmd(cmd).name] += 1
        dev = self.device
        if cmd in (MPQemuCmd.PCI_CFGREAD, MPQemuCmd.PCI_CFGWRITE):
            addr, val, length = PCI_CONF.unpack(msg.payload)
            # R2: any length 1..4 inside the config space, aligned or not (a
            # guest's unaligned 0xcfd access arrives as is).
            if not 1 <= length <= 4 or addr + length > dev.config.size:
                self.config_errors += 1
                log.warning("remote %s: config %s of %d bytes at %#x is outside the %d-byte "
                            "config space; answering RET_ERROR", self.name,
                            "read" if cmd == MPQemuCmd.PCI_CFGREAD else "write", length, addr,
                            dev.config.size)
                self._reply(RET_ERROR)
            elif cmd == MPQemuCmd.PCI_CFGREAD:
                self._reply(dev.do_config_read(addr, length) & _MASKS[length])
            else:
                dev.do_config_write(addr, val & _MASKS[length], length)
                self._reply(0)
        elif cmd == MPQemuCmd.SYNC_SYSMEM:
            entries = unpack_sync_sysmem(msg.payload, len(msg.fds))
            changed = self.platform.set_ram_map(entries, msg.fds)
            if self.trace:
                log.debug("remote %s: RAM map %s%s", self.name,
                          [f"{g:#x}+{s:#x}@{o:#x}" for g, s, o in entries],
                          "" if changed else " (unchanged)")
        elif cmd == MPQemuCmd.SET_IRQFD:
            self._set_irqfds(msg.fds[0], msg.fds[1])
        elif cmd == MPQemuCmd.DEVICE_RESET:
            dev.reset()
            self.sock.sendall(_RET_EMPTY)
        else:  # pragma: no cover - recv_message refuses everything else
            raise ProtocolError(f"unexpected {msg!r}")

    def _reply(self, value: int) -> None:
        self.sock.sendall(_RET.pack(_RET_CMD, 0, 8, value))
        if self.trace:
            log.debug("remote %s: -> RET %#x", self.name, value)

    # -- interrupts (R5) -------------------------------------------------------------------

    def _set_irqfds(self, intr: int, resample: int) -> None:
        old = [fd for fd in (self._intr, self._resample) if fd is not None]
        close_fds(old)
        self._intr, self._resample = intr, resample
        if self._wake is not None:
            os.eventfd_write(self._wake, 1)  # the ticker watches the new resample fd
        if self.platform.intx.level:
            self._signal()

    def _intx_changed(self, level: bool) -> None:
        """INTx listener: a rising edge asserts the VM's line (machine lock held)."""
        if level:
            self._signal()

    def _signal(self) -> None:
        if self._intr is not None:
            try:
                os.eventfd_write(self._intr, 1)
            except OSError as exc:  # a full counter, or a closed fd
                log.warning("remote %s: cannot signal the INTx eventfd: %s", self.name, exc)

    def _resampled(self, fd: int) -> None:
        """The VM side deasserted our line (the guest's EOI): assert again if still high."""
        try:
            os.eventfd_read(fd)
        except (BlockingIOError, OSError):
            return
        with self.platform.system.lock:
            if self.platform.intx.level and fd == self._resample:
                self._signal()

    # -- time ----------------------------------------------------------------------------------

    def _advance_clock(self) -> None:
        """Bring the device clock to wall time (within 50 µs), firing due timers.

        Machine lock held.
        """
        clock = self.platform.clock
        delta = time.monotonic_ns() - self._t0 - clock.now_ns
        if delta > _CLOCK_SLACK_NS:
            clock.step(delta)

    # -- teardown ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket and the interrupt eventfds. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            self.platform.intx.remove_listener(self._intx_changed)
        except Exception:  # noqa: BLE001 - already removed
            pass
        close_fds([fd for fd in (self._intr, self._resample) if fd is not None])
        self._intr = self._resample = None
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a serving thread blocked in recvmsg
        except OSError:
            pass
        self.sock.close()

    def _check_invariants(self) -> None:
        """Assert the class invariants (tests call this)."""
        assert (self._intr is None) == (self._resample is None)
        if self._closed:
            assert self.sock.fileno() == -1 and self._intr is None
        self.platform._check_invariants()

    def statistics(self) -> dict[str, object]:
        """Return message counts by command, ``bar_misses``, ``config_errors``, ``ram_syncs``."""
        counts = dict(self.counts, BAR_READ=self.bar_reads, BAR_WRITE=self.bar_writes)
        return {"messages": counts, "bar_misses": self.bar_misses,
                "config_errors": self.config_errors, "ram_syncs": self.platform.ram_syncs,
                "ram_map": self.platform.ram_map()}

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("serving" if self._busy else "idle")
        return f"<RemoteDeviceServer {self.name} {state}>"
