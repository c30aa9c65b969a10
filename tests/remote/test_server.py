"""RemoteDeviceServer against a raw VM side: config, BARs, RAM, INTx, reset, bad input."""

from __future__ import annotations

import logging
import os
import select
import socket
import time

import pytest

from memexpose.devices import EduDevice
from memexpose.errors import ProtocolError
from memexpose.hw import MiniPC
from memexpose.remote import MPQemuCmd, wire

from .helpers import BAR0, open_fds, served

pytestmark = pytest.mark.timeout(20)


def test_probe_and_config_space_answer_as_the_device() -> None:
    with served() as s:
        # What QEMU's proxy asks in realize (qemu-interop.md §1.4).
        assert s.cfg_read(0x00, 2) == 0x1234 and s.cfg_read(0x02, 2) == 0x11E8
        assert s.cfg_read(0x0A, 2) == 0x00FF and s.cfg_read(0x2E, 2) == 0x1100
        sizes = []
        for reg in range(0x10, 0x2C, 4):
            orig = s.cfg_read(reg)
            s.cfg_write(reg, 0xFFFFFFFF)
            sizes.append(s.cfg_read(reg))
            s.cfg_write(reg, orig)
        assert sizes == [0xFFF00000, 0, 0, 0, 0, 0, 0]
        s.cfg_write(0x00, 0xFFFFFFFF)  # read-only ids
        assert s.cfg_read(0) == 0x11E81234
        assert s.cfg_read(0x3D, 1) == 1  # INTA, as the proxy assumes
        assert s.cfg_read(0xFD, 2) == s.device.config_read(0xFC, 4) >> 8 & 0xFFFF  # unaligned
        assert s.cfg_read(0xFE, 4) == wire.RET_ERROR  # past the config space
        assert s.server.config_errors == 1
        # The same bytes as a local edu.
        local = EduDevice(MiniPC().clock)
        assert [s.cfg_read(r) for r in range(0, 0x100, 4)] == \
            [local.config_read(r, 4) for r in range(0, 0x100, 4)]


def test_bar_accesses_are_decoded_at_the_programmed_base() -> None:
    with served() as s:
        assert s.bar_read(BAR0) == wire.RET_ERROR  # not mapped yet
        s.map_bar0()
        assert s.bar_read(BAR0) == 0x010000ED
        s.bar_write(BAR0 + 4, 0x12345678)
        assert s.bar_read(BAR0 + 4) == 0xEDCBA987
        assert s.bar_read(BAR0 + 0x100000) == wire.RET_ERROR  # just past the BAR
        s.cfg_write(0x10, BAR0 - 0x100000)  # the guest moves it
        assert s.bar_read(BAR0) == wire.RET_ERROR
        assert s.bar_read(BAR0 - 0x100000) == 0x010000ED
        assert s.bar_read(BAR0 - 0x100000, memory=False) == wire.RET_ERROR  # no I/O BAR
        assert s.bar_read(BAR0 - 0x100000, size=3) == wire.RET_ERROR
        stats = s.server.statistics()
        assert stats["bar_misses"] == 5
        assert stats["messages"]["BAR_READ"] == 8  # type: ignore[index]


def test_bar_answers_equal_the_address_space_byte_path() -> None:
    # The server's direct calls (its fast path) and QEMU's address_space_rw
    # semantics (our byte path, on a local edu) give the same values.
    pc = MiniPC()
    local = pc.add(EduDevice(pc.clock), slot=4)
    local.config_write(0x10, BAR0, 4)
    local.config_write(0x04, 0x0002, 2)
    with served() as s:
        s.map_bar0()
        for offset, value in ((0x04, 0x1111), (0x80, 0xAAAA5555), (0x88, 0x40000)):
            s.bar_write(BAR0 + offset, value)
            pc.memory.write_bytes(BAR0 + offset, value.to_bytes(4, "little"))
        for offset in (0, 1, 2, 3, 4, 8, 0x20, 0x24, 0x80, 0x84, 0x88, 0x98, 0x40000,
                       0xFFFF8):
            for size in (1, 2, 4, 8):
                data, _ = pc.memory.read_bytes(BAR0 + offset, size)
                assert s.bar_read(BAR0 + offset, size) == int.from_bytes(data, "little"), \
                    (hex(offset), size)
        # 8-byte writes below 0x80 are ignored, from 0x80 they count (edu's rules).
        s.bar_write(BAR0 + 0x20, (1 << 64) - 1, 8)
        s.bar_write(BAR0 + 0x80, 0x1122334455667788, 8)
        assert s.bar_read(BAR0 + 0x20) == 0 and s.bar_read(BAR0 + 0x80, 8) == 0x1122334455667788


def test_sync_sysmem_dma_and_superseded_fds() -> None:
    with served() as s:
        ram = os.memfd_create("guest-ram")
        os.ftruncate(ram, 0x200000)
        os.pwrite(ram, bytes(range(64)), 0x10000)
        s.send(MPQemuCmd.SYNC_SYSMEM, wire.pack_sync_sysmem(
            [(0, 0xC0000, 0), (0x100000, 0x100000, 0x100000)]), [ram, ram])
        s.sync()
        assert s.platform.ram_map() == [(0, 0xC0000, 0), (0x100000, 0x100000, 0x100000)]
        s.map_bar0(command=0x0006)  # memory + bus master
        for reg, value in ((0x80, 0x10000), (0x88, 0x40000), (0x90, 64), (0x98, 0x1)):
            s.bar_write(BAR0 + reg, value, 8)
        deadline = time.monotonic() + 3
        while s.bar_read(BAR0 + 0x98) & 1 and time.monotonic() < deadline:
            time.sleep(0.01)  # the device clock follows wall time (DMA takes 100 ms)
        for reg, value in ((0x80, 0x40000), (0x88, 0x100000 + 0x800), (0x98, 0x3)):
            s.bar_write(BAR0 + reg, value, 8)
        while s.bar_read(BAR0 + 0x98) & 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert os.pread(ram, 64, 0x100800) == bytes(range(64))  # landed in "guest" RAM
        # A new map supersedes the old one; its fds are closed. Each mapping
        # holds its fd and mmap's own duplicate; the test holds one more.
        assert _memfds("guest-ram") == 1 + 2 * 2
        s.send(MPQemuCmd.SYNC_SYSMEM, wire.pack_sync_sysmem([(0, 0x200000, 0)]), [ram])
        s.sync()
        assert s.platform.ram_map() == [(0, 0x200000, 0)]
        assert _memfds("guest-ram") == 1 + 2 * 1
        os.close(ram)


def _memfds(name: str) -> int:
    """How many of our descriptors are the memfd ``name``."""
    links = []
    for fd in open_fds():
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass
    return sum(1 for link in links if link.startswith(f"/memfd:{name}"))


def _count(fd: int, timeout: float = 1.0) -> int:
    if not select.select([fd], [], [], timeout)[0]:
        return 0
    return os.eventfd_read(fd)


def test_intx_drives_the_eventfd_with_level_semantics() -> None:
    with served() as s:
        intr = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        resample = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        s.send(MPQemuCmd.SET_IRQFD, b"", [intr, resample])
        s.map_bar0()
        s.sync()
        s.bar_write(BAR0 + 0x60, 0x1)  # raise: a rising edge writes intr
        assert _count(intr) == 1
        os.eventfd_write(resample, 1)  # EOI while still high: asserted again
        assert _count(intr) == 1
        s.bar_write(BAR0 + 0x64, 0x1)  # ack: the line drops (no signal for a fall)
        os.eventfd_write(resample, 1)  # EOI after it dropped: nothing
        assert _count(intr, 0.2) == 0
        # Raised before SET_IRQFD: the new intr fd is signalled at once.
        s.bar_write(BAR0 + 0x60, 0x2)
        intr2 = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        s.send(MPQemuCmd.SET_IRQFD, b"", [intr2, resample])
        s.sync()
        assert _count(intr2) >= 1
        # INTx disable hides the pin, as on a local bus.
        s.bar_write(BAR0 + 0x64, 0x2)
        s.cfg_write(0x04, 0x0402, 2)
        s.bar_write(BAR0 + 0x60, 0x4)
        assert _count(intr2, 0.2) == 0
        for fd in (intr, resample, intr2):
            os.close(fd)


def test_device_reset() -> None:
    with served() as s:
        s.map_bar0()
        s.bar_write(BAR0 + 0x04, 0x1)
        wire.send_message(s.vm_end, MPQemuCmd.DEVICE_RESET)
        reply = wire.recv_message(s.vm_end, from_proxy=False)
        assert reply is not None and reply.cmd == MPQemuCmd.RET and reply.payload == b""
        assert s.cfg_read(0x04, 2) == 0  # decoding off again
        assert s.cfg_read(0x10) == 0
        assert s.bar_read(BAR0) == wire.RET_ERROR


@pytest.mark.parametrize(("data", "nfds", "logged"), [
    (bytes(7), 0, "short header: the stream ended after 7 of 16 bytes"),
    (wire.HEADER.pack(MPQemuCmd.BAR_READ, 0, 500), 0, "payload size 500 is more than 192"),
    (wire.HEADER.pack(MPQemuCmd.SYNC_SYSMEM, 0, 192) + bytes(192), 9, "too many fds"),
    (wire.HEADER.pack(42, 0, 0), 0, "unknown command 42"),
])
def test_bad_input_is_logged_and_closes(caplog: pytest.LogCaptureFixture, data: bytes,
                                        nfds: int, logged: str) -> None:
    caplog.set_level(logging.INFO, logger="memexpose.remote")
    before = open_fds()
    with served() as s:
        fds = [os.eventfd(0) for _ in range(nfds)]
        if fds:
            s.vm_end.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                                       b"".join(fd.to_bytes(4, "little") for fd in fds))])
            for fd in fds:
                os.close(fd)
        else:
            s.vm_end.sendall(data)
        if logged.startswith("short"):
            s.vm_end.shutdown(socket.SHUT_WR)
        assert s.vm_end.recv(16) == b""  # the server closed its end
        s.thread.join(5)
        assert len(s.errors) == 1 and isinstance(s.errors[0], ProtocolError)
    assert logged in caplog.text and "bad message from the VM side" in caplog.text
    assert "closing the connection" in caplog.text
    assert open_fds() == before


def test_end_of_stream_ends_serve_cleanly(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="memexpose.remote")
    with served() as s:
        s.map_bar0()
        s.vm_end.close()
        s.thread.join(5)
        assert not s.thread.is_alive() and s.errors == []
    assert "the VM side closed the connection" in caplog.text


def test_trace_logs_every_message(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="memexpose.remote")
    with served() as s:
        s.server.trace = True
        s.map_bar0()
        s.bar_read(BAR0)
        assert "remote edu" in repr(s.server) or "serving" in repr(s.server)
    assert "<- BAR_READ 000000fe" in caplog.text and "<- PCI_CFGWRITE 1000" in caplog.text
    assert "-> RET 0x10000ed" in caplog.text
