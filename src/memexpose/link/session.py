"""A connected link: the two channels, the scheduling rule, and its threads.

The memory channel is synchronous: a requester sends a request and waits
for the reply with the same id. Both peers may do so at the same moment.
The rule (docs/protocol.md, P10; ARCHITECTURE.md "Scheduling"):

* only the machine-lock holder reads or writes the memory socket; every
  request is sent, and every wait runs, with the machine lock held;
* a waiting requester reads the socket itself. An incoming request of
  higher priority than its wait is served at once (nested); one of lower
  priority is deferred until the wait is over. Replies are matched by id;
  one for an outer wait is kept for it;
* when the outermost wait ends, the requester serves what it deferred (or,
  inside a memory commit, hands it to the server thread);
* when no one waits, the server thread serves incoming requests: it sleeps
  in ``epoll`` without any lock, then takes the machine lock to read. A
  requester disarms the socket in that epoll while it waits, so replies do
  not wake the server thread;
* every wait has a deadline. EOF, a malformed frame or a timeout closes
  the link: every waiting access completes with ``MEMTX_ERROR``, direct
  mappings are dropped, and the endpoint shows DISCONNECTED.

The interrupt channel has its own thread, which only receives (into the
16-entry queue); senders write to it under a small lock of its own. It
reports the queue level itself when the machine lock is free; when it is
busy, the server thread reports it as soon as the holder lets go (P16).

Lock order (P16): machine lock, then the interrupt send lock or the
interrupt queue lock. No thread holds the queue or send lock while taking
the machine lock, and no thread blocks on the memory socket without the
machine lock.
"""

from __future__ import annotations

import logging
import os
import secrets
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memexpose.errors import (
    HandshakeError,
    LinkClosedError,
    LinkError,
    LinkTimeoutError,
    ProtocolError,
)
from memexpose.link import codec
from memexpose.link.codec import (
    ACCESS_CLASS,
    BLOCK_REQ_FRAME,
    BLOCK_REQ_LEN,
    CAP_BLOCK,
    CAP_FD_PASSING,
    CHANNEL_INTERRUPT,
    CHANNEL_MEMORY,
    FLAG_WANT_SHARE,
    HEADER_SIZE,
    INTERRUPT_FRAME,
    INTERRUPT_LEN,
    INVALIDATE_ACK_FRAME,
    INVALIDATE_ACK_LEN,
    INVALIDATE_CLASS,
    INVALIDATE_FRAME,
    INVALIDATE_LEN,
    READ_FRAME,
    READ_LEN,
    READ_REPLY_FRAME,
    READ_REPLY_LEN,
    READ_REPLY_PLAIN,
    REPLY_TYPES,
    REQUEST_TYPES,
    RESULT_SHARE_FRAME,
    RESULT_SHARE_LEN,
    SHARE_FD,
    SHARE_READONLY,
    T_BYE,
    T_HELLO,
    T_INTERRUPT,
    T_INVALIDATE,
    T_INVALIDATE_ACK,
    T_READ,
    T_READ_BLOCK,
    T_READ_BLOCK_REPLY,
    T_READ_REPLY,
    T_WRITE,
    T_WRITE_BLOCK,
    T_WRITE_BLOCK_REPLY,
    T_WRITE_REPLY,
    WRITE_FRAME,
    WRITE_LEN,
    WRITE_REPLY_PLAIN,
    head_word,
    match_read,
    match_read_reply,
    match_write,
    match_write_reply,
    max_frame,
    request_priority,
    resolve_sub_priorities,
    unpack_block_request,
    unpack_interrupt,
    unpack_invalidate,
    unpack_invalidate_ack,
    unpack_read,
    unpack_read_reply,
    unpack_result_share,
    unpack_write,
)
from memexpose.link.hotpath import selected as _selected_hot_path
from memexpose.link.locking import lock_held
from memexpose.link.transport import (
    DONTWAIT,
    Cancellation,
    Channel,
    Transport,
    set_socket_timeouts,
    wait_readable,
)
from memexpose.memory import MEMTX_DECODE_ERROR, MEMTX_ERROR, MEMTX_OK

if TYPE_CHECKING:
    from memexpose.link.exporter import Exporter
    from memexpose.link.importer import Importer
    from memexpose.link.interrupts import InterruptQueue
    from memexpose.link.stats import LinkCounters

__all__ = ["PeerInfo", "Session", "establish"]

log = logging.getLogger("memexpose.link")

_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))
_U64_MAX = (1 << 64) - 1
_LOCK_POLL = 0.02  # seconds between checks of "closed" while waiting for the machine lock
_EPOLLIN = select.EPOLLIN
_DECODE_ERROR = int(MEMTX_DECODE_ERROR)
# What the C server loop returns (_hotpath.c, ``SERVE_*``).
_SERVE_SLOW, _SERVE_LOCKED, _SERVE_BYTES, _SERVE_ANCILLARY, _SERVE_EOF = 1, 2, 3, 4, 5
_BYE_DISABLED = 0
_BYE_NAMES = {0: "the peer disabled the link", 1: "the peer shut down",
              2: "the peer saw a protocol error"}


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """What the HELLO exchange settled (P8, P9).

    Attributes:
        name: who the peer is (transport address, pid for UNIX sockets).
        version: the peer's protocol ``(major, minor)``.
        sub_priority: our sub-priority; the peer has the other one.
        exposed_size: bytes of the peer's window (0: it exports nothing).
        readonly: the peer's window is read-only.
        fd_passing: fds travel on this link (both sides, UNIX transport).
        block: the peer serves block transfers.
        max_block: the negotiated block size.
    """

    name: str
    version: tuple[int, int]
    sub_priority: int
    exposed_size: int
    readonly: bool
    fd_passing: bool
    block: bool
    max_block: int


def _read_hello(channel: Channel, want_channel: int, deadline: float,
                cancel: Cancellation | None) -> tuple[int, ...]:
    while True:
        frame = channel.next_frame()
        if frame is not None:
            length, ftype, _prio, _flags, _rid, pos = frame
            if ftype != T_HELLO:
                raise HandshakeError(f"expected HELLO, got frame type {ftype:#04x}")
            fields = codec.unpack_hello(channel.buf, pos + HEADER_SIZE)
            if fields[2] != want_channel:
                raise HandshakeError(f"HELLO for channel {fields[2]} on the "
                                     f"{'memory' if want_channel == 0 else 'interrupt'} channel")
            return fields
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise LinkTimeoutError(f"no HELLO from {channel.peer} in time")
        if wait_readable(channel.fd, cancel, remaining):
            channel.fill()


def establish(transport: Transport, *, role: int, exposed_size: int, readonly: bool,
              max_block: int, deadline: float,
              cancel: Cancellation | None = None) -> tuple[Channel, Channel, PeerInfo]:
    """Make both channels and exchange HELLOs (P8); return them and the settlement.

    The listening side accepts the memory channel, then the interrupt
    channel; the connecting side connects them in that order. The
    interrupt channel's HELLO repeats the other side's memory nonce, which
    pairs the two connections. Every wait (accept, connect retries, a
    HELLO) also watches ``cancel``.

    Raises:
        LinkError: no connection before ``deadline``.
        LinkClosedError: ``cancel`` was set (what was connected is closed).
        HandshakeError: the HELLOs do not agree.
    """
    caps = CAP_BLOCK | (CAP_FD_PASSING if transport.fd_passing else 0)
    nonce = secrets.randbits(64)
    flags = codec.HELLO_READONLY if readonly else 0
    limit = max_frame(max_block)
    mem_sock = transport._connect_or_accept(deadline, cancel)
    peer = transport.peer_name(mem_sock)
    mem = Channel(mem_sock, fd_passing=transport.fd_passing, peer=peer, frame_limit=limit)
    irq: Channel | None = None
    try:
        set_socket_timeouts(mem_sock, 1.0, max(0.01, deadline - time.monotonic()))
        mem_sock.sendall(codec.encode_message(codec.Hello(CHANNEL_MEMORY, role, caps, max_block,
                                                          nonce, exposed_size, flags)))
        (major, minor, _ch, peer_role, peer_flags, peer_caps, peer_block, peer_nonce,
         peer_exposed) = _read_hello(mem, CHANNEL_MEMORY, deadline, cancel)
        mine, _theirs = resolve_sub_priorities(role, nonce, peer_role, peer_nonce)
        irq_sock = transport._connect_or_accept(deadline, cancel)
        irq = Channel(irq_sock, fd_passing=False, peer=peer, frame_limit=limit)
        set_socket_timeouts(irq_sock, 1.0, max(0.01, deadline - time.monotonic()))
        hello_irq = codec.encode_message(codec.Hello(CHANNEL_INTERRUPT, role, caps, max_block,
                                                     peer_nonce, exposed_size, flags))
        if not transport.listen:
            irq_sock.sendall(hello_irq)
        echoed = _read_hello(irq, CHANNEL_INTERRUPT, deadline, cancel)[7]
        if echoed != nonce:
            raise HandshakeError("the interrupt channel belongs to another memory channel "
                                 f"(nonce {echoed:#x}, ours {nonce:#x})")
        if transport.listen:
            irq_sock.sendall(hello_irq)
    except BaseException as exc:
        mem.close()
        if irq is not None:
            irq.close()
        if isinstance(exc, ProtocolError) and exc.peer is None:
            raise type(exc)(str(exc), peer=peer) from exc
        if isinstance(exc, OSError):
            raise LinkError(f"handshake with {peer} failed: {exc}") from exc
        raise
    block = min(max_block, peer_block)
    mem.frame_limit = irq.frame_limit = max_frame(block)
    info = PeerInfo(
        name=peer,
        version=(major, minor),
        sub_priority=mine,
        exposed_size=peer_exposed,
        readonly=bool(peer_flags & codec.HELLO_READONLY),
        fd_passing=bool(transport.fd_passing and peer_caps & CAP_FD_PASSING),
        block=bool(peer_caps & CAP_BLOCK),
        max_block=block,
    )
    return mem, irq, info


class Session:
    """One connected link between this machine and a peer.

    Args:
        name: the endpoint name, for messages and thread names.
        mem, irq: the connected channels (from ``establish``).
        info: the HELLO settlement.
        lock: the machine lock.
        exporter: serves the peer's requests (None: refuse them all).
        importer: forwards our window's accesses (None: nothing imported).
        irq_queue: where received interrupts go.
        counters: statistics.
        timeout: seconds any single wait may take.
        on_close: called once, from the thread that saw the failure (no lock
            held), with the error that ended the link.

    Invariants (machine lock held for all of them):
        * ``_waits`` lists the priorities of the open waits, innermost last,
          strictly increasing (P10: a nested wait only starts while serving
          a frame that outranks the enclosing wait);
        * ``_pending`` maps the id of each open wait to the reply it expects;
          ``_replies`` holds replies read for a wait that is not innermost;
        * ``_deferred`` holds requests read while a wait of equal or higher
          priority was open, oldest first; none holds an fd;
        * the memory socket is armed in the server's epoll iff no wait is open;
        * ``_level_due``: a queue level change may be unreported; while it
          is True the wake pipe holds a byte or the server thread is on its
          way to the machine lock, and it reports the level next.
    """

    def __init__(self, *, name: str, mem: Channel, irq: Channel, info: PeerInfo,
                 lock: threading.RLock, exporter: Exporter | None, importer: Importer | None,
                 irq_queue: InterruptQueue, counters: LinkCounters, timeout: float,
                 on_close: Callable[[Session, BaseException], None]) -> None:
        self.name = name
        self.info = info
        self.peer = info.name
        self._mem = mem
        self._irq = irq
        self._lock = lock
        self._exporter = exporter
        self._importer = importer
        self._irqq = irq_queue
        self._counters = counters
        self._timeout = timeout
        self._on_close = on_close
        sub = info.sub_priority
        self._acc_prio = request_priority(ACCESS_CLASS, sub)
        self._inv_prio = request_priority(INVALIDATE_CLASS, sub)
        self._peer_acc_prio = request_priority(ACCESS_CLASS, 1 - sub)
        self._peer_inv_prio = request_priority(INVALIDATE_CLASS, 1 - sub)
        # Hot path: first header words of the plain frames (codec.head_word).
        self._rr_head = head_word(T_READ_REPLY, self._acc_prio)
        self._wr_head = head_word(T_WRITE_REPLY, self._acc_prio)
        self._peer_rr_head = head_word(T_READ_REPLY, self._peer_acc_prio)
        self._peer_wr_head = head_word(T_WRITE_REPLY, self._peer_acc_prio)
        self._peer_read_head = head_word(T_READ, self._peer_acc_prio, FLAG_WANT_SHARE)
        self._peer_write_head = head_word(T_WRITE, self._peer_acc_prio, FLAG_WANT_SHARE)
        self._send = mem.sock.sendall
        self._memfd = mem.fd
        self._max_block = info.max_block
        self._fd_passing = info.fd_passing
        self._next_id = 1
        self._waits: list[int] = []
        self._pending: dict[int, tuple[int, int, int]] = {}
        self._replies: dict[int, object] = {}
        self._deferred: deque[tuple[bytes, int, int, int, int, int]] = deque()
        self._in_commit = 0
        self._draining = False
        self._closed = False
        self._closing = False
        self._close_done = threading.Event()
        self._bye_seen = False
        self._torn_down = False
        self._level_due = False
        self._error: BaseException | None = None
        self._close_lock = threading.Lock()
        self._irq_send_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._ep = select.epoll()
        self._ep.register(self._wake_r, _EPOLLIN)
        self._ep.register(mem.fd, _EPOLLIN)
        self._ep_modify = self._ep.modify
        self._armed = True
        # The C hot path (hotpath.py), or None for the Python one.
        native = _selected_hot_path()
        self._native = native
        self._hot_request = native.request if native is not None else None
        # First header words of our READ and WRITE (flags go in bits 48..63).
        self._read_w0 = head_word(T_READ, self._acc_prio)
        self._write_w0 = head_word(T_WRITE, self._acc_prio)
        self._ep_fd = self._ep.fileno()
        # A blocked receive wakes every quarter timeout to check its deadline.
        self._slice = max(0.01, timeout / 4)
        set_socket_timeouts(mem.sock, self._slice, timeout)
        set_socket_timeouts(irq.sock, None, timeout)
        self._server: threading.Thread | None = None
        self._irq_thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        """Start the server and interrupt threads (joined by ``join``)."""
        self._server = threading.Thread(target=self._server_loop, name=f"{self.name}-server",
                                        daemon=True)
        self._irq_thread = threading.Thread(target=self._irq_loop, name=f"{self.name}-irq",
                                            daemon=True)
        self._server.start()
        self._irq_thread.start()

    @property
    def closed(self) -> bool:
        """Whether the link has ended (for whatever reason)."""
        return self._closed

    @property
    def error(self) -> BaseException | None:
        """What ended the link (None while open, or after a local close)."""
        return self._error

    def close(self, error: BaseException | None = None) -> None:
        """End the link from any thread; idempotent.

        Wakes every thread blocked on the link (they see EOF); waiting
        accesses complete with ``MEMTX_ERROR``. The memory map is not
        touched here: ``teardown`` does that under the machine lock.
        """
        with self._close_lock:
            closing = self._closing
            self._closing = True
        if closing:
            # Another thread is closing: return when it is done, so a caller
            # that saw the link fail also sees the endpoint's new state.
            self._close_done.wait(5.0)
            return
        self._error = error
        if error is not None:
            if self._bye_seen:
                log.info("link %s: closed: %s", self.name, error)
            else:
                self._counters.link_errors += 1
                log.warning("link %s: closed: %s", self.name, error)
        # The endpoint's state changes before anyone can see ``closed``.
        self._on_close(self, error if error is not None else LinkClosedError("disabled"))
        self._closed = True
        self._mem.shutdown()
        self._irq.shutdown()
        self.kick()
        self._close_done.set()

    def _fail(self, exc: BaseException) -> None:
        if isinstance(exc, ProtocolError) and exc.peer is None:
            named = type(exc)(str(exc), peer=self.peer)
            named.__cause__ = exc
            exc = named
        elif isinstance(exc, BlockingIOError | TimeoutError):
            named = LinkTimeoutError(f"{self.peer} did not take our data within "
                                     f"{self._timeout} s", timeout=self._timeout)
            named.__cause__ = exc
            exc = named
        elif isinstance(exc, OSError):
            named = LinkClosedError(f"link to {self.peer} failed: {exc}")
            named.__cause__ = exc
            exc = named
        self.close(exc)

    def kick(self) -> None:
        """Wake the server thread (deferred work, revoked mappings, closing)."""
        with self._close_lock:
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"\0")
                except OSError:
                    pass

    def send_bye(self, reason: int = _BYE_DISABLED) -> None:
        """Tell the peer we are leaving, on both channels (best effort). Machine lock held.

        Whichever of the peer's threads reads first reports the reason.
        """
        assert lock_held(self._lock)
        if self._closed:
            return
        frame = codec.BYE_FRAME.pack(codec.BYE_LEN, T_BYE, 0, 0, 0, reason, 0)
        try:
            self._mem.sock.sendall(frame)
        except OSError:
            pass
        with self._irq_send_lock:
            try:
                self._irq.sock.sendall(frame)
            except OSError:
                pass

    def teardown(self) -> None:
        """Drop direct mappings, stop exporting, close the sockets. Machine lock held.

        A queue level change not yet reported is reported here. Idempotent;
        runs outside any memory commit (the server thread when
        the link failed, or ``disable``).
        """
        assert lock_held(self._lock)
        if self._torn_down:
            return
        self._torn_down = True
        if not self._closed:
            self.close()
        if self._importer is not None:
            self._importer.detach(self)
        if self._exporter is not None:
            self._exporter.detach(self)
        self._deferred.clear()
        self._replies.clear()
        self._mem.close()
        with self._irq_send_lock:
            self._irq.close()
        if self._level_due:
            # An arrival the server thread had no time to report: the entry
            # stays in the queue (a device may still pop it), so its level does.
            self._report_level()

    def discard(self) -> None:
        """Release a session that was never started nor attached; any thread, no lock.

        For a connect that was cancelled between the handshake and
        installing the link: the peer sees EOF. Idempotent.
        """
        assert self._server is None, "discard() is for a session never started"
        self._closed = True
        self._torn_down = True
        self._mem.close()
        self._irq.close()
        self._release_os()

    def join(self, timeout: float = 5.0) -> None:
        """Wait for both threads to end (the calling thread excepted).

        The server thread releases the epoll and wake pipe as it exits; a
        session that never started releases them here.
        """
        me = threading.current_thread()
        for thread in (self._server, self._irq_thread):
            if thread is not None and thread is not me:
                thread.join(timeout)
        if self._server is None:
            self._release_os()

    def _release_os(self) -> None:
        """Close the epoll and the wake pipe; idempotent, any thread."""
        with self._close_lock:
            if self._wake_r < 0:
                return
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = -1
        self._ep.close()
        os.close(wake_r)
        os.close(wake_w)

    # -- requests (hot path; machine lock held) ---------------------------------

    def request_read(self, addr: int, size: int, attrs: int, flags: int) -> tuple[int, int]:
        """Forward a READ; return ``(value, result)``; ``MEMTX_ERROR`` if the link fails."""
        counters = self._counters
        counters.forwarded_reads += 1
        if self._closed:
            return 0, MEMTX_ERROR
        rid = self._next_id
        self._next_id = rid + 1
        mem = self._mem
        if self._waits or self._deferred or self._draining or mem.start != mem.end:
            reply = self._request(READ_FRAME.pack(READ_LEN, T_READ, self._acc_prio, flags, rid,
                                                  addr, size, 0, 0, attrs),
                                  rid, self._acc_prio, T_READ_REPLY, size)
        else:
            # Fast path: the outermost wait, nothing buffered or put off. If the
            # one frame the next receive brings is the plain reply, it is all
            # there is to do; anything else goes to ``_wait`` (P10 rule 2).
            hot = self._hot_request
            if hot is not None:
                # In C: disarm, send, receive, match, re-arm (hotpath.py).
                self._armed = False
                try:
                    got = hot(mem, self._memfd, self._ep_fd, mem.fd_passing, mem.view,
                              self._read_w0 | flags << 48, rid, addr, size | attrs << 32, None,
                              READ_REPLY_LEN, self._rr_head, _MASKS[size])
                    if got.__class__ is not tuple:
                        got = mem.received_natively(got)
                except (ProtocolError, LinkError, OSError) as exc:
                    self._fail(exc)
                    return 0, MEMTX_ERROR
                if got.__class__ is tuple:
                    self._armed = True
                    counters.forwarded_bytes += size
                    return got  # type: ignore[return-value]
                n = got
            else:
                if self._armed:
                    self._disarm()
                try:
                    self._send(READ_FRAME.pack(READ_LEN, T_READ, self._acc_prio, flags, rid, addr,
                                               size, 0, 0, attrs))
                    n = mem.fill_empty()
                except (ProtocolError, LinkError, OSError) as exc:
                    self._fail(exc)
                    return 0, MEMTX_ERROR
                if n == READ_REPLY_LEN and not mem.fd_records:
                    reply = match_read_reply(mem.buf, 0, self._rr_head, rid, size)
                    if reply is not None:
                        mem.start = READ_REPLY_LEN
                        self._arm()
                        counters.forwarded_bytes += size
                        return reply
            reply = self._wait(rid, self._acc_prio, T_READ_REPLY, size, not n)
        if reply is None:
            return 0, MEMTX_ERROR
        counters.forwarded_bytes += size
        return reply  # type: ignore[return-value]

    def request_write(self, addr: int, value: int, size: int, attrs: int, flags: int) -> int:
        """Forward a WRITE; return the result; ``MEMTX_ERROR`` if the link fails."""
        counters = self._counters
        counters.forwarded_writes += 1
        if self._closed:
            return MEMTX_ERROR
        rid = self._next_id
        self._next_id = rid + 1
        value &= _MASKS[size]
        mem = self._mem
        if self._waits or self._deferred or self._draining or mem.start != mem.end:
            reply = self._request(WRITE_FRAME.pack(WRITE_LEN, T_WRITE, self._acc_prio, flags,
                                                   rid, addr, value, size, 0, 0, attrs),
                                  rid, self._acc_prio, T_WRITE_REPLY, size)
        else:
            # Fast path, as in ``request_read``.
            hot = self._hot_request
            if hot is not None:
                self._armed = False
                try:
                    got = hot(mem, self._memfd, self._ep_fd, mem.fd_passing, mem.view,
                              self._write_w0 | flags << 48, rid, addr, value,
                              size | attrs << 32, RESULT_SHARE_LEN, self._wr_head, 0)
                    if got.__class__ is not tuple:
                        got = mem.received_natively(got)
                except (ProtocolError, LinkError, OSError) as exc:
                    self._fail(exc)
                    return MEMTX_ERROR
                if got.__class__ is tuple:
                    self._armed = True
                    counters.forwarded_bytes += size
                    return got[1]  # type: ignore[no-any-return]
                n = got
            else:
                if self._armed:
                    self._disarm()
                try:
                    self._send(WRITE_FRAME.pack(WRITE_LEN, T_WRITE, self._acc_prio, flags, rid,
                                                addr, value, size, 0, 0, attrs))
                    n = mem.fill_empty()
                except (ProtocolError, LinkError, OSError) as exc:
                    self._fail(exc)
                    return MEMTX_ERROR
                if n == RESULT_SHARE_LEN and not mem.fd_records:
                    reply = match_write_reply(mem.buf, 0, self._wr_head, rid)
                    if reply is not None:
                        mem.start = RESULT_SHARE_LEN
                        self._arm()
                        counters.forwarded_bytes += size
                        return reply
            reply = self._wait(rid, self._acc_prio, T_WRITE_REPLY, size, not n)
        if reply is None:
            return MEMTX_ERROR
        counters.forwarded_bytes += size
        return reply  # type: ignore[return-value]

    def _request(self, frame: bytes, rid: int, prio: int, rtype: int,
                 extra: int) -> object | None:
        """Send a request frame and wait for its reply (any wait depth); None if the link ends."""
        if not self._waits and self._armed:
            self._disarm()
        try:
            self._send(frame)
        except OSError as exc:
            self._fail(exc)
            return None
        return self._wait(rid, prio, rtype, extra)

    def request_read_block(self, addr: int, out: memoryview, attrs: int, flags: int) -> int:
        """Forward a READ_BLOCK of ``len(out)`` bytes into ``out``; return the result."""
        counters = self._counters
        counters.forwarded_block_reads += 1
        count = len(out)
        if self._closed:
            return MEMTX_ERROR
        rid = self._next_id
        self._next_id = rid + 1
        reply = self._request(BLOCK_REQ_FRAME.pack(BLOCK_REQ_LEN, T_READ_BLOCK, self._acc_prio,
                                                   flags, rid, addr, count, attrs),
                              rid, self._acc_prio, T_READ_BLOCK_REPLY, count)
        if reply is None:
            return MEMTX_ERROR
        result, data = reply  # type: ignore[misc]
        out[:] = data
        counters.forwarded_bytes += count
        return result  # type: ignore[no-any-return]

    def request_write_block(self, addr: int, data: memoryview, attrs: int, flags: int) -> int:
        """Forward a WRITE_BLOCK of ``data``; return the result."""
        counters = self._counters
        counters.forwarded_block_writes += 1
        count = len(data)
        if self._closed:
            return MEMTX_ERROR
        rid = self._next_id
        self._next_id = rid + 1
        frame = BLOCK_REQ_FRAME.pack(BLOCK_REQ_LEN + count, T_WRITE_BLOCK, self._acc_prio, flags,
                                     rid, addr, count, attrs) + bytes(data)
        reply = self._request(frame, rid, self._acc_prio, T_WRITE_BLOCK_REPLY, count)
        if reply is None:
            return MEMTX_ERROR
        counters.forwarded_bytes += count
        return reply  # type: ignore[return-value]

    def request_invalidate(self, start: int, size: int) -> bool:
        """Send INVALIDATE and wait for the ACK; return whether it came.

        Called by the exporter's listener inside a memory commit.
        """
        assert lock_held(self._lock)
        if self._closed:
            return False
        rid = self._next_id
        self._next_id = rid + 1
        prio = self._inv_prio
        self._in_commit += 1
        try:
            return self._request(INVALIDATE_FRAME.pack(INVALIDATE_LEN, T_INVALIDATE, prio, 0, rid,
                                                       start, size),
                                 rid, prio, T_INVALIDATE_ACK, 0) is not None
        finally:
            self._in_commit -= 1

    def send_interrupt(self, itype: int, data: bytes) -> bool:
        """Send an INTERRUPT (``data`` exactly 128 bytes); False if the link is down.

        Any thread; does not need the machine lock.
        """
        if self._closed:
            return False
        frame = INTERRUPT_FRAME.pack(INTERRUPT_LEN, T_INTERRUPT, 0, 0, 0, itype, data)
        with self._irq_send_lock:
            if self._closed:
                return False
            try:
                self._irq.sock.sendall(frame)
            except OSError as exc:
                self._fail(exc)
                return False
        self._counters.interrupts_sent += 1
        return True

    # -- waiting -----------------------------------------------------------------

    def _disarm(self) -> None:
        try:
            self._ep_modify(self._memfd, 0)
        except (OSError, ValueError):
            pass
        self._armed = False

    def _arm(self) -> None:
        try:
            self._ep_modify(self._memfd, _EPOLLIN)
        except (OSError, ValueError):
            pass
        self._armed = True

    def _wait(self, rid: int, prio: int, rtype: int, extra: int,
              waited: bool = False) -> object | None:
        """Read and handle frames until the reply to ``rid`` comes; None if the link ends.

        ``waited``: the caller's own receive for this request already timed
        out once (one receive slice of the deadline is spent).
        """
        waits = self._waits
        top = not waits
        waits.append(prio)
        self._pending[rid] = (rtype, prio, extra)
        mem = self._mem
        # Set at the first receive that times out (keeps the fast path lean).
        deadline = time.monotonic() + self._timeout - self._slice if waited else 0.0
        try:
            while True:
                if self._closed:
                    return None
                if self._deferred and self._serve_deferred_above(prio):
                    continue
                if self._replies:
                    got = self._replies.pop(rid, None)
                    if got is not None:
                        return got
                frame = mem.next_frame()
                if frame is None:
                    if not mem.fill():
                        # One receive slice has passed already.
                        now = time.monotonic()
                        if not deadline:
                            deadline = now + self._timeout - self._slice
                        elif now >= deadline:
                            raise LinkTimeoutError(
                                f"{self.peer} did not answer request {rid} within "
                                f"{self._timeout} s", timeout=self._timeout)
                    continue
                length, ftype, fprio, flags, frid, pos = frame
                if ftype in REPLY_TYPES:
                    reply = self._take_reply(length, ftype, fprio, frid, pos)
                    if frid == rid:
                        return reply
                    self._replies[frid] = reply
                elif ftype in REQUEST_TYPES:
                    self._check_request(ftype, fprio, pos, length)
                    if fprio > prio:
                        self._serve(length, ftype, fprio, flags, frid, mem.buf, pos)
                    else:
                        self._deferred.append((bytes(mem.buf[pos:pos + length]), length, ftype,
                                               fprio, flags, frid))
                        self._counters.deferred_requests += 1
                else:
                    self._other_frame(ftype, mem.buf, pos)
        except (ProtocolError, LinkError, OSError) as exc:
            self._fail(exc)
            return None
        finally:
            waits.pop()
            del self._pending[rid]
            if top:
                if self._deferred or mem.start != mem.end or self._closed or self._draining:
                    self._after_top_wait()
                else:
                    self._arm()

    def _after_top_wait(self) -> None:
        """The outermost wait ended: handle what it left, then re-arm the server."""
        if self._draining or self._closed:
            return
        self._draining = True
        try:
            mem = self._mem
            while True:
                frame = mem.next_frame()
                if frame is None:
                    break
                length, ftype, fprio, flags, frid, pos = frame
                if ftype in REQUEST_TYPES:
                    self._check_request(ftype, fprio, pos, length)
                    self._deferred.append((bytes(mem.buf[pos:pos + length]), length, ftype,
                                           fprio, flags, frid))
                elif ftype in REPLY_TYPES:
                    raise ProtocolError(f"reply (type {ftype:#04x}) to request {frid}, which "
                                        "nobody is waiting for")
                else:
                    self._other_frame(ftype, mem.buf, pos)
            if self._deferred:
                if self._in_commit:
                    self.kick()
                else:
                    while self._deferred and not self._closed:
                        frame_bytes, length, ftype, fprio, flags, frid = self._deferred.popleft()
                        self._serve(length, ftype, fprio, flags, frid, frame_bytes, 0)
        except (ProtocolError, LinkError, OSError) as exc:
            self._fail(exc)
        finally:
            self._draining = False
            if not self._closed:
                self._arm()

    def _serve_deferred_above(self, prio: int) -> bool:
        """Serve the oldest deferred request that outranks ``prio``; whether one was."""
        for i, entry in enumerate(self._deferred):
            if entry[3] > prio:
                del self._deferred[i]
                frame_bytes, length, ftype, fprio, flags, frid = entry
                self._serve(length, ftype, fprio, flags, frid, frame_bytes, 0)
                return True
        return False

    def _check_request(self, ftype: int, fprio: int, pos: int, length: int) -> None:
        """Refuse a request of the wrong priority, or one an fd came with (P5)."""
        expected = self._peer_inv_prio if ftype == T_INVALIDATE else self._peer_acc_prio
        if fprio != expected:
            raise ProtocolError(f"request type {ftype:#04x} with priority {fprio}; the peer's "
                                f"priority for it is {expected} (P10)")
        if self._mem.carries_fd(pos, length):
            raise ProtocolError(f"an fd came with request type {ftype:#04x}, which announces "
                                "none")

    def _other_frame(self, ftype: int, buf: bytes | bytearray, pos: int) -> None:
        if ftype == T_BYE:
            reason = codec.unpack_bye(buf, pos + HEADER_SIZE)
            self._bye_seen = True
            raise LinkClosedError(f"{self.peer}: {_BYE_NAMES.get(reason, f'BYE {reason}')}")
        raise ProtocolError(f"frame type {ftype:#04x} does not belong on the memory channel")

    def _take_reply(self, length: int, ftype: int, fprio: int, frid: int, pos: int) -> object:
        """Check a reply against its request; map a share; return what the waiter gets."""
        expected = self._pending.get(frid)
        if expected is None or expected[0] != ftype or expected[1] != fprio:
            if expected is None:
                raise ProtocolError(f"reply type {ftype:#04x} to request {frid}, which nobody "
                                    "is waiting for")
            raise ProtocolError(f"reply type {ftype:#04x} prio {fprio} to request {frid}, "
                                f"which expects type {expected[0]:#04x} prio {expected[1]}")
        buf = self._mem.buf
        off = pos + HEADER_SIZE
        if ftype == T_READ_REPLY:
            result, value, kind, start, size, fdo, ro = unpack_read_reply(buf, off)
            if value & ~_MASKS[expected[2]]:
                raise ProtocolError(f"READ_REPLY value {value:#x} is wider than the "
                                    f"{expected[2]}-byte read")
            if kind:
                self._take_share(result, start, size, fdo, ro, pos)
            elif self._mem.carries_fd(pos, length):
                raise ProtocolError("an fd came with a READ_REPLY that announces none")
            return value, result
        if ftype == T_INVALIDATE_ACK:
            return unpack_invalidate_ack(buf, off)
        result, count, kind, start, size, fdo, ro = unpack_result_share(buf, off, ftype)
        if kind:
            self._take_share(result, start, size, fdo, ro, pos)
        elif self._mem.carries_fd(pos, length):
            raise ProtocolError(f"an fd came with reply type {ftype:#04x}, which announces none")
        if ftype == T_READ_BLOCK_REPLY:
            if count != expected[2] or length - RESULT_SHARE_LEN != count:
                raise ProtocolError(f"READ_BLOCK_REPLY with {count} bytes (frame "
                                    f"{length - RESULT_SHARE_LEN}) for a {expected[2]}-byte read")
            data_at = pos + RESULT_SHARE_LEN
            return result, bytes(buf[data_at:data_at + count])
        return result

    def _take_share(self, result: int, start: int, size: int, fdo: int, readonly: bool,
                    pos: int) -> None:
        if not self.info.fd_passing:
            raise ProtocolError("a reply shares an fd on a link without fd passing")
        fd = self._mem.take_fd(pos)
        if result != MEMTX_OK or self._importer is None:
            os.close(fd)
            raise ProtocolError("a reply shares an fd for a failed access, or to a side "
                                "without an importer")
        self._importer.map_share(start, size, fdo, readonly, fd)

    # -- serving (machine lock held) --------------------------------------------------

    def _serve(self, length: int, ftype: int, fprio: int, flags: int, rid: int,
               buf: bytes | bytearray, pos: int) -> None:
        """Serve one request from the peer and send its reply."""
        off = pos + HEADER_SIZE
        if ftype == T_READ:
            addr, size, attrs = unpack_read(buf, off)
            self._serve_read(rid, flags, addr, size, attrs)
            return
        if ftype == T_WRITE:
            addr, value, size, attrs = unpack_write(buf, off)
            self._serve_write(rid, flags, addr, value, size, attrs)
            return
        want = flags and self._fd_passing
        exporter = self._exporter
        share = None
        if ftype == T_INVALIDATE:
            start, size = unpack_invalidate(buf, off)
            self._counters.invalidations_received += 1
            try:
                unmapped = self._importer.invalidate(start, size) if self._importer else 0
            except Exception as exc:
                # Never acknowledge what was not unmapped: end the link instead
                # (teardown drops every mapping).
                log.exception("link %s: INVALIDATE %#x+%#x failed", self.name, start, size)
                raise LinkError(f"could not unmap window {start:#x}+{size:#x}: {exc}") from exc
            frame = INVALIDATE_ACK_FRAME.pack(INVALIDATE_ACK_LEN, T_INVALIDATE_ACK, fprio, 0,
                                              rid, unmapped, 0)
        elif ftype == T_READ_BLOCK:
            addr, count, attrs = unpack_block_request(buf, off, length, ftype,
                                                      self._max_block)
            reply = bytearray(RESULT_SHARE_LEN + count)
            if exporter is None:
                result = _DECODE_ERROR
            else:
                try:
                    result, share = exporter.serve_read_block(
                        addr, memoryview(reply)[RESULT_SHARE_LEN:], attrs, want)
                except Exception:  # noqa: BLE001
                    log.exception("link %s: serving READ_BLOCK %#x+%d", self.name, addr,
                                  count)
                    result, share = MEMTX_ERROR, None
            RESULT_SHARE_FRAME.pack_into(reply, 0, RESULT_SHARE_LEN + count,
                                         T_READ_BLOCK_REPLY, fprio, 0, rid, int(result),
                                         count, *_share_block(share))
            frame = reply
        else:  # T_WRITE_BLOCK
            addr, count, attrs = unpack_block_request(buf, off, length, ftype,
                                                      self._max_block)
            data = bytes(buf[pos + BLOCK_REQ_LEN:pos + BLOCK_REQ_LEN + count])
            if exporter is None:
                result = _DECODE_ERROR
            else:
                try:
                    result, share = exporter.serve_write_block(addr, data, attrs, want)
                except Exception:  # noqa: BLE001
                    log.exception("link %s: serving WRITE_BLOCK %#x+%d", self.name, addr,
                                  count)
                    result, share = MEMTX_ERROR, None
            frame = RESULT_SHARE_FRAME.pack(RESULT_SHARE_LEN, T_WRITE_BLOCK_REPLY, fprio, 0,
                                            rid, int(result), 0, *_share_block(share))
        if self._closed:
            return
        if share is not None:
            self._mem.send_with_fd(frame, share[4])
        else:
            self._mem.sock.sendall(frame)

    def _serve_read(self, rid: int, flags: int, addr: int, size: int, attrs: int) -> None:
        """Serve a READ whose frame was checked (P5) and send the reply."""
        exporter = self._exporter
        if exporter is None:
            value, result, share = 0, _DECODE_ERROR, None
        else:
            try:
                value, result, share = exporter.serve_read(addr, size, attrs,
                                                           flags and self._fd_passing)
            except Exception:  # noqa: BLE001 - a device bug must not kill the link
                log.exception("link %s: serving READ %#x+%d", self.name, addr, size)
                value, result, share = 0, MEMTX_ERROR, None
        if self._closed:
            return
        if share is None:
            self._send(READ_REPLY_PLAIN.pack(self._peer_rr_head, rid, result, value))
        else:
            self._mem.send_with_fd(READ_REPLY_FRAME.pack(
                READ_REPLY_LEN, T_READ_REPLY, self._peer_acc_prio, 0, rid, result, 0, value,
                *_share_block(share)), share[4])

    def _serve_write(self, rid: int, flags: int, addr: int, value: int, size: int,
                     attrs: int) -> None:
        """Serve a WRITE whose frame was checked (P5) and send the reply."""
        exporter = self._exporter
        if exporter is None:
            result, share = _DECODE_ERROR, None
        else:
            try:
                result, share = exporter.serve_write(addr, value, size, attrs,
                                                     flags and self._fd_passing)
            except Exception:  # noqa: BLE001
                log.exception("link %s: serving WRITE %#x+%d", self.name, addr, size)
                result, share = MEMTX_ERROR, None
        if self._closed:
            return
        if share is None:
            self._send(WRITE_REPLY_PLAIN.pack(self._peer_wr_head, rid, result))
        else:
            self._mem.send_with_fd(RESULT_SHARE_FRAME.pack(
                RESULT_SHARE_LEN, T_WRITE_REPLY, self._peer_acc_prio, 0, rid, result, 0,
                *_share_block(share)), share[4])

    # -- threads ---------------------------------------------------------------------

    def _acquire(self) -> bool:
        """Take the machine lock unless the link closes first (no lock held on False)."""
        lock = self._lock
        while not lock.acquire(timeout=_LOCK_POLL):
            if self._closed:
                return False
        return True

    def _server_loop(self) -> None:
        ep = self._ep
        wake = self._wake_r
        lock = self._lock
        mem = self._mem
        memfd = mem.fd
        importer = self._importer
        read_head = self._peer_read_head
        write_head = self._peer_write_head
        native_serve, serve_args = self._native_serve_call()
        try:
            while not self._closed:
                locked = False
                got = None  # what the C loop left for Python, with the lock held
                if native_serve is not None:
                    try:
                        got = native_serve(*serve_args)
                    except OSError as exc:
                        self._fail(exc)
                        break
                    locked = got != _SERVE_SLOW
                    if not locked:
                        try:
                            os.read(wake, 4096)
                        except OSError:
                            pass
                else:
                    try:
                        events = ep.poll()
                    except InterruptedError:
                        continue
                    if len(events) != 1 or events[0][0] != memfd:
                        for fd, _ in events:
                            if fd == wake:
                                try:
                                    os.read(wake, 4096)
                                except OSError:
                                    pass
                if self._closed:
                    if locked:
                        lock.release()
                    break
                if not locked and not lock.acquire(False) and not self._acquire():
                    break
                try:
                    received = self._take_native(got) if locked else 0
                    if self._closed:
                        break
                    if importer is not None and importer._zombies:
                        importer.reap()
                    if self._level_due:
                        self._report_level()
                    while self._deferred and not self._closed:
                        frame_bytes, length, ftype, fprio, flags, frid = self._deferred.popleft()
                        self._serve(length, ftype, fprio, flags, frid, frame_bytes, 0)
                    if not self._waits and not self._closed:
                        if received:
                            n = received
                        elif mem.start != mem.end:
                            n = 0
                            mem.fill(DONTWAIT)
                        else:
                            n = mem.fill_empty(DONTWAIT)
                        if n and not mem.fd_records:
                            # Fast path: the receive brought exactly one access
                            # request, and a match passed every check of P5.
                            if n == READ_LEN:
                                req = match_read(mem.buf, 0, read_head)
                                if req is not None:
                                    mem.start = READ_LEN
                                    self._serve_read(*req)
                                    continue
                            elif n == WRITE_LEN:
                                wreq = match_write(mem.buf, 0, write_head)
                                if wreq is not None:
                                    mem.start = WRITE_LEN
                                    self._serve_write(*wreq)
                                    continue
                        self._serve_buffered()
                except (ProtocolError, LinkError, OSError) as exc:
                    self._fail(exc)
                finally:
                    lock.release()
        except BaseException as exc:  # noqa: BLE001 - never die silently
            log.exception("link %s: server thread failed", self.name)
            self._fail(exc)
        finally:
            self._finish()
            self._release_os()

    def _native_serve_call(self) -> tuple[Callable[..., object] | None, tuple[object, ...]]:
        """The C server loop (``_hotpath.serve``) and its arguments, or ``(None, ())``."""
        native = self._native
        if native is None:
            return None, ()
        mem = self._mem
        lock = self._lock
        exporter = self._exporter
        return native.serve, (
            self._ep_fd, mem.fd, mem.fd_passing, mem.view, lock.acquire, lock.release,
            self, mem, exporter,
            exporter.address_space if exporter is not None else None,
            self._counters,
            exporter.base if exporter is not None else 0,
            # A window of all 2**64 bytes: C checks against 2**64 - 1 (the
            # access that ends exactly at the top goes to Python).
            min(exporter.size, _U64_MAX) if exporter is not None else 0,
            exporter.readonly if exporter is not None else True,
            self._fd_passing, self._peer_read_head, self._peer_write_head,
            self._peer_rr_head, self._peer_wr_head)

    def _take_native(self, got: object) -> int:
        """Buffer what the C server loop received; return the byte count. Lock held.

        ``got`` is ``SERVE_LOCKED`` (nothing), ``SERVE_EOF``, ``(SERVE_BYTES,
        n)`` or ``(SERVE_ANCILLARY, n, [n, ancillary, flags])``.

        Raises:
            LinkClosedError: the peer closed the connection.
            ProtocolError: ancillary data that is not a clean list of fds.
        """
        if got == _SERVE_EOF:
            raise LinkClosedError(f"{self.peer} closed the connection")
        if got.__class__ is not tuple:
            return 0
        if got[0] == _SERVE_ANCILLARY:  # type: ignore[index]
            return self._mem.received_natively(got[2])  # type: ignore[index]
        n: int = got[1]  # type: ignore[index]
        self._mem.end = n
        return n

    def _serve_buffered(self) -> None:
        """Serve every whole request buffered on the memory channel. Lock held."""
        mem = self._mem
        while not self._closed:
            frame = mem.next_frame()
            if frame is None:
                break
            length, ftype, fprio, flags, frid, pos = frame
            if ftype in REQUEST_TYPES:
                self._check_request(ftype, fprio, pos, length)
                self._serve(length, ftype, fprio, flags, frid, mem.buf, pos)
            elif ftype in REPLY_TYPES:
                raise ProtocolError(f"reply (type {ftype:#04x}) to request "
                                    f"{frid}, which nobody is waiting for")
            else:
                self._other_frame(ftype, mem.buf, pos)

    def _finish(self) -> None:
        """Thread exit after the link closed: tear down under the machine lock."""
        if self._torn_down:
            return
        lock = self._lock
        while not lock.acquire(timeout=_LOCK_POLL):
            if self._torn_down:
                return
        try:
            self.teardown()
        except Exception:  # noqa: BLE001
            log.exception("link %s: teardown failed", self.name)
        finally:
            lock.release()

    def _irq_loop(self) -> None:
        """Receive interrupts into the queue; have the level reported under the machine lock.

        The thread never waits for the machine lock, so a sender is never
        held up by a busy receiver: it only tries the lock. When the lock is
        busy it hands the report to the server thread (``_level_due`` and the
        wake pipe), which blocks on the lock and reports as soon as the
        holder releases it, and goes on draining the socket (the queue drops
        and counts overflow).
        """
        irq = self._irq
        queue = self._irqq
        lock = self._lock
        try:
            while not self._closed:
                frame = irq.next_frame()
                if frame is None:
                    irq.fill()
                    continue
                length, ftype, _prio, _flags, _rid, pos = frame
                if ftype != T_INTERRUPT:
                    if ftype == T_BYE:
                        self._other_frame(ftype, irq.buf, pos)
                    raise ProtocolError(f"frame type {ftype:#04x} on the interrupt channel")
                itype, data = unpack_interrupt(irq.buf, pos + HEADER_SIZE)
                queue.push(itype, data)
                if lock.acquire(blocking=False):
                    try:
                        self._report_level()
                    finally:
                        lock.release()
                elif not self._level_due:
                    # Set before the wake byte: the server thread clears it
                    # before it reads the queue, so no push goes unreported.
                    self._level_due = True
                    self.kick()
        except (ProtocolError, LinkError, OSError) as exc:
            if not self._closed:
                self._fail(exc)
        except BaseException as exc:  # noqa: BLE001
            log.exception("link %s: interrupt thread failed", self.name)
            self._fail(exc)

    def _report_level(self) -> None:
        """Report the queue level if it changed (``on_irq_level``). Machine lock held."""
        self._level_due = False
        try:
            self._irqq.update_level()
        except Exception:  # noqa: BLE001 - a device's IRQ hook failed
            log.exception("link %s: interrupt level callback failed", self.name)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (f"<Session {self.name!r} {state} peer={self.peer!r} "
                f"sub={self.info.sub_priority} waits={self._waits} "
                f"deferred={len(self._deferred)}>")


_NO_SHARE = (0, 0, 0, 0, 0, 0, 0)


def _share_block(share: tuple[int, int, int, bool, int] | None) -> tuple[int, ...]:
    if share is None:
        return _NO_SHARE
    start, size, fdo, readonly, _fd = share
    return SHARE_FD, SHARE_READONLY if readonly else 0, 0, 0, start, size, fdo
