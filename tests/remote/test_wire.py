"""The wire format: bytes as QEMU 7.2 sends them, checks, fds, partial reads."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from memexpose.errors import LinkClosedError, ProtocolError
from memexpose.remote import MPQemuCmd, wire

from .helpers import open_fds

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    b.settimeout(5)
    yield a, b
    a.close()
    b.close()


def test_layout_matches_bytes_captured_from_qemu() -> None:
    # qemu-interop.md §1.3: raw bytes of QEMU 7.2's proxy and of a RET.
    assert wire.HEADER.pack(MPQemuCmd.PCI_CFGREAD, 0, 12) + wire.pack_pci_conf(0, 0, 2) == \
        bytes.fromhex("03000000 00000000 0c00000000000000 00000000 00000000 02000000")
    assert wire.pack_pci_conf(0x10, 0xFFFFFFFF, 4) == bytes.fromhex("10000000ffffffff04000000")
    assert wire.pack_bar_access(0xFE000010, 0x12345678, 4, True) == bytes.fromhex(
        "100000fe00000000 7856341200000000 04000000 01000000")
    assert wire.HEADER_SIZE == 16 and wire.MAX_PAYLOAD == 192 and wire.SYNC_SYSMEM.size == 192
    payload = wire.pack_sync_sysmem([(0, 0xC0000, 0), (0x100000, 0xFF00000, 0x100000)])
    assert wire.unpack_sync_sysmem(payload, 2) == [(0, 0xC0000, 0),
                                                   (0x100000, 0xFF00000, 0x100000)]
    with pytest.raises(ProtocolError, match="at most 8"):
        wire.pack_sync_sysmem([(0, 1, 0)] * 9)


def test_round_trip_with_fds(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    r, w = os.pipe()
    try:
        wire.send_message(a, MPQemuCmd.SET_IRQFD, b"", [r, w])
        msg = wire.recv_message(b)
        assert msg is not None and msg.cmd == MPQemuCmd.SET_IRQFD and len(msg.fds) == 2
        assert msg.name == "SET_IRQFD" and "fds=" in repr(msg)
        os.write(msg.fds[1], b"x")
        assert os.read(r, 1) == b"x"  # the received fd is the same pipe
        wire.close_fds(msg.fds)
    finally:
        os.close(r)
        os.close(w)
    a.close()
    assert wire.recv_message(b) is None  # clean end of stream


def test_reads_a_header_split_over_many_writes(pair: tuple[socket.socket, socket.socket]
                                               ) -> None:
    a, b = pair
    data = wire.HEADER.pack(MPQemuCmd.BAR_READ, 0, 24) + wire.pack_bar_access(0x1000, 0, 4, True)
    for i in range(0, len(data), 5):
        a.sendall(data[i:i + 5])
    msg = wire.recv_message(b)
    assert msg is not None and msg.cmd == MPQemuCmd.BAR_READ
    assert wire.BAR_ACCESS.unpack(msg.payload) == (0x1000, 0, 4, True)


BAD = [
    (wire.HEADER.pack(9, 0, 0), 0, "unknown command 9"),
    (wire.HEADER.pack(-1, 0, 0), 0, "unknown command -1"),
    (wire.HEADER.pack(MPQemuCmd.BAR_READ, 0, 193), 0, "payload size 193 is more than 192"),
    (wire.HEADER.pack(MPQemuCmd.BAR_READ, 0, 12) + bytes(12), 0, "BAR_READ carries 24"),
    (wire.HEADER.pack(MPQemuCmd.PCI_CFGREAD, 0, 12) + bytes(12), 1, "PCI_CFGREAD carries 0 fds"),
    (wire.HEADER.pack(MPQemuCmd.SET_IRQFD, 0, 0), 1, "SET_IRQFD carries 2 fds"),
    (wire.HEADER.pack(MPQemuCmd.SYNC_SYSMEM, 0, 192) + bytes(192), 9, "too many fds"),
    (wire.HEADER.pack(MPQemuCmd.SYNC_SYSMEM, 0, 192) + bytes(192), 20, "too many fds"),
    (wire.HEADER.pack(MPQemuCmd.RET, 0, 8) + bytes(8), 0, "a RET"),
    (wire.HEADER.pack(MPQemuCmd.DEVICE_RESET, 0, 4) + bytes(4), 0, "DEVICE_RESET carries 0"),
]


@pytest.mark.parametrize("reader", ["recv_message", "MessageReader"])
@pytest.mark.parametrize(("data", "nfds", "error"), BAD)
def test_bad_messages_are_refused_and_their_fds_closed(
        pair: tuple[socket.socket, socket.socket], data: bytes, nfds: int, error: str,
        reader: str) -> None:
    a, b = pair
    before = open_fds()
    pipes = [os.pipe() for _ in range((nfds + 1) // 2)]
    fds = [fd for p in pipes for fd in p][:nfds]
    if fds:
        a.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, bytes(
            b"".join(fd.to_bytes(4, "little") for fd in fds)))])
    else:
        a.sendall(data)
    for p in pipes:
        os.close(p[0])
        os.close(p[1])
    with pytest.raises(ProtocolError, match=error) as info:
        if reader == "recv_message":
            wire.recv_message(b)
        else:
            wire.MessageReader(b).read()
    assert "header cmd=" in str(info.value) or "unknown" in str(info.value)
    assert open_fds() == before  # every received fd was closed


@pytest.mark.parametrize("reader", ["recv_message", "MessageReader"])
@pytest.mark.parametrize(("data", "error"), [
    (bytes(10), "short header: the stream ended after 10"),
    (wire.HEADER.pack(MPQemuCmd.BAR_READ, 0, 24) + bytes(5), "short payload"),
])
def test_truncated_messages(pair: tuple[socket.socket, socket.socket], data: bytes,
                            error: str, reader: str) -> None:
    a, b = pair
    a.sendall(data)
    a.close()
    with pytest.raises(ProtocolError, match=error):
        if reader == "recv_message":
            wire.recv_message(b)
        else:
            wire.MessageReader(b).read()


def test_reader_matches_fds_to_the_message_they_came_with(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    before = open_fds()
    memfd = os.memfd_create("ram")
    os.ftruncate(memfd, 4096)
    # A config read, then a SYNC_SYSMEM with its fd, queued before one read.
    wire.send_message(a, MPQemuCmd.PCI_CFGREAD, wire.pack_pci_conf(0, 0, 4))
    wire.send_message(a, MPQemuCmd.SYNC_SYSMEM, wire.pack_sync_sysmem([(0, 4096, 0)]), [memfd])
    wire.send_message(a, MPQemuCmd.DEVICE_RESET)
    os.close(memfd)
    reader = wire.MessageReader(b)
    cmd, data, fds = reader.read()  # type: ignore[misc]
    assert cmd == MPQemuCmd.PCI_CFGREAD and fds == () and len(data) == 28
    cmd, data, fds = reader.read()  # type: ignore[misc]
    assert cmd == MPQemuCmd.SYNC_SYSMEM and len(fds) == 1 and len(data) == 208
    assert os.fstat(fds[0]).st_size == 4096
    wire.close_fds(fds)
    cmd, data, fds = reader.read()  # type: ignore[misc]
    assert cmd == MPQemuCmd.DEVICE_RESET and fds == ()
    closed = a.fileno()
    a.close()
    assert reader.read() is None
    assert open_fds() == before - {closed}


def test_reader_refuses_fds_in_the_middle_of_a_message(
        pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    before = open_fds()
    r, w = os.pipe()
    a.sendall(wire.HEADER.pack(MPQemuCmd.SYNC_SYSMEM, 0, 192))
    reader = wire.MessageReader(b)
    b.settimeout(0.2)
    with pytest.raises(TimeoutError):
        reader.read()  # the payload has not come yet
    a.sendmsg([bytes(192)], [(socket.SOL_SOCKET, socket.SCM_RIGHTS,
                               r.to_bytes(4, "little") + w.to_bytes(4, "little"))])
    os.close(r)
    os.close(w)
    with pytest.raises(ProtocolError, match="middle of a message"):
        reader.read()
    assert open_fds() == before


def test_send_to_a_closed_peer_names_the_command(pair: tuple[socket.socket, socket.socket]
                                                 ) -> None:
    a, b = pair
    b.close()
    with pytest.raises(LinkClosedError, match="BAR_READ"):
        for _ in range(3):
            wire.send_message(a, MPQemuCmd.BAR_READ, wire.pack_bar_access(0, 0, 4, True))
