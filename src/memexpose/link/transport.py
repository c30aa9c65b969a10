"""Transports and channels: stream sockets that carry memexpose frames.

A ``Transport`` knows how to make connections (UNIX socket path or TCP
address, listening or connecting); a ``Channel`` is one connected socket with
a receive buffer that cuts the byte stream into frames and keeps received
fds with the frames that announced them (docs/protocol.md, P11).

Sockets stay in blocking mode. Bounded waits use ``SO_RCVTIMEO`` and
``SO_SNDTIMEO`` (one system call per receive, no ``poll`` first); a
receive that times out returns 0 bytes read and the caller checks its
deadline. EOF raises ``LinkClosedError``.

Making a connection (accepting, connecting, retrying) and the handshake
are the places that poll: they wait on the socket and on a ``Cancellation``
at once, so that ``disable()`` or ``close()`` ends a pending connect at once
instead of at its deadline.
"""

from __future__ import annotations

import array
import errno
import math
import os
import select
import socket
import stat
import struct
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from memexpose.errors import ConfigError, LinkBusyError, LinkClosedError, LinkError, ProtocolError
from memexpose.link.codec import HEADER_SIZE, parse_header

__all__ = ["Cancellation", "Channel", "TcpTransport", "Transport", "UnixTransport"]

_MAX_FDS_PER_RECV = 4
_ANC_SPACE = socket.CMSG_SPACE(_MAX_FDS_PER_RECV * array.array("i").itemsize)
# Plain ints: socket's flag constants are IntFlag members, whose operators
# cost a microsecond on every receive.
_CMSG_CLOEXEC = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
_CTRUNC = int(socket.MSG_CTRUNC)
DONTWAIT = int(socket.MSG_DONTWAIT)
_TIMEVAL = struct.Struct("ll")
_UNIX_PATH_MAX = 107
_RETRY = 0.005  # seconds between connect attempts while the listener is missing
_RETRY_ERRNOS = (errno.ENOENT, errno.ECONNREFUSED, errno.EAGAIN, errno.ETIMEDOUT)


class Cancellation:
    """A one-shot "stop connecting" signal that also wakes ``poll``: a flag and an eventfd.

    One per connect attempt. ``set`` may come from any thread, at any time,
    also after ``close``. The attempt polls ``fileno()`` beside its socket,
    and makes each connection (``accept``, ``connect``) inside ``guard()``,
    so it never makes one after ``set`` returned.

    Invariants:
        * ``_fd`` is the eventfd, or -1 once closed; it is readable iff
          ``_set`` (or closed);
        * ``_set`` never goes back to False.
    """

    __slots__ = ("_fd", "_lock", "_set")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._set = False
        self._fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)

    def set(self) -> None:
        """Cancel (idempotent, any thread); wakes a ``poll`` on ``fileno()``."""
        with self._lock:
            if self._set:
                return
            self._set = True
            if self._fd >= 0:
                os.eventfd_write(self._fd, 1)

    def is_set(self) -> bool:
        """Whether ``set`` was called."""
        return self._set

    def fileno(self) -> int:
        """The eventfd to poll (readable once cancelled); -1 after ``close``."""
        return self._fd

    def guard(self) -> threading.Lock:
        """The lock to hold while checking ``is_set`` and making a connection."""
        return self._lock

    def close(self) -> None:
        """Release the eventfd (the attempt is over); ``set`` stays callable. Idempotent."""
        with self._lock:
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __repr__(self) -> str:
        return f"<Cancellation {'set' if self._set else 'clear'}>"


def cancelled_error(what: str) -> LinkClosedError:
    """The error a cancelled connect ends with."""
    return LinkClosedError(f"{what}: connect cancelled (the link was disabled)")


def wait_readable(fd: int, cancel: Cancellation | None, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``fd`` to be readable; False on timeout.

    ``fd`` may be -1 (only sleep, cancellably).

    Raises:
        LinkClosedError: ``cancel`` was set (before or during the wait).
    """
    poller = select.poll()
    if fd >= 0:
        poller.register(fd, select.POLLIN)
    cfd = -1 if cancel is None else cancel.fileno()
    if cfd >= 0:
        poller.register(cfd, select.POLLIN)
    if cancel is not None and cancel.is_set():
        raise cancelled_error("waiting")
    try:
        events = poller.poll(max(0, math.ceil(timeout * 1000)))
    except InterruptedError:
        events = []
    if cancel is not None and cancel.is_set():
        raise cancelled_error("waiting")
    return any(efd == fd for efd, _ in events)


def set_socket_timeouts(sock: socket.socket, recv: float | None, send: float | None) -> None:
    """Set ``SO_RCVTIMEO``/``SO_SNDTIMEO`` (None or 0: wait forever)."""
    for opt, value in ((socket.SO_RCVTIMEO, recv), (socket.SO_SNDTIMEO, send)):
        value = value or 0.0
        sec = int(value)
        sock.setsockopt(socket.SOL_SOCKET, opt, _TIMEVAL.pack(sec, int((value - sec) * 1e6)))


class Channel:
    """One connected stream socket, read as frames.

    Args:
        sock: a connected, blocking stream socket (ownership passes here).
        fd_passing: receive ancillary fds (UNIX sockets).
        peer: a description of the other side, for messages.
        frame_limit: the largest frame accepted (``codec.max_frame``).

    Invariants:
        * ``buf[start:end]`` holds received bytes not yet returned as frames;
          ``base + i`` is the stream position of ``buf[i]``;
        * each entry of ``fd_records`` is ``(first, end, fds)``: fds that
          arrived with the stream bytes ``[first, end)``; the frame that
          claims them starts in that span (the kernel hands fds over with
          the first byte of the message that carried them). Usually empty:
          a reader may take a frame without ``next_frame`` only while it is;
        * ``start == end`` implies no header is cached, so after ``fill`` on
          an empty buffer ``buf[0:n]`` holds exactly the ``n`` bytes received;
        * only one thread reads at a time (``LinkBusyError`` otherwise).
    """

    __slots__ = (
        "_hdr",
        "_iov0",
        "_reading",
        "_recv_into",
        "_recvmsg_into",
        "base",
        "buf",
        "closed",
        "end",
        "fd",
        "fd_passing",
        "fd_records",
        "frame_limit",
        "peer",
        "sock",
        "start",
        "view",
    )

    def __init__(self, sock: socket.socket, *, fd_passing: bool, peer: str,
                 frame_limit: int) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.fd_passing = fd_passing
        self.peer = peer
        self.frame_limit = frame_limit
        self.buf = bytearray(2 * frame_limit + 4096)
        self.view = memoryview(self.buf)
        self.start = 0
        self.end = 0
        self.base = 0
        self.closed = False
        self._hdr: tuple[int, int, int, int, int] | None = None
        self.fd_records: list[tuple[int, int, list[int]]] = []
        self._reading = False
        # Hot path (``fill``, ``fill_empty``): bound methods, and the receive
        # vector for an empty buffer, made once.
        self._recvmsg_into = sock.recvmsg_into
        self._recv_into = sock.recv_into
        self._iov0 = [self.view]

    # -- receiving -------------------------------------------------------------

    def next_frame(self) -> tuple[int, int, int, int, int, int] | None:
        """Return the next complete frame in the buffer, without reading the socket.

        Returns ``(length, type, prio, flags, id, pos)`` where ``buf[pos:pos +
        length]`` is the frame, valid until the next ``fill``; None when no
        whole frame is buffered.

        Raises:
            ProtocolError: a malformed header, or an fd nobody announced.
        """
        start = self.start
        avail = self.end - start
        if avail < HEADER_SIZE:
            return None
        hdr = self._hdr
        if hdr is None:
            hdr = self._hdr = parse_header(self.buf, start, self.frame_limit)
        length = hdr[0]
        if avail < length:
            return None
        self._hdr = None
        self.start = start + length
        records = self.fd_records
        if records and records[0][1] <= self.base + start:
            raise ProtocolError(f"{len(records[0][2])} fd(s) arrived with no frame announcing "
                                "them")
        return length, hdr[1], hdr[2], hdr[3], hdr[4], start

    def fill(self, flags: int = 0) -> int:
        """Receive once into the buffer; return the byte count (0: timed out / no data).

        ``flags=MSG_DONTWAIT`` returns at once; otherwise the call waits up
        to the socket's ``SO_RCVTIMEO``.

        Raises:
            LinkClosedError: the peer closed the connection.
            LinkBusyError: another thread is reading this channel.
            ProtocolError: ancillary data that is not a clean list of fds.
            OSError: the socket failed.
        """
        if self._reading:
            raise LinkBusyError(f"two threads read the link socket to {self.peer} at once; "
                                "hold the machine lock around link calls")
        self._reading = True
        try:
            start = self.start
            end = self.end
            if start == end:
                # The common case: everything was consumed. Receive at 0.
                if start:
                    self.base += start
                    self.start = self.end = end = 0
            elif len(self.buf) - end < self.frame_limit:
                n = end - start
                self.buf[0:n] = self.buf[start:end]
                self.base += start
                self.start = 0
                self.end = end = n
            try:
                if self.fd_passing:
                    n, anc, mflags, _ = self._recvmsg_into(
                        self._iov0 if not end else [self.view[end:]], _ANC_SPACE,
                        flags | _CMSG_CLOEXEC)
                    if anc or mflags & _CTRUNC:
                        self._take_ancillary(anc, mflags, n)
                else:
                    n = self._recv_into(self.view[end:] if end else self.view, 0, flags)
            except (BlockingIOError, InterruptedError):
                return 0
            if n == 0:
                raise LinkClosedError(f"{self.peer} closed the connection")
            self.end = end + n
            return n
        finally:
            self._reading = False

    def fill_empty(self, flags: int = 0) -> int:
        """``fill`` when nothing is buffered (``start == end``): receive at ``buf[0]``.

        The hot path's receive: afterwards ``buf[0:n]`` is exactly what
        arrived, so a caller that expects one frame of ``n`` bytes can check
        it at index 0. Returns, waits and raises as ``fill``.
        """
        if self._reading:
            raise LinkBusyError(f"two threads read the link socket to {self.peer} at once; "
                                "hold the machine lock around link calls")
        self._reading = True
        try:
            end = self.end
            if end:
                assert self.start == end, "fill_empty with bytes buffered; use fill"
                self.base += end
                self.start = self.end = 0
            if self.fd_passing:
                n, anc, mflags, _ = self._recvmsg_into(self._iov0, _ANC_SPACE,
                                                       flags | _CMSG_CLOEXEC)
                if anc or mflags & _CTRUNC:
                    self._take_ancillary(anc, mflags, n)
            else:
                n = self._recv_into(self.view, 0, flags)
            if not n:
                raise LinkClosedError(f"{self.peer} closed the connection")
            self.end = n
            return n
        except (BlockingIOError, InterruptedError):
            return 0
        finally:
            self._reading = False

    def received_natively(self, got: int | list[Any]) -> int:
        """Account for a receive made by ``_hotpath.request``; return the bytes buffered.

        ``got`` is what it returned other than a matched reply: a byte count
        (already buffered; 0: the receive timed out), -1 for EOF, or
        ``[n, ancillary, flags]`` when fds came (recorded here).

        Raises:
            LinkClosedError: the peer closed the connection.
            ProtocolError: ancillary data that is not a clean list of fds.
        """
        if got.__class__ is list:
            n, anc, mflags = got  # type: ignore[misc]
            self._take_ancillary(anc, mflags, n)
            self.end = n
            return n  # type: ignore[no-any-return]
        if got < 0:  # type: ignore[operator]
            raise LinkClosedError(f"{self.peer} closed the connection")
        return got  # type: ignore[return-value]

    def _take_ancillary(self, anc: list[tuple[int, int, bytes]], mflags: int, n: int) -> None:
        fds: list[int] = []
        bad = None
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                arr = array.array("i")
                arr.frombytes(data[:len(data) - len(data) % arr.itemsize])
                fds.extend(arr)
            else:
                bad = f"ancillary data of level {level} type {kind}"
        if mflags & _CTRUNC:
            bad = "more fds than one frame may carry (ancillary data truncated)"
        if bad is not None or not n:
            for fd in fds:
                os.close(fd)
            raise ProtocolError(bad or "fds without data")
        if fds:
            first = self.base + self.end
            self.fd_records.append((first, first + n, fds))

    def carries_fd(self, pos: int, length: int) -> bool:
        """Whether the frame at buffer index ``pos`` is the one an fd came with.

        The fd's frame is the last one starting in the span of the receive
        that brought it, so the span ends inside (or at the end of) that frame.
        """
        records = self.fd_records
        if not records:
            return False
        where = self.base + pos
        first, end, _ = records[0]
        return first <= where < end <= where + length

    def take_fd(self, pos: int) -> int:
        """Return the fd that came with the frame at buffer index ``pos``.

        Raises:
            ProtocolError: no fd arrived with that frame.
        """
        records = self.fd_records
        where = self.base + pos
        if not records or not records[0][0] <= where < records[0][1] or len(records[0][2]) != 1:
            raise ProtocolError("a reply announces a shared fd but none (or several) came "
                                "with it")
        return records.pop(0)[2][0]

    def close(self) -> None:
        """Close the socket and every fd received but not claimed; idempotent."""
        if self.closed:
            return
        self.closed = True
        for _, _, fds in self.fd_records:
            for fd in fds:
                os.close(fd)
        self.fd_records.clear()
        self.sock.close()

    def shutdown(self) -> None:
        """Wake any thread blocked on the socket (it sees EOF); the fd stays open."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    # -- sending ---------------------------------------------------------------

    def send_with_fd(self, data: bytes | bytearray, fd: int) -> None:
        """Send one frame with ``fd`` attached (SCM_RIGHTS on its first byte)."""
        sent = socket.send_fds(self.sock, [data], [fd])
        if sent < len(data):
            self.sock.sendall(memoryview(data)[sent:])

    def __repr__(self) -> str:
        return (f"<Channel {self.peer} buffered={self.end - self.start} "
                f"fds={sum(len(r[2]) for r in self.fd_records)}>")


class Transport(ABC):
    """How the two channels of a link are made: listen-and-accept or connect.

    The listening side keeps its listening socket across connections, so a
    link that broke can be enabled again; ``close`` releases it (and removes
    a UNIX socket file).
    """

    fd_passing: bool = False
    listen: bool = False

    @abstractmethod
    def describe(self) -> str:
        """Return ``unix:PATH`` or ``tcp:HOST:PORT``."""

    @abstractmethod
    def open(self) -> None:
        """Start listening (listening side); idempotent; nothing on the connecting side."""

    @abstractmethod
    def _new_connection(self) -> socket.socket:
        """Return a socket ready for ``connect``."""

    @abstractmethod
    def _address(self) -> object:
        """Return the address to connect to."""

    @abstractmethod
    def _listener_socket(self) -> socket.socket | None:
        """Return the listening socket, if open."""

    def connection(self, deadline: float) -> socket.socket:
        """Return one new connected socket (accepting or connecting) before ``deadline``.

        The connecting side retries a refused or missing listener until the
        deadline: the peer may start later.

        Raises:
            LinkError: nothing connected before the deadline.
        """
        return self._connect_or_accept(deadline, None)

    def _connect_or_accept(self, deadline: float, cancel: Cancellation | None) -> socket.socket:
        """``connection``, which ``cancel`` ends at once (the endpoint's connect).

        No system call blocks: ``accept`` runs once ``poll`` saw a peer, a
        connect is non-blocking, and retries and a TCP connect in progress
        wait in ``poll`` on the socket and ``cancel``.

        Raises:
            LinkClosedError: ``cancel`` was set; no connection was made after that.
            LinkError: nothing connected before the deadline.
        """
        if self.listen:
            return self._accept(deadline, cancel)
        last: OSError | None = None
        while True:
            sock = self._new_connection()
            try:
                sock.setblocking(False)
                if cancel is None:
                    err = sock.connect_ex(self._address())
                else:
                    with cancel.guard():
                        if cancel.is_set():
                            raise cancelled_error(f"connecting to {self.describe()}")
                        err = sock.connect_ex(self._address())
                if err == errno.EINPROGRESS:
                    err = self._finish_connect(sock, deadline, cancel)
                if err == 0:
                    sock.setblocking(True)
                    self._tune(sock)
                    return sock
                last = OSError(err, os.strerror(err))
                if err not in _RETRY_ERRNOS:
                    raise last
            except OSError as exc:  # also a host name that does not resolve
                sock.close()
                raise LinkError(f"cannot connect to {self.describe()}: {exc}") from exc
            except BaseException:
                sock.close()
                raise
            sock.close()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkError(f"cannot connect to {self.describe()} before the deadline "
                                f"({last}); is the listening peer running?") from last
            wait_readable(-1, cancel, min(_RETRY, remaining))

    def _finish_connect(self, sock: socket.socket, deadline: float,
                        cancel: Cancellation | None) -> int:
        """Wait for a non-blocking connect in progress; return its errno (0: connected)."""
        poller = select.poll()
        poller.register(sock.fileno(), select.POLLOUT)
        cfd = -1 if cancel is None else cancel.fileno()
        if cfd >= 0:
            poller.register(cfd, select.POLLIN)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return errno.ETIMEDOUT
            try:
                events = poller.poll(math.ceil(remaining * 1000))
            except InterruptedError:
                continue
            if cancel is not None and cancel.is_set():
                raise cancelled_error(f"connecting to {self.describe()}")
            if any(fd == sock.fileno() for fd, _ in events):
                return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)

    def _accept(self, deadline: float, cancel: Cancellation | None) -> socket.socket:
        """Accept one connection before ``deadline`` (see ``_connect_or_accept``)."""
        self.open()
        listener = self._listener_socket()
        assert listener is not None
        listener.setblocking(False)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkError(f"{self.describe()}: no peer connected before the deadline; "
                                "start the peer, or raise the connect timeout")
            if not wait_readable(listener.fileno(), cancel, remaining):
                continue
            try:
                if cancel is None:
                    sock, _ = listener.accept()
                else:
                    with cancel.guard():
                        if cancel.is_set():
                            raise cancelled_error(f"listening on {self.describe()}")
                        sock, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                continue  # another accept took it
            sock.setblocking(True)
            self._tune(sock)
            return sock

    def _tune(self, sock: socket.socket) -> None:  # noqa: B027 - optional hook
        """Set per-connection socket options (none by default)."""

    def peer_name(self, sock: socket.socket) -> str:
        """Describe the peer of a connected socket for messages."""
        return self.describe()

    @abstractmethod
    def close(self) -> None:
        """Stop listening and release the address; idempotent."""


class UnixTransport(Transport):
    """UNIX stream sockets at ``path``: fds travel, so RAM can be mapped directly.

    Args:
        path: the socket file (at most 107 bytes).
        listen: bind and accept (True) or connect (False).

    Raises:
        ConfigError: the path is too long for a UNIX socket.
    """

    fd_passing = True

    def __init__(self, path: str | os.PathLike[str], *, listen: bool) -> None:
        self.path = os.fspath(path)
        if len(os.fsencode(self.path)) > _UNIX_PATH_MAX:
            raise ConfigError(f"UNIX socket path {self.path!r} is longer than {_UNIX_PATH_MAX} "
                              "bytes; use a shorter directory (e.g. under /tmp)")
        self.listen = listen
        self._listener: socket.socket | None = None

    def describe(self) -> str:
        """Return ``unix:PATH``."""
        return f"unix:{self.path}"

    def open(self) -> None:
        """Bind and listen at ``path`` (a stale socket file there is replaced)."""
        if not self.listen or self._listener is not None:
            return
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(self.path)
            sock.listen(4)
        except OSError as exc:
            sock.close()
            raise LinkError(f"cannot listen on {self.describe()}: {exc}") from exc
        self._listener = sock

    def _new_connection(self) -> socket.socket:
        return socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)

    def _address(self) -> object:
        return self.path

    def _listener_socket(self) -> socket.socket | None:
        return self._listener

    def peer_name(self, sock: socket.socket) -> str:
        """Return ``unix:PATH pid N`` (from SO_PEERCRED)."""
        try:
            cred = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid = struct.unpack("3i", cred)[0]
        except OSError:
            return self.describe()
        return f"{self.describe()} pid {pid}"

    def close(self) -> None:
        """Close the listener and remove the socket file it created."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass

    def __repr__(self) -> str:
        return f"UnixTransport({self.path!r}, listen={self.listen})"


class TcpTransport(Transport):
    """TCP: no fds travel, so every access is forwarded (blocks keep bulk usable).

    Args:
        host: address to bind or connect to.
        port: port; 0 with ``listen=True`` picks a free one (see ``address``).
        listen: bind and accept (True) or connect (False).
    """

    fd_passing = False

    def __init__(self, host: str, port: int, *, listen: bool) -> None:
        self.host = host
        self.port = port
        self.listen = listen
        self._listener: socket.socket | None = None

    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``; after ``open`` the port is the one bound."""
        return self.host, self.port

    def describe(self) -> str:
        """Return ``tcp:HOST:PORT``."""
        return f"tcp:{self.host}:{self.port}"

    def open(self) -> None:
        """Bind and listen (port 0 picks a free port, stored in ``port``)."""
        if not self.listen or self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self.port))
            sock.listen(4)
        except OSError as exc:
            sock.close()
            raise LinkError(f"cannot listen on {self.describe()}: {exc}") from exc
        self.port = sock.getsockname()[1]
        self._listener = sock

    def _new_connection(self) -> socket.socket:
        return socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET,
                             socket.SOCK_STREAM)

    def _address(self) -> object:
        return self.host, self.port

    def _listener_socket(self) -> socket.socket | None:
        return self._listener

    def _tune(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def peer_name(self, sock: socket.socket) -> str:
        """Return ``tcp:HOST:PORT`` of the remote end."""
        try:
            host, port = sock.getpeername()[:2]
        except OSError:
            return self.describe()
        return f"tcp:{host}:{port}"

    def close(self) -> None:
        """Close the listener."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    def __repr__(self) -> str:
        return f"TcpTransport({self.host!r}, {self.port}, listen={self.listen})"
