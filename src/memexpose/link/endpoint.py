"""``MemexposeEndpoint``: one side of a memexpose link, as a device uses it.

A device (memexpose-pci, memexpose-platform) glues its register block to
an endpoint:

====================  ==================================================
register              endpoint call
====================  ==================================================
ENABLE write 1 / 0    ``enable_nowait()`` (or ``enable()``) / ``disable()``
ENABLE read           ``connected`` (``state`` says why not)
RECV read             ``pop_interrupt()`` into RX_TYPE / RX_DATA
SEND write            ``send_interrupt(TX_TYPE, TX_DATA)``
IRQ line              ``on_irq_level`` (True while the RX queue is non-empty)
BAR / window          ``window`` (a region to map)
====================  ==================================================

The endpoint owns an ``Exporter`` (what the peer may reach of our memory),
an ``Importer`` (our window onto the peer's), the interrupt queue, and, while
connected, a ``Session`` with its two threads.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable

from memexpose.errors import ConfigError, ConnectError, LinkStateError
from memexpose.link.codec import DEFAULT_MAX_BLOCK, INTERRUPT_DATA_SIZE, ROLE_ANY
from memexpose.link.exporter import Exporter, Exposure
from memexpose.link.importer import Importer
from memexpose.link.interrupts import INTERRUPT_QUEUE_SIZE, InterruptMessage, InterruptQueue
from memexpose.link.session import PeerInfo, Session, establish
from memexpose.link.stats import LinkCounters, LinkStatistics
from memexpose.link.transport import Transport
from memexpose.memory import MEMTXATTRS_UNSPECIFIED, MemoryRegion, MemTxAttrs, MemTxResult

__all__ = ["LinkState", "MemexposeEndpoint"]

_U64 = (1 << 64) - 1


class LinkState(enum.Enum):
    """Where an endpoint is in its life.

    DISABLED --enable--> CONNECTING --ok--> CONNECTED --peer gone/error--> DISCONNECTED
    CONNECTING --failure--> DISABLED (``last_error`` says why); any --disable--> DISABLED;
    any --close--> CLOSED (final). DISCONNECTED --enable--> CONNECTING.
    """

    DISABLED = "disabled"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"
    CLOSED = "closed"


class MemexposeEndpoint:
    """One side of a memexpose link.

    Args:
        name: names regions, threads and messages.
        transport: ``UnixTransport`` (fds travel: direct mappings) or
            ``TcpTransport`` (everything forwarded), listening or connecting.
        exposure: what the peer may reach (None: export nothing).
        window_size: bytes of the import window (0: import nothing).
        readonly_share: ``"seal"`` (default), ``"trust"`` or ``"never"``:
            how read-only ranges are shared (docs/protocol.md, P13).
        direct: map shared RAM of the peer directly (False: always forward).
        role: requested sub-priority, 0 or 1, or None for "either" (P9).
        timeout: seconds a single request may wait for its reply.
        connect_timeout: seconds ``enable`` may take.
        irq_queue_size: interrupt receive queue entries (16).
        on_irq_level: called with True/False (machine lock held) when the
            receive queue becomes non-empty/empty.
        lock: the machine lock; default: the exposure's ``system.lock``,
            else a new ``RLock``. The window must end up in a system using it.
        max_block: largest block transfer offered (negotiated down to the
            peer's).

    Raises:
        ConfigError: inconsistent arguments (nothing to do, bad role, ...).

    Invariants:
        * ``_session`` is None or the session of the current (or last) link;
          a CONNECTED endpoint has an open session;
        * the exporter and importer are attached to at most that session.
    """

    def __init__(self, name: str, transport: Transport, *, exposure: Exposure | None = None,
                 window_size: int = 0, readonly_share: str = "seal", direct: bool = True,
                 role: int | None = None, timeout: float = 2.0, connect_timeout: float = 5.0,
                 irq_queue_size: int = INTERRUPT_QUEUE_SIZE,
                 on_irq_level: Callable[[bool], None] | None = None,
                 lock: threading.RLock | None = None,
                 max_block: int = DEFAULT_MAX_BLOCK) -> None:
        if not isinstance(transport, Transport):
            raise ConfigError(f"endpoint {name!r}: transport must be a UnixTransport or "
                              f"TcpTransport, not {type(transport).__name__}")
        if role not in (None, 0, 1):
            raise ConfigError(f"endpoint {name!r}: role={role!r}; use 0, 1 or None (either)")
        if window_size < 0 or window_size > 1 << 64:
            raise ConfigError(f"endpoint {name!r}: window_size {window_size:#x} outside "
                              "0..2**64")
        if timeout <= 0 or connect_timeout <= 0:
            raise ConfigError(f"endpoint {name!r}: timeouts must be positive")
        if not 4096 <= max_block <= 16 * 1024 * 1024:
            raise ConfigError(f"endpoint {name!r}: max_block {max_block} outside 4 KiB..16 MiB")
        if lock is None:
            lock = exposure.address_space.system.lock if exposure is not None \
                else threading.RLock()
        elif exposure is not None and exposure.address_space.system.lock is not lock:
            raise ConfigError(f"endpoint {name!r}: lock is not the exposure's machine lock "
                              f"({exposure.address_space.system.name!r}); pass that one")
        self.name = name
        self.transport = transport
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.role = ROLE_ANY if role is None else role
        self.max_block = max_block
        self._lock = lock
        self._counters = LinkCounters()
        self._irqq = InterruptQueue(irq_queue_size, on_irq_level)
        self.exporter = Exporter(exposure, counters=self._counters,
                                 readonly_share=readonly_share) if exposure is not None else None
        self.importer = Importer(name, window_size, lock=lock, counters=self._counters,
                                 direct=direct) if window_size else None
        self._state = LinkState.DISABLED
        self._state_lock = threading.Lock()
        self._session: Session | None = None
        self._connector: threading.Thread | None = None
        self._cancel = False
        self._info: PeerInfo | None = None
        self.last_error: BaseException | None = None
        """Why the endpoint is not CONNECTED (last connect failure or link end)."""

    # -- state -------------------------------------------------------------------

    @property
    def state(self) -> LinkState:
        """The current ``LinkState``."""
        return self._state

    @property
    def connected(self) -> bool:
        """Whether the link is up (what an ENABLE register reads back)."""
        return self._state is LinkState.CONNECTED

    @property
    def window(self) -> MemoryRegion | None:
        """The import window region to map (None when ``window_size`` is 0)."""
        return self.importer.window if self.importer is not None else None

    @property
    def peer(self) -> PeerInfo | None:
        """What the last HELLO exchange settled (None before the first connect)."""
        return self._info

    @property
    def lock(self) -> threading.RLock:
        """The machine lock this endpoint takes."""
        return self._lock

    # -- connecting --------------------------------------------------------------------

    def enable(self, timeout: float | None = None) -> None:
        """Connect and start serving; returns once CONNECTED.

        A CONNECTED endpoint stays as it is. Blocks up to ``timeout``
        (default ``connect_timeout``); the machine lock is taken only to
        install the link.

        Raises:
            ConnectError: no peer, or the handshake failed; the state is
                DISABLED and ``last_error`` holds the cause.
            LinkStateError: the endpoint is closed, or ``enable_nowait`` is
                connecting.
        """
        if self._prepare_connect():
            self._connect(time.monotonic() + (timeout or self.connect_timeout), raise_=True)

    def enable_nowait(self) -> None:
        """Start connecting in the background (for a device's ENABLE write).

        The state is CONNECTING until it turns CONNECTED, or DISABLED with
        ``last_error`` set. Does not wait for the network.

        Raises:
            LinkStateError: the endpoint is closed.
        """
        if self._state is LinkState.CONNECTING:
            return
        if not self._prepare_connect():
            return
        deadline = time.monotonic() + self.connect_timeout
        connector = threading.Thread(target=self._connect, args=(deadline, False),
                                     name=f"{self.name}-connect", daemon=True)
        with self._state_lock:
            self._connector = connector
        connector.start()

    def _prepare_connect(self) -> bool:
        """Enter CONNECTING (False: already CONNECTED); join what the last link left."""
        with self._state_lock:
            if self._state is LinkState.CONNECTED:
                return False
            if self._state is LinkState.CLOSED:
                raise LinkStateError(f"endpoint {self.name!r} is closed; create a new endpoint")
            if self._state is LinkState.CONNECTING:
                raise LinkStateError(f"endpoint {self.name!r} is already connecting "
                                     "(enable_nowait); wait until it is CONNECTED or DISABLED")
            old = self._session
            self._session = None
            connector = self._connector
            self._connector = None
            self._cancel = False
            self._state = LinkState.CONNECTING
        self._join(connector, old)
        return True

    def _join(self, connector: threading.Thread | None, session: Session | None) -> None:
        """Join a finished connector and session (no lock held)."""
        if connector is not None and connector is not threading.current_thread():
            connector.join(self.connect_timeout + 1.0)
        if session is not None:
            # Tear down here (idempotent): a server thread still waiting for
            # the lock must not tear down later, after a new link is attached.
            with self._lock:
                session.close()
                session.teardown()
            session.join()

    def _connect(self, deadline: float, raise_: bool) -> None:
        exposed = self.exporter.exposure.announced_size if self.exporter else 0
        readonly = bool(self.exporter and self.exporter.readonly)
        try:
            window = self.window
            if window is not None and window.system is not None \
                    and window.system.lock is not self._lock:
                raise ConfigError(
                    f"endpoint {self.name!r}: its window is in memory system "
                    f"{window.system.name!r}, whose lock is not the endpoint's; pass lock="
                    "system.lock")
            mem, irq, info = establish(self.transport, role=self.role, exposed_size=exposed,
                                       readonly=readonly, max_block=self.max_block,
                                       deadline=deadline)
        except Exception as exc:
            with self._state_lock:
                self.last_error = exc
                if self._state is LinkState.CONNECTING:
                    self._state = LinkState.DISABLED
            if raise_:
                raise ConnectError(f"endpoint {self.name!r} could not connect over "
                                   f"{self.transport.describe()}: {exc}") from exc
            return
        session = Session(name=self.name, mem=mem, irq=irq, info=info, lock=self._lock,
                          exporter=self.exporter, importer=self.importer, irq_queue=self._irqq,
                          counters=self._counters, timeout=self.timeout,
                          on_close=self._session_closed)
        installed = False
        lock = self._lock
        while not lock.acquire(timeout=0.05):
            if self._cancel:
                break
        else:
            try:
                with self._state_lock:
                    if not self._cancel and self._state is LinkState.CONNECTING:
                        self._session = session
                        self._info = info
                        if self.exporter is not None:
                            self.exporter.attach(session)
                        if self.importer is not None:
                            self.importer.attach(session, peer_size=info.exposed_size,
                                                 fd_passing=info.fd_passing,
                                                 max_block=info.max_block if info.block else 0)
                        self._state = LinkState.CONNECTED
                        self.last_error = None
                        self._counters.connects += 1
                        session.start()
                        installed = True
            finally:
                lock.release()
        if not installed:
            session.close()
            session.teardown()
            session.join()
            if raise_:
                raise ConnectError(f"endpoint {self.name!r}: disabled while connecting")

    def _session_closed(self, session: Session, error: BaseException) -> None:
        """Session hook (any thread, no lock held): the link ended."""
        with self._state_lock:
            if session is self._session and self._state is LinkState.CONNECTED:
                self._state = LinkState.DISCONNECTED
                self.last_error = error

    def disable(self) -> None:
        """End the link (BYE to the peer), drop direct mappings, stop serving.

        Any state but CLOSED ends DISABLED. Safe with the machine lock held
        (a device register write): a background connect in progress is
        cancelled, not waited for.
        """
        with self._state_lock:
            if self._state is LinkState.CLOSED:
                return
            self._cancel = True
            session = self._session
            self._session = None
            self._state = LinkState.DISABLED
        if session is not None:
            with self._lock:
                session.send_bye()
                session.close()
                session.teardown()
            session.join()

    def close(self) -> None:
        """Disable, then release the transport (a UNIX socket file is removed). Final."""
        self.disable()
        with self._state_lock:
            connector = self._connector
            self._connector = None
            self._state = LinkState.CLOSED
        self._join(connector, None)
        self.transport.close()

    def __enter__(self) -> MemexposeEndpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- interrupts ----------------------------------------------------------------------

    def send_interrupt(self, itype: int, data: bytes = b"") -> bool:
        """Send an interrupt of type ``itype`` with up to 128 data bytes (zero padded).

        Returns False, and sends nothing, when the link is not connected or
        fails meanwhile (a guest's SEND is not an error).

        Raises:
            ValueError: ``itype`` not a 64-bit value, or more than 128 bytes.
        """
        if not 0 <= itype <= _U64:
            raise ValueError(f"interrupt type {itype:#x} is not a 64-bit value")
        if len(data) > INTERRUPT_DATA_SIZE:
            raise ValueError(f"interrupt data of {len(data)} bytes; at most "
                             f"{INTERRUPT_DATA_SIZE}")
        session = self._session
        if session is None:
            return False
        return session.send_interrupt(itype, bytes(data).ljust(INTERRUPT_DATA_SIZE, b"\0"))

    def pop_interrupt(self) -> InterruptMessage | None:
        """Take the oldest received interrupt (a RECV read), or None when empty.

        Lowers the level (``on_irq_level(False)``) when the queue runs empty.
        """
        with self._lock:
            return self._irqq.pop()

    @property
    def pending_interrupts(self) -> int:
        """Interrupts waiting in the receive queue."""
        return len(self._irqq)

    @property
    def irq_level(self) -> bool:
        """Whether the receive queue is non-empty."""
        return self._irqq.level

    @property
    def interrupt_queue(self) -> InterruptQueue:
        """The receive queue itself (capacity, counts)."""
        return self._irqq

    # -- bulk access through the window -----------------------------------------------------

    def _require_importer(self) -> Importer:
        if self.importer is None:
            raise LinkStateError(f"endpoint {self.name!r} has no import window "
                                 "(window_size=0); give it one to read the peer's memory")
        return self.importer

    def read_into(self, offset: int, buf: bytearray | memoryview,
                  attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> MemTxResult:
        """Fill ``buf`` from window ``offset`` (direct where mapped, else block transfers)."""
        return self._require_importer().read_into(offset, buf, attrs)

    def read_bytes(self, offset: int, size: int,
                   attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> tuple[bytes, MemTxResult]:
        """Return ``size`` bytes from window ``offset`` and the OR of the results."""
        buf = bytearray(size)
        result = self._require_importer().read_into(offset, buf, attrs)
        return bytes(buf), result

    def write_bytes(self, offset: int, data: bytes | bytearray | memoryview,
                    attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> MemTxResult:
        """Write ``data`` at window ``offset`` (direct where mapped writable, else blocks)."""
        return self._require_importer().write_bytes(offset, data, attrs)

    # -- statistics ------------------------------------------------------------------------

    def statistics(self) -> LinkStatistics:
        """Return a snapshot of the counters (see ``LinkStatistics``)."""
        importer = self.importer
        q = self._irqq
        return self._counters.snapshot(
            state=self._state.name,
            direct_mappings=len(importer.mappings) if importer else 0,
            direct_bytes=importer.direct_bytes if importer else 0,
            interrupts_pending=len(q),
            interrupts_received=q.received,
            interrupts_dropped=q.dropped,
        )

    def _check_invariants(self) -> None:
        if self._state is LinkState.CONNECTED:
            assert self._session is not None and not self._session.closed
        if self.importer is not None:
            self.importer._check_invariants()
        if self.exporter is not None:
            self.exporter._check_invariants()
        self._irqq._check_invariants()

    def __repr__(self) -> str:
        return (f"<MemexposeEndpoint {self.name!r} {self._state.name} "
                f"{self.transport.describe()}>")
