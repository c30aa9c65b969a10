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
from memexpose.link.transport import Cancellation, Transport
from memexpose.memory import MEMTXATTRS_UNSPECIFIED, MemoryRegion, MemTxAttrs, MemTxResult

__all__ = ["LinkState", "MemexposeEndpoint"]

_U64 = (1 << 64) - 1
_LOCK_POLL = 0.02  # seconds between checks of "cancelled" while waiting for the machine lock


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
        * the exporter and importer are attached to at most that session;
        * ``_epoch`` grows by one at every enable, ``disable`` and ``close``
          (under ``_state_lock``); a connect acts for the epoch it began in
          and changes the state only while that is still ``_epoch``. So a
          cancelled connect can never touch a newer attempt;
        * ``_cancel`` is the cancellation of the latest connect (None before
          the first); every older one is set;
        * ``_connectors`` holds the connector threads started and not yet
          joined: ended ones are joined at the next enable, the rest by
          ``close``. ``enable_nowait`` and ``disable`` never wait for one.
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
        self._epoch = 0
        self._cancel: Cancellation | None = None
        self._connectors: list[threading.Thread] = []
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
        install the link. ``disable()`` or ``close()`` from another thread
        ends the wait at once.

        Raises:
            ConnectError: no peer, the handshake failed, or ``disable()``
                cancelled it; the state is DISABLED and, unless cancelled,
                ``last_error`` holds the cause.
            LinkStateError: the endpoint is closed, or ``enable_nowait`` is
                connecting.
        """
        attempt = self._begin_connect(raise_busy=True)
        if attempt is not None:
            epoch, cancel = attempt
            self._connect(epoch, cancel, time.monotonic() + (timeout or self.connect_timeout),
                          True)

    def enable_nowait(self) -> None:
        """Start connecting in the background (for a device's ENABLE write).

        The state is CONNECTING until it turns CONNECTED, or DISABLED with
        ``last_error`` set. Does not wait for the network, nor for a connect
        that ``disable()`` cancelled (that one can no longer change the
        state). Safe with the machine lock held. A no-op while CONNECTING
        or CONNECTED.

        Raises:
            LinkStateError: the endpoint is closed.
        """
        self._begin_connect(raise_busy=False)

    def _begin_connect(self, *, raise_busy: bool) -> tuple[int, Cancellation] | None:
        """Enter CONNECTING as a new epoch; start the connector thread unless ``raise_busy``.

        Returns ``(epoch, cancel)`` for ``enable`` to connect in the calling
        thread, or None when there is nothing to do (already CONNECTED, or
        CONNECTING for ``enable_nowait``, or the connector started). First
        tears down what the last link left, under the machine lock
        (re-entrant), so that the new link is attached after that.
        """
        with self._state_lock:
            if self._state is LinkState.CONNECTED:
                return None
            if self._state is LinkState.CLOSED:
                raise LinkStateError(f"endpoint {self.name!r} is closed; create a new endpoint")
            if self._state is LinkState.CONNECTING:
                if not raise_busy:
                    return None
                raise LinkStateError(f"endpoint {self.name!r} is already connecting "
                                     "(enable_nowait); wait until it is CONNECTED or DISABLED")
            old = self._session
            self._session = None
            self._epoch += 1
            epoch = self._epoch
            cancel = self._cancel = Cancellation()
            self._state = LinkState.CONNECTING
        if old is not None:
            # Tear down here (idempotent): a server thread still waiting for
            # the lock must not tear down later, after a new link is attached.
            with self._lock:
                old.close()
                old.teardown()
            old.join()
        if raise_busy:
            return epoch, cancel
        with self._state_lock:
            # Join the connectors that have ended (at once); live ones were
            # cancelled and end by themselves (close() joins them).
            for thread in [t for t in self._connectors if not t.is_alive()]:
                thread.join()
                self._connectors.remove(thread)
            if self._epoch == epoch:  # not disabled or closed meanwhile
                connector = threading.Thread(
                    target=self._connect,
                    args=(epoch, cancel, time.monotonic() + self.connect_timeout, False),
                    name=f"{self.name}-connect", daemon=True)
                self._connectors.append(connector)
                connector.start()
                return None
        cancel.close()
        return None

    def _connect(self, epoch: int, cancel: Cancellation, deadline: float, raise_: bool) -> None:
        """Connect for ``epoch`` (a connector thread, or ``enable``'s caller; no lock held).

        Changes the state only while ``epoch`` is still the endpoint's
        (``disable``, ``close`` and every new enable move it on).
        """
        try:
            self._connect_epoch(epoch, cancel, deadline, raise_)
        finally:
            cancel.close()

    def _connect_epoch(self, epoch: int, cancel: Cancellation, deadline: float,
                       raise_: bool) -> None:
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
                                       deadline=deadline, cancel=cancel)
        except Exception as exc:
            with self._state_lock:
                current = self._epoch == epoch
                if current:
                    self.last_error = exc
                    self._state = LinkState.DISABLED
            if raise_:
                if not current:
                    raise ConnectError(f"endpoint {self.name!r}: disabled while "
                                       "connecting") from exc
                raise ConnectError(f"endpoint {self.name!r} could not connect over "
                                   f"{self.transport.describe()}: {exc}") from exc
            return
        session = Session(name=self.name, mem=mem, irq=irq, info=info, lock=self._lock,
                          exporter=self.exporter, importer=self.importer, irq_queue=self._irqq,
                          counters=self._counters, timeout=self.timeout,
                          on_close=self._session_closed)
        installed = False
        lock = self._lock
        while not lock.acquire(timeout=_LOCK_POLL):
            if cancel.is_set():
                break
        else:
            try:
                with self._state_lock:
                    if self._epoch == epoch and self._state is LinkState.CONNECTING:
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
            session.discard()
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
        (a device register write): a connect in progress is cancelled, not
        waited for; it ends within milliseconds and never changes the state
        again.
        """
        with self._state_lock:
            if self._state is LinkState.CLOSED:
                return
            self._epoch += 1
            cancel = self._cancel
            session = self._session
            self._session = None
            self._state = LinkState.DISABLED
        if cancel is not None:
            cancel.set()
        if session is not None:
            with self._lock:
                session.send_bye()
                session.close()
                session.teardown()
            session.join()

    def close(self) -> None:
        """Disable, then release the transport (a UNIX socket file is removed). Final.

        Returns within milliseconds even while a connect is pending (it is
        cancelled, then joined).
        """
        self.disable()
        with self._state_lock:
            connectors = self._connectors
            self._connectors = []
            self._epoch += 1
            self._state = LinkState.CLOSED
        me = threading.current_thread()
        for thread in connectors:
            if thread is not me:
                thread.join(self.connect_timeout + 1.0)
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
        with self._state_lock:
            if self._state is LinkState.CONNECTING:
                assert self._cancel is not None and not self._cancel.is_set()
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
