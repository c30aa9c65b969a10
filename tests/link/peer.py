"""Peers for the link tests: a small machine (or a raw protocol speaker) per process.

``Machine`` builds a memory map from a spec dict and one ``MemexposeEndpoint``;
the test process builds its own ``Machine`` and starts the other in a
separate process (``run_peer``), driven by ``(command, args, kwargs)``
tuples over a multiprocessing pipe. ``run_raw_peer`` speaks the wire format
by hand, to send what a correct peer never would.

The map of a default machine::

    0x0000_0000  "ram"      64 KiB RAM (memfd: shareable), filled with 0x11
    0x0002_0000  "anon"      4 KiB RAM (anonymous: forwarded only)
    0x0010_0000  "counter"   4 KiB MMIO: reads count up, writes are recorded
    0x0011_0000  "slow"      4 KiB MMIO: reads sleep ``slow_seconds`` first
    0x0012_0000  "switch"    4 KiB MMIO: a write disables the link (like an ENABLE register)
    0x1_0000_0000 window     the import window (``window_size``)

exposed: ``[0, 2 MiB)`` unless the spec says otherwise; window 2 MiB.
"""

from __future__ import annotations

import gc
import mmap
import os
import select
import signal
import socket
import threading
import time
import traceback
from typing import Any

from memexpose.link import (
    Exposure,
    MemexposeEndpoint,
    TcpTransport,
    UnixTransport,
    codec,
    hotpath,
)
from memexpose.memory import (
    AccessConstraints,
    AddressSpace,
    HostMemory,
    MemoryRegion,
    MemoryRegionOps,
    MemorySystem,
    MemTxAttrs,
    MemTxResult,
)

WINDOW_BASE = 0x1_0000_0000
RAM = 0x0
ANON = 0x2_0000
COUNTER = 0x10_0000
SLOW = 0x11_0000
SWITCH = 0x12_0000


def default_spec(name: str, transport: tuple, **over: Any) -> dict[str, Any]:
    """Return a machine spec; ``over`` replaces keys."""
    spec: dict[str, Any] = {
        "name": name,
        "transport": transport,
        "role": None,
        "ram": [("ram", RAM, 0x10000, "memfd", 0x11), ("anon", ANON, 0x1000, "anon", 0x22)],
        "mmio": [("counter", COUNTER, 0x1000), ("slow", SLOW, 0x1000),
                 ("switch", SWITCH, 0x1000)],
        "slow_seconds": 30.0,
        "expose": (0, 0x20_0000),
        "readonly": False,
        "readonly_share": "seal",
        "window_size": 0x20_0000,
        "direct": True,
        "timeout": 2.0,
        "connect_timeout": 10.0,
    }
    spec.update(over)
    return spec


class CounterOps(MemoryRegionOps):
    """Reads return 1, 2, 3, ...; writes are recorded with their attributes."""

    valid = AccessConstraints(1, 8)
    impl = AccessConstraints(1, 8)

    def __init__(self) -> None:
        self.reads = 0
        self.writes: list[tuple[int, int, int, tuple]] = []
        self.last_attrs: MemTxAttrs | None = None

    def read_with_attrs(self, offset: int, size: int,
                        attrs: MemTxAttrs) -> tuple[int, MemTxResult]:
        self.reads += 1
        self.last_attrs = attrs
        return self.reads, MemTxResult.OK

    def write_with_attrs(self, offset: int, value: int, size: int,
                         attrs: MemTxAttrs) -> MemTxResult:
        self.last_attrs = attrs
        self.writes.append((offset, value, size, (attrs.secure, attrs.requester_id)))
        return MemTxResult.OK


class SwitchOps(MemoryRegionOps):
    """A write disables the machine's link, from inside the MMIO callback."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine

    def write(self, offset: int, value: int, size: int) -> None:
        self.machine.ep.disable()


class SlowOps(MemoryRegionOps):
    """Reads sleep for a while (a peer that is busy or about to die)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def read(self, offset: int, size: int) -> int:
        time.sleep(self.seconds)
        return 0x5105


def make_transport(desc: tuple):
    kind = desc[0]
    if kind == "unix":
        return UnixTransport(desc[1], listen=desc[2])
    return TcpTransport(desc[1], desc[2], listen=desc[3])


class Machine:
    """A memory map and one endpoint, built from a spec (see the module doc)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        name = spec["name"]
        self.system = MemorySystem(name)
        self.lock = self.system.lock
        self.root = MemoryRegion.init_container(f"{name}.system", 1 << 64)
        self.as_ = AddressSpace(self.root, name, system=self.system)
        self.regions: dict[str, MemoryRegion] = {}
        for rname, addr, size, kind, fill in spec["ram"]:
            self.add_ram(rname, addr, size, kind, fill)
        self.counter = CounterOps()
        for rname, addr, size in spec["mmio"]:
            ops = {"counter": self.counter, "switch": SwitchOps(self)}.get(rname) or \
                SlowOps(spec["slow_seconds"])
            mr = MemoryRegion.init_io(f"{name}.{rname}", size, ops)
            self.regions[rname] = mr
            self.root.add_subregion(addr, mr)
        self.irq_levels: list[bool] = []
        exposure = None
        if spec["expose"] is not None:
            start, size = spec["expose"]
            exposure = Exposure.range(self.as_, start, size, readonly=spec["readonly"])
        self.ep = MemexposeEndpoint(
            name, make_transport(spec["transport"]), exposure=exposure,
            window_size=spec["window_size"], readonly_share=spec["readonly_share"],
            direct=spec["direct"], role=spec["role"], timeout=spec["timeout"],
            connect_timeout=spec["connect_timeout"], on_irq_level=self.irq_levels.append,
            lock=self.lock)
        if self.ep.window is not None:
            self.root.add_subregion(WINDOW_BASE, self.ep.window)

    def add_ram(self, rname: str, addr: int | None, size: int, kind: str, fill: int) -> None:
        name = self.spec["name"]
        hm = (HostMemory.memfd(f"{name}.{rname}", size) if kind == "memfd"
              else HostMemory.anonymous(f"{name}.{rname}", size))
        hm.view[:] = bytes([fill]) * size
        mr = MemoryRegion.init_ram(f"{name}.{rname}", size, hostmem=hm)
        self.regions[rname] = mr
        if addr is not None:
            self.root.add_subregion(addr, mr)

    def close(self) -> None:
        """Close the endpoint, then release the RAM (its memfds) at once."""
        self.ep.close()
        for mr in self.regions.values():
            if mr.hostmem is not None:
                mr.hostmem.close()

    # -- commands (``do_<name>``) ----------------------------------------------------

    def do_pid(self) -> int:
        return os.getpid()

    def do_enable(self, timeout: float | None = None) -> str:
        self.ep.enable(timeout)
        return self.ep.state.name

    def do_enable_nowait(self) -> str:
        self.ep.enable_nowait()
        return self.ep.state.name

    def do_wait_state(self, state: str, timeout: float = 5.0) -> str:
        deadline = time.monotonic() + timeout
        while self.ep.state.name != state and time.monotonic() < deadline:
            time.sleep(0.005)
        return self.ep.state.name

    def do_disable(self) -> str:
        self.ep.disable()
        return self.ep.state.name

    def do_state(self) -> tuple[str, str | None]:
        err = self.ep.last_error
        return self.ep.state.name, None if err is None else f"{type(err).__name__}: {err}"

    def do_read(self, addr: int, size: int) -> tuple[int, int]:
        value, result = self.as_.read(addr, size)
        return value, int(result)

    def do_write(self, addr: int, value: int, size: int) -> int:
        return int(self.as_.write(addr, value, size))

    def do_read_bytes(self, addr: int, size: int) -> tuple[bytes, int]:
        data, result = self.as_.read_bytes(addr, size)
        return data, int(result)

    def do_write_bytes(self, addr: int, data: bytes) -> int:
        return int(self.as_.write_bytes(addr, data))

    def do_ep_read_bytes(self, offset: int, size: int) -> tuple[bytes, int]:
        data, result = self.ep.read_bytes(offset, size)
        return data, int(result)

    def do_ep_write_bytes(self, offset: int, data: bytes) -> int:
        return int(self.ep.write_bytes(offset, data))

    def do_stats(self) -> dict[str, Any]:
        return self.ep.statistics().as_dict()

    def do_mappings(self) -> list[tuple[int, int, bool]]:
        return self.ep.importer.mappings if self.ep.importer else []

    def do_shared(self) -> list[tuple[int, int]]:
        return self.ep.exporter.shared_ranges if self.ep.exporter else []

    def do_check(self) -> None:
        with self.lock:
            self.ep._check_invariants()
            self.root._check_invariants()

    def do_send_irq(self, itype: int, data: bytes = b"") -> bool:
        return self.ep.send_interrupt(itype, data)

    def do_send_irqs(self, items: list[tuple[int, bytes]]) -> int:
        return sum(self.ep.send_interrupt(t, d) for t, d in items)

    def do_pop_irq(self) -> tuple[int, bytes] | None:
        msg = self.ep.pop_interrupt()
        return None if msg is None else (msg.type, msg.data)

    def do_irq_levels(self) -> list[bool]:
        return list(self.irq_levels)

    def do_move(self, rname: str, addr: int) -> None:
        self.regions[rname].set_address(addr)

    def do_remove(self, rname: str) -> None:
        mr = self.regions[rname]
        mr.container.del_subregion(mr)

    def do_add(self, rname: str, addr: int, priority: int = 0) -> None:
        self.root.add_subregion_overlap(addr, self.regions[rname], priority)

    def do_add_ram(self, rname: str, addr: int | None, size: int, kind: str, fill: int) -> None:
        self.add_ram(rname, addr, size, kind, fill)

    def do_swap(self, out_name: str, in_name: str) -> None:
        """Replace region ``out_name`` by ``in_name`` at the same address, in one commit."""
        out = self.regions[out_name]
        new = self.regions[in_name]
        addr = out.addr
        with self.as_.transaction():
            self.root.del_subregion(out)
            self.root.add_subregion(addr, new)

    def do_toggle(self, a: str, b: str) -> str:
        """Swap whichever of ``a`` and ``b`` is mapped for the other; return the new one."""
        if self.regions[a].container is not None:
            self.do_swap(a, b)
            return b
        self.do_swap(b, a)
        return a

    def do_fill(self, rname: str, byte: int) -> None:
        hm = self.regions[rname].hostmem
        hm.view[:] = bytes([byte]) * hm.size

    def do_counter(self) -> tuple[int, list]:
        return self.counter.reads, list(self.counter.writes)

    def do_fds(self) -> int:
        gc.collect()
        return len(os.listdir("/proc/self/fd"))

    def do_hammer(self, n: int, seed: int) -> int:
        """``n`` writes then reads of the peer's anonymous RAM and MMIO; return errors."""
        return hammer(self.as_, n, seed)

    def do_swap_loop(self, n: int, a: str, b: str) -> int:
        """Swap two regions at one address ``n`` times; return how many swaps ran."""
        for i in range(n):
            if i % 2 == 0:
                self.do_swap(a, b)
            else:
                self.do_swap(b, a)
        return n

    def do_try_writable_map(self, window_offset: int) -> str:
        """Try to map the fd of the direct mapping at ``window_offset`` writable."""
        imp = self.ep.importer
        for m in imp._maps:
            if m.start == window_offset:
                fd = os.dup(m.hostmem.fd)
                try:
                    mm = mmap.mmap(fd, mmap.PAGESIZE, flags=mmap.MAP_SHARED,
                                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
                    mm.close()
                    return "mapped writable"
                except OSError as exc:
                    return f"refused: {exc.strerror}"
                finally:
                    os.close(fd)
        return "no mapping"

    def do_sleep(self, seconds: float) -> None:
        time.sleep(seconds)


def hammer(as_: AddressSpace, n: int, seed: int) -> int:
    """Write then read back ``n`` values in the peer's anonymous RAM; read its MMIO.

    Concurrent hammers of one peer need seeds that differ modulo 4 (each
    seed owns a 1 KiB slot). Returns the number of wrong values or failed
    accesses.
    """
    errors = 0
    base = WINDOW_BASE + ANON
    for i in range(n):
        value = (seed << 32) | i
        offset = (seed % 4) * 1024 + (i % 128) * 8  # each seed its own 1 KiB
        if as_.write(base + offset, value, 8):
            errors += 1
        got, res = as_.read(base + offset, 8)
        if res or got != value:
            errors += 1
        if i % 16 == 0:
            v, res = as_.read(WINDOW_BASE + COUNTER, 4)
            if res or v <= 0:
                errors += 1
    return errors


def run_peer(conn, spec: dict[str, Any]) -> None:
    """Process entry: build a ``Machine`` and obey commands until "quit"."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.get("hot_path"):
        os.environ[hotpath.ENV] = spec["hot_path"]
    machine = Machine(spec)
    try:
        while True:
            if not conn.poll(120):
                break
            cmd, args, kwargs = conn.recv()
            if cmd == "quit":
                machine.close()
                conn.send(("ok", None))
                break
            try:
                result = getattr(machine, "do_" + cmd)(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - reported to the test
                conn.send(("err", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
            else:
                conn.send(("ok", result))
    finally:
        machine.close()


# -- a raw peer: speaks the wire format by hand ---------------------------------------


class RawPeer:
    """Connects (or listens), shakes hands with ``codec``, then sends what it is told."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.transport = make_transport(spec["transport"])
        self.mem: socket.socket | None = None
        self.irq: socket.socket | None = None
        self.buf = b""

    def do_pid(self) -> int:
        return os.getpid()

    def do_connect(self, *, exposed: int = 0x10000, role: int = codec.ROLE_ANY,
                   caps: int = codec.CAP_BLOCK | codec.CAP_FD_PASSING,
                   nonce: int = 7, major: int = codec.PROTOCOL_MAJOR) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        self.mem = self.transport.connection(deadline)
        self.mem.settimeout(10)
        hello = codec.Hello(codec.CHANNEL_MEMORY, role, caps, codec.DEFAULT_MAX_BLOCK, nonce,
                            exposed, major=major)
        self.mem.sendall(codec.encode_message(hello))
        peer = self._recv_frame()
        if major != codec.PROTOCOL_MAJOR:
            return {"peer": repr(peer)}
        self.irq = self.transport.connection(deadline)
        self.irq.settimeout(10)
        self.irq.sendall(codec.encode_message(codec.Hello(
            codec.CHANNEL_INTERRUPT, role, caps, codec.DEFAULT_MAX_BLOCK, peer.nonce, exposed)))
        back = codec.decode_message(self._recv_exact(self.irq, codec.HELLO_LEN))
        return {"sub_priority": codec.resolve_sub_priorities(role, nonce, peer.role,
                                                             peer.nonce)[0],
                "peer_exposed": peer.exposed_size, "echo_ok": back.nonce == nonce}

    def _recv_exact(self, sock: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = sock.recv(n - len(data))
            if not chunk:
                raise EOFError("peer closed")
            data += chunk
        return data

    def _recv_frame(self):
        head = self._recv_exact(self.mem, codec.HEADER_SIZE)
        length = int.from_bytes(head[:4], "little")
        return codec.decode_message(head + self._recv_exact(self.mem, length - codec.HEADER_SIZE))

    def do_connect_silent(self) -> None:
        """Connect the memory channel and say nothing: a peer stuck in the handshake."""
        self.mem = self.transport.connection(time.monotonic() + 10)

    def do_listen_silent(self) -> None:
        """Listen and never accept: a connecting peer gets stuck in the handshake."""
        self.transport.open()

    def do_send(self, data: bytes) -> None:
        self.mem.sendall(data)

    def do_dribble(self, data: bytes) -> None:
        """Connect a bare socket and send ``data`` one byte at a time."""
        sock = self.transport.connection(time.monotonic() + 10)
        try:
            for i in range(len(data)):
                sock.sendall(data[i:i + 1])
                time.sleep(0.001)
        finally:
            sock.close()

    def do_send_with_fd(self, data: bytes) -> None:
        """Send ``data`` with a fresh memfd attached (whatever the frame says)."""
        fd = os.memfd_create("stray", os.MFD_CLOEXEC)
        try:
            socket.send_fds(self.mem, [data], [fd])
        finally:
            os.close(fd)

    def do_send_irq_raw(self, data: bytes) -> None:
        self.irq.sendall(data)

    def do_recv(self, timeout: float = 5.0) -> str:
        self.mem.settimeout(timeout)
        return repr(self._recv_frame())

    def do_serve_share(self, *, start: int, size: int, fd_offset: int, file_size: int,
                       seal: bool = True, readonly: bool = False,
                       fill: int = 0x77) -> dict[str, Any]:
        """Answer the next READ with a share of a fresh memfd (as told)."""
        req = self._recv_frame()
        fd = os.memfd_create("raw-share", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, file_size)
            os.pwrite(fd, bytes([fill]) * file_size, 0)
            if seal:
                import fcntl
                fcntl.fcntl(fd, 1033, 0x2 | 0x4)
            share = codec.ShareInfo(start, size, fd_offset, readonly)
            reply = codec.ReadReply(req.id, req.prio, 0, fill, share)
            socket.send_fds(self.mem, [codec.encode_message(reply)], [fd])
        finally:
            os.close(fd)
        return {"request": repr(req)}

    def do_answer_read(self, value: int, *, result: int = 0) -> str:
        req = self._recv_frame()
        self.mem.sendall(codec.encode_message(codec.ReadReply(req.id, req.prio, result, value)))
        return repr(req)

    def do_answer_read_as(self, how: str, value: int) -> str:
        """Answer the next READ in a way the requester's fast path must hand on.

        ``how``: ``"split"`` (the reply in two pieces), ``"request_first"``
        (a WRITE of ours to the requester's RAM + 8, then the reply),
        ``"fd"`` (the plain reply with a stray fd), ``"other_id"`` (a reply
        to another id).
        """
        req = self._recv_frame()
        reply = codec.encode_message(codec.ReadReply(req.id, req.prio, 0, value))
        if how == "split":
            self.mem.sendall(reply[:10])
            time.sleep(0.05)
            self.mem.sendall(reply[10:])
        elif how == "request_first":
            write = codec.Write(1, 1 - req.prio, RAM + 8, 0x5A, 1)
            self.mem.sendall(codec.encode_message(write))
            time.sleep(0.05)
            self.mem.sendall(reply)
        elif how == "fd":
            self.do_send_with_fd(reply)
        else:
            self.mem.sendall(codec.encode_message(codec.ReadReply(req.id + 1, req.prio, 0,
                                                                  value)))
        return repr(req)

    def do_is_closed(self, timeout: float = 5.0) -> bool:
        """Whether the other side closed the memory channel (EOF) within ``timeout``."""
        ready, _, _ = select.select([self.mem], [], [], timeout)
        if not ready:
            return False
        try:
            while True:
                chunk = self.mem.recv(65536)
                if not chunk:
                    return True
        except OSError:
            return True

    def do_fds(self) -> int:
        return len(os.listdir("/proc/self/fd"))

    def close(self) -> None:
        for sock in (self.mem, self.irq):
            if sock is not None:
                sock.close()
        self.transport.close()


def run_raw_peer(conn, spec: dict[str, Any]) -> None:
    """Process entry for a ``RawPeer``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if spec.get("hot_path"):
        os.environ[hotpath.ENV] = spec["hot_path"]
    raw = RawPeer(spec)
    try:
        while True:
            if not conn.poll(120):
                break
            cmd, args, kwargs = conn.recv()
            if cmd == "quit":
                conn.send(("ok", None))
                break
            try:
                result = getattr(raw, "do_" + cmd)(*args, **kwargs)
            except BaseException as exc:  # noqa: BLE001
                conn.send(("err", f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"))
            else:
                conn.send(("ok", result))
    finally:
        raw.close()


def run_in_thread(fn, *args) -> tuple[threading.Thread, list]:
    """Run ``fn(*args)`` in a thread; the list gets its result or exception."""
    out: list = []

    def target() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:  # noqa: BLE001
            out.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out
