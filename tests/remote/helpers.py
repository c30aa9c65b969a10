"""Shared pieces of the remote tests: a served device in a thread, a raw wire client."""

from __future__ import annotations

import gc
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from memexpose.hw import QtestLikeDriver
from memexpose.remote import (
    RemoteDeviceServer,
    RemotePlatform,
    build_remote_device,
    wire,
)

BAR0 = 0xFE000000


@dataclass
class Served:
    """A device served in a thread of the test process, and the VM end of its socket."""

    platform: RemotePlatform
    server: RemoteDeviceServer
    vm_end: socket.socket
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)

    @property
    def device(self):  # type: ignore[no-untyped-def]
        return self.platform.device

    # -- a raw VM side ------------------------------------------------------------

    def request(self, cmd: int, payload: bytes = b"", fds: list[int] | None = None) -> int:
        """Send a request, return the RET value (0 for an empty RET)."""
        wire.send_message(self.vm_end, cmd, payload, fds or [])
        reply = wire.recv_message(self.vm_end, from_proxy=False)
        assert reply is not None, "the server closed the connection"
        return wire.RET_U64.unpack(reply.payload)[0] if reply.payload else 0

    def cfg_read(self, offset: int, size: int = 4) -> int:
        return self.request(wire.MPQemuCmd.PCI_CFGREAD, wire.pack_pci_conf(offset, 0, size))

    def cfg_write(self, offset: int, value: int, size: int = 4) -> int:
        return self.request(wire.MPQemuCmd.PCI_CFGWRITE,
                            wire.pack_pci_conf(offset, value, size))

    def bar_read(self, addr: int, size: int = 4, memory: bool = True) -> int:
        return self.request(wire.MPQemuCmd.BAR_READ,
                            wire.pack_bar_access(addr, 0, size, memory))

    def bar_write(self, addr: int, value: int, size: int = 4, memory: bool = True) -> int:
        return self.request(wire.MPQemuCmd.BAR_WRITE,
                            wire.pack_bar_access(addr, value, size, memory))

    def map_bar0(self, addr: int = BAR0, command: int = 0x0002) -> None:
        self.cfg_write(0x10, addr)
        self.cfg_write(0x04, command, 2)

    def send(self, cmd: int, payload: bytes = b"", fds: list[int] | None = None) -> None:
        wire.send_message(self.vm_end, cmd, payload, fds or [])

    def sync(self) -> None:
        """Wait until the server handled everything sent so far (a config read)."""
        self.cfg_read(0)

    def finish(self, timeout: float = 5.0) -> None:
        """Close the VM end and join the server thread."""
        try:
            self.vm_end.close()
        finally:
            self.thread.join(timeout)
            assert not self.thread.is_alive(), "the server did not stop at end of stream"
            self.server.close()
            self.platform.close()


@contextmanager
def served(device: str = "edu", options: dict[str, str] | None = None) -> Iterator[Served]:
    """Serve ``device`` in a thread; yield the ``Served``; always stop and join it."""
    platform = RemotePlatform(f"test-{device}")
    build_remote_device(device, platform, options or {})
    vm_end, dev_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    vm_end.settimeout(5.0)
    server = RemoteDeviceServer(platform, dev_end)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            server.serve()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    thread = threading.Thread(target=run, name=f"test-serve-{device}")
    thread.start()
    s = Served(platform, server, vm_end, thread, errors)
    try:
        yield s
    finally:
        s.finish()


def open_fds() -> set[int]:
    """Return this process's open descriptors (not the one the listing itself used).

    Collects garbage first, so descriptors of dead objects are not counted.
    """
    gc.collect()
    found = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue  # the directory listing's own descriptor, closed by now
        found.add(int(name))
    return found


class SleepingDriver(QtestLikeDriver):
    """A qtest-like driver whose ``clock_step`` sleeps: the device's clock is wall time."""

    def clock_step(self, ns: int | None = None) -> None:
        time.sleep((ns if ns is not None else 10_000_000) / 1e9)
