"""QEMU 7.2's multi-process wire format (``mpqemu``): framing, payloads, fds.

One message on the stream (x86-64 layout, host byte order = little-endian)::

    offset  size  field
    0       4     cmd      int32: a ``MPQemuCmd``
    4       4     padding  zero
    8       8     size     payload bytes that follow (0..192)
    16      size  payload  the command's struct (below)

File descriptors travel as one ``SCM_RIGHTS`` control message attached to
the first byte of the header (QEMU sends header and payload with one
``sendmsg``). There is no handshake, no version and no magic.

Payloads (``docs/remote.md`` W1-W4 name the rules the code cites):

* ``PciConfDataMsg`` (12 bytes): ``addr`` u32, ``val`` u32, ``len`` i32;
* ``BarAccessMsg`` (24 bytes): ``addr`` u64 (absolute bus address),
  ``val`` u64, ``size`` u32, ``memory`` bool, 3 padding bytes;
* ``SyncSysmemMsg`` (192 bytes): ``gpas[8]`` u64, ``sizes[8]`` u64,
  ``offsets[8]`` i64; the number of valid entries is the number of fds;
* ``RET``: one u64 (or no payload, which means 0); ``UINT64_MAX`` is an error.

``recv_message`` reads exactly one message and checks it (``check_message``);
anything malformed raises ``ProtocolError`` naming what arrived, after
closing every fd that came with it. ``send_message`` writes one.
"""

from __future__ import annotations

import array
import enum
import os
import socket
import struct
from dataclasses import dataclass

from memexpose.errors import LinkClosedError, ProtocolError

__all__ = [
    "BAR_ACCESS",
    "HEADER",
    "HEADER_SIZE",
    "MAX_FDS",
    "MAX_PAYLOAD",
    "PCI_CONF",
    "ANCBUF_SIZE",
    "RET_ERROR",
    "SYNC_SYSMEM",
    "MPQemuCmd",
    "MPQemuMessage",
    "MessageReader",
    "check_message",
    "close_fds",
    "describe",
    "pack_bar_access",
    "pack_pci_conf",
    "pack_sync_sysmem",
    "recv_exact",
    "recv_message",
    "send_message",
    "unpack_sync_sysmem",
]


class MPQemuCmd(enum.IntEnum):
    """The commands of QEMU 7.2's ``MPQemuCmd`` (``include/hw/remote/mpqemu-link.h``)."""

    SYNC_SYSMEM = 0
    RET = 1
    PCI_CFGWRITE = 2
    PCI_CFGREAD = 3
    BAR_WRITE = 4
    BAR_READ = 5
    SET_IRQFD = 6
    DEVICE_RESET = 7


MPQEMU_CMD_MAX = 8
HEADER = struct.Struct("<iIQ")
HEADER_SIZE = HEADER.size  # 16, QEMU's MPQEMU_MSG_HDR_SIZE
MAX_PAYLOAD = 192  # sizeof(MPQemuMsg.data)
MAX_FDS = 8  # REMOTE_MAX_FDS: SYNC_SYSMEM carries at most 8 regions
# What one recvmsg may hand us (QEMU's SOCKET_MAX_FDS): more is reported as
# "too many fds" rather than silently truncated by the kernel.
_SOCKET_MAX_FDS = 16
_ANCBUF = socket.CMSG_SPACE(_SOCKET_MAX_FDS * 4)
ANCBUF_SIZE = _ANCBUF
"""The ancillary buffer size to pass ``recvmsg`` (room for 16 fds)."""
_MSG_CTRUNC = int(socket.MSG_CTRUNC)
_CHUNK = 256  # bytes per read: one message of any size, with room to spare
PCI_CONF = struct.Struct("<IIi")
BAR_ACCESS = struct.Struct("<QQI?3x")
SYNC_SYSMEM = struct.Struct("<8Q8Q8q")
RET_U64 = struct.Struct("<Q")
_BAR_MSG = HEADER_SIZE + BAR_ACCESS.size
RET_ERROR = (1 << 64) - 1
"""The ``RET`` value that signals an error (QEMU's ``UINT64_MAX``)."""

_NAMES = {c.value: c.name for c in MPQemuCmd}

# W3: payload size and fd count each command must carry (None: any).
_SHAPES: dict[int, tuple[int | None, tuple[int, int]]] = {
    MPQemuCmd.SYNC_SYSMEM: (SYNC_SYSMEM.size, (1, MAX_FDS)),
    MPQemuCmd.RET: (None, (0, 0)),
    MPQemuCmd.PCI_CFGWRITE: (PCI_CONF.size, (0, 0)),
    MPQemuCmd.PCI_CFGREAD: (PCI_CONF.size, (0, 0)),
    MPQemuCmd.BAR_WRITE: (BAR_ACCESS.size, (0, 0)),
    MPQemuCmd.BAR_READ: (BAR_ACCESS.size, (0, 0)),
    MPQemuCmd.SET_IRQFD: (0, (2, 2)),
    MPQemuCmd.DEVICE_RESET: (0, (0, 0)),
}


@dataclass(frozen=True, slots=True)
class MPQemuMessage:
    """One received message.

    Attributes:
        cmd: the command number (a ``MPQemuCmd`` value).
        payload: the payload bytes (``size`` of them).
        fds: descriptors that came with it; the receiver owns them.
    """

    cmd: int
    payload: bytes
    fds: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        """The command's name (``BAR_READ``), or ``cmd N`` for an unknown one."""
        return _NAMES.get(self.cmd, f"cmd {self.cmd}")

    def __repr__(self) -> str:
        fds = f" fds={list(self.fds)}" if self.fds else ""
        return f"<MPQemuMessage {self.name} size={len(self.payload)}{fds}>"


def describe(cmd: int, size: int, nfds: int) -> str:
    """Return ``"header cmd=N (NAME) size=S fds=F"`` for messages."""
    return f"header cmd={cmd} ({_NAMES.get(cmd, 'unknown')}) size={size} fds={nfds}"


def _describe_at(buf: bytes, at: int, nfds: int) -> str:
    cmd, _, size = HEADER.unpack_from(buf, at)
    return describe(cmd, size, nfds)


def close_fds(fds: tuple[int, ...] | list[int]) -> None:
    """Close every descriptor in ``fds`` (ignoring ones already closed)."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def check_message(cmd: int, size: int, nfds: int, *, from_proxy: bool = True) -> None:
    """Check one header against QEMU's rules (W3); raise what is wrong.

    Args:
        cmd, size, nfds: the command, payload size and number of fds received.
        from_proxy: the message comes from the VM side (``RET`` is then wrong).

    Raises:
        ProtocolError: unknown command, wrong payload size or fd count for
            the command, or a ``RET`` where a request was due (and vice versa).
    """
    shape = _SHAPES.get(cmd)
    if shape is None:
        raise ProtocolError(f"{describe(cmd, size, nfds)}: unknown command {cmd} (QEMU 7.2 "
                            "knows 0..7)")
    if from_proxy == (cmd == MPQemuCmd.RET):
        raise ProtocolError(
            f"{describe(cmd, size, nfds)}: "
            f"{'a RET (the remote reply)' if from_proxy else 'a request'} arrived where "
            f"{'a request from the VM side' if from_proxy else 'a RET reply'} was due")
    want_size, (min_fds, max_fds) = shape
    if want_size is not None and size != want_size:
        raise ProtocolError(f"{describe(cmd, size, nfds)}: {_NAMES[cmd]} carries {want_size} "
                            "payload bytes")
    if cmd == MPQemuCmd.RET and size not in (0, RET_U64.size):
        raise ProtocolError(f"{describe(cmd, size, nfds)}: RET carries 0 or 8 payload bytes")
    if not min_fds <= nfds <= max_fds:
        want = f"{min_fds}" if min_fds == max_fds else f"{min_fds}..{max_fds}"
        raise ProtocolError(f"{describe(cmd, size, nfds)}: {_NAMES[cmd]} carries {want} fds")


def _take_fds(ancdata: list[tuple[int, int, bytes]], fds: list[int]) -> None:
    for level, kind, data in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            got = array.array("i")
            got.frombytes(data[:len(data) - len(data) % got.itemsize])
            fds.extend(got)


def recv_message(sock: socket.socket, *, from_proxy: bool = True,
                 first: tuple[bytes, list[tuple[int, int, bytes]], int] | None = None
                 ) -> MPQemuMessage | None:
    """Read exactly one message from ``sock`` (W1, W2); None at a clean end of stream.

    Reads the 16-byte header with ``recvmsg`` (keeping fds, however the bytes
    are split), then ``size`` payload bytes, then checks the message
    (``check_message``). The caller owns the returned fds.

    Args:
        sock: a connected stream socket.
        from_proxy: the message comes from the VM side (else it must be a RET).
        first: ``(data, ancdata, flags)`` of a ``recvmsg(HEADER_SIZE, ...)``
            the caller already made (its fast path); the read goes on from there.

    Raises:
        ProtocolError: a short header or payload (end of stream inside a
            message), ``size`` > 192, more than 8 fds (or so many that the
            kernel truncated them), or what ``check_message`` refuses. Every fd
            received with the message is closed first.
        OSError: the socket failed (timeout included).
    """
    fds: list[int] = []
    try:
        data, ancdata, flags = first if first is not None else \
            sock.recvmsg(HEADER_SIZE, _ANCBUF)[:3]
        if ancdata:
            _take_fds(ancdata, fds)
        truncated = bool(flags & _MSG_CTRUNC)
        if not data:
            if fds:
                raise ProtocolError(f"end of stream with {len(fds)} fds and no header")
            return None
        while len(data) < HEADER_SIZE:
            more, ancdata, flags, _ = sock.recvmsg(HEADER_SIZE - len(data), _ANCBUF)
            if ancdata:
                _take_fds(ancdata, fds)
            truncated |= bool(flags & _MSG_CTRUNC)
            if not more:
                raise ProtocolError(f"short header: the stream ended after {len(data)} of "
                                    f"{HEADER_SIZE} bytes ({bytes(data).hex()})")
            data += more
        cmd, _pad, size = HEADER.unpack(data)
        if size > MAX_PAYLOAD:
            raise ProtocolError(f"{describe(cmd, size, len(fds))}: payload size {size} is "
                                f"more than {MAX_PAYLOAD} (sizeof MPQemuMsg.data)")
        if truncated or len(fds) > MAX_FDS:
            raise ProtocolError(f"{describe(cmd, size, len(fds))}: too many fds (more than "
                                f"{MAX_FDS}{', truncated by the kernel' if truncated else ''})")
        payload = recv_exact(sock, size, f"{describe(cmd, size, len(fds))}: short payload")
        check_message(cmd, size, len(fds), from_proxy=from_proxy)
    except BaseException:
        close_fds(fds)
        raise
    return MPQemuMessage(cmd, payload, tuple(fds))


def recv_exact(sock: socket.socket, size: int, what: str, have: bytes = b"") -> bytes:
    """Return ``size`` bytes from ``sock``, the first of them ``have``.

    Raises:
        ProtocolError: the stream ended first (``what`` starts the message).
    """
    data = have
    while len(data) < size:
        more = sock.recv(size - len(data))
        if not more:
            raise ProtocolError(f"{what}: the stream ended after {len(data)} of {size} bytes")
        data += more
    return data


class MessageReader:
    """Read whole messages from a stream socket, in as few system calls as possible.

    One ``recvmsg`` of up to ``_CHUNK`` bytes usually brings exactly one
    request; when it brings more, the rest waits in a buffer. File
    descriptors are matched to messages by how Linux delivers them (W2): a
    read returns the fds of the one message whose first byte it reads, and
    stops right after that message's bytes, so they belong to the last
    message that starts within the read.

    Args:
        sock: a connected ``AF_UNIX`` stream socket.
        from_proxy: messages come from the VM side (a ``RET`` is then wrong).

    Invariants:
        * ``_buf`` starts at a message boundary;
        * ``_fds`` maps the offset in ``_buf`` where a message starts to the
          fds that came with it; every one is returned or closed exactly once.
    """

    __slots__ = ("_buf", "_fds", "from_proxy", "sock")

    def __init__(self, sock: socket.socket, *, from_proxy: bool = True) -> None:
        self.sock = sock
        self.from_proxy = from_proxy
        self._buf = b""
        self._fds: dict[int, list[int]] = {}

    def read(self) -> tuple[int, bytes, tuple[int, ...]] | None:
        """Return the next ``(cmd, message bytes, fds)``; None at a clean end of stream.

        The message bytes are the 16-byte header and the payload; the caller
        owns the fds.

        Raises:
            ProtocolError: as ``recv_message``, or fds that arrive with no
                message starting in the read (every pending fd is closed).
            OSError: the socket failed.
        """
        if not self._buf:
            data, anc, flags, _ = self.sock.recvmsg(_CHUNK, _ANCBUF)
            # The access path: exactly one BAR request, no fds.
            if len(data) == _BAR_MSG and not anc and not flags:
                cmd, _, size = HEADER.unpack_from(data)
                if size == BAR_ACCESS.size and cmd in (MPQemuCmd.BAR_READ,
                                                       MPQemuCmd.BAR_WRITE):
                    return cmd, data, ()
            if not data:
                if anc:
                    fds: list[int] = []
                    _take_fds(anc, fds)
                    close_fds(fds)
                    raise ProtocolError(f"end of stream with {len(fds)} fds and no header")
                return None
            self._add(data, anc, flags)
        try:
            while True:
                buf = self._buf
                if len(buf) >= HEADER_SIZE:
                    cmd, _, size = HEADER.unpack_from(buf)
                    if size > MAX_PAYLOAD:
                        nfds = len(self._fds.get(0, ()))
                        raise ProtocolError(f"{describe(cmd, size, nfds)}: payload size {size} "
                                            f"is more than {MAX_PAYLOAD} (sizeof MPQemuMsg.data)")
                    end = HEADER_SIZE + size
                    if len(buf) >= end:
                        fds_list = self._fds.pop(0, [])
                        if self._fds:
                            self._fds = {at - end: f for at, f in self._fds.items()}
                        self._buf = buf[end:]
                        try:
                            check_message(cmd, size, len(fds_list), from_proxy=self.from_proxy)
                        except ProtocolError:
                            close_fds(fds_list)
                            raise
                        return cmd, buf[:end], tuple(fds_list)
                data, anc, flags, _ = self.sock.recvmsg(_CHUNK, _ANCBUF)
                if not data:
                    if len(buf) < HEADER_SIZE:
                        raise ProtocolError(f"short header: the stream ended after {len(buf)} "
                                            f"of {HEADER_SIZE} bytes ({bytes(buf).hex()})")
                    raise ProtocolError(
                        f"{_describe_at(buf, 0, len(self._fds.get(0, ())))}: short payload: "
                        f"the stream ended after {len(buf) - HEADER_SIZE} of "
                        f"{HEADER.unpack_from(buf)[2]} bytes")
                self._add(data, anc, flags)
        except ProtocolError:
            self.close()
            raise

    def _add(self, data: bytes, anc: list[tuple[int, int, bytes]], flags: int) -> None:
        base = len(self._buf)
        self._buf += data
        if not anc and not flags & _MSG_CTRUNC:
            return
        fds: list[int] = []
        _take_fds(anc, fds)
        owner = self._last_start(base)
        if flags & _MSG_CTRUNC or len(fds) > MAX_FDS or owner is None or owner in self._fds:
            close_fds(fds)
            head = _describe_at(self._buf, owner, len(fds)) \
                if owner is not None and owner + HEADER_SIZE <= len(self._buf) else \
                f"{len(fds)} fds"
            if owner is None or owner in self._fds:
                raise ProtocolError(f"{head}: fds arrived in the middle of a message")
            raise ProtocolError(f"{head}: too many fds (more than {MAX_FDS}"
                                f"{', truncated by the kernel' if flags & _MSG_CTRUNC else ''})")
        self._fds[owner] = fds

    def _last_start(self, base: int) -> int | None:
        """Return the last message start at or after ``base`` in the buffer, or None."""
        buf = self._buf
        pos = 0
        last = None
        while pos < len(buf):
            if pos >= base:
                last = pos
            if pos + HEADER_SIZE > len(buf):
                break
            pos += HEADER_SIZE + min(HEADER.unpack_from(buf, pos)[2], MAX_PAYLOAD)
        return last

    def close(self) -> None:
        """Close every fd still waiting for its message; drop buffered bytes."""
        for fds in self._fds.values():
            close_fds(fds)
        self._fds = {}
        self._buf = b""


def send_message(sock: socket.socket, cmd: int, payload: bytes = b"",
                 fds: tuple[int, ...] | list[int] = ()) -> None:
    """Write one message: header and payload in one ``sendmsg``, fds attached.

    The fds stay open here (the kernel gives the receiver its own copies).

    Raises:
        LinkClosedError: the peer has gone (broken pipe, reset).
        OSError: another socket failure (timeout included).
    """
    data = HEADER.pack(cmd, 0, len(payload)) + payload
    try:
        if fds:
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
            sent = sock.sendmsg([data], anc)
            if sent < len(data):
                sock.sendall(data[sent:])
        else:
            sock.sendall(data)
    except (BrokenPipeError, ConnectionResetError) as exc:
        raise LinkClosedError(f"cannot send {_NAMES.get(cmd, cmd)}: the peer has gone "
                              f"({exc.strerror})") from exc


def pack_pci_conf(addr: int, val: int, length: int) -> bytes:
    """Return a ``PciConfDataMsg`` payload."""
    return PCI_CONF.pack(addr, val & 0xFFFFFFFF, length)


def pack_bar_access(addr: int, val: int, size: int, memory: bool) -> bytes:
    """Return a ``BarAccessMsg`` payload."""
    return BAR_ACCESS.pack(addr, val & RET_ERROR, size, memory)


def pack_sync_sysmem(entries: list[tuple[int, int, int]]) -> bytes:
    """Return a ``SyncSysmemMsg`` payload for up to 8 ``(gpa, size, offset)`` entries.

    Raises:
        ProtocolError: more than 8 entries.
    """
    if len(entries) > MAX_FDS:
        raise ProtocolError(f"SYNC_SYSMEM holds at most {MAX_FDS} regions, not {len(entries)}")
    gpas = [e[0] for e in entries] + [0] * (MAX_FDS - len(entries))
    sizes = [e[1] for e in entries] + [0] * (MAX_FDS - len(entries))
    offsets = [e[2] for e in entries] + [0] * (MAX_FDS - len(entries))
    return SYNC_SYSMEM.pack(*gpas, *sizes, *offsets)


def unpack_sync_sysmem(payload: bytes, count: int) -> list[tuple[int, int, int]]:
    """Return the first ``count`` ``(gpa, size, offset)`` entries of a ``SyncSysmemMsg``."""
    fields = SYNC_SYSMEM.unpack(payload)
    return [(fields[i], fields[8 + i], fields[16 + i]) for i in range(count)]
