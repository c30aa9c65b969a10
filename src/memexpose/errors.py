"""Every exception memexpose raises, under one root.

Guest-visible failures (a read of a hole, a write to ROM, a peer that died)
are *not* exceptions: they come back as a ``MemTxResult``. Exceptions are for
misuse of the API and for broken input, and each one carries the data needed
to find the culprit (address, size, region name, peer).

The tree::

    MemexposeError
     ├── MemoryModelError            misuse of the memory API
     │    ├── InvalidAccessError      access size not in 1..8, address past 2**64
     │    ├── RegionInUseError        region added twice or to two containers
     │    ├── RegionCycleError        alias or containment cycle
     │    ├── RegionSizeError         a size QEMU forbids (0 for RAM) or > 2**64
     │    ├── ListenerMutationError   memory map changed from inside a listener
     │    └── HostMemoryError         backing memory could not be created or mapped
     ├── HwModelError                misuse of the hw API: BARs, capabilities, devfns, IRQs
     │    ├── PCIConfigAccessError    config access of illegal size, alignment or offset
     │    └── PCIResourceError        the enumerator cannot fit the BARs in its windows
     ├── MtreeParseError             QEMU ``info mtree`` text that cannot be parsed
     ├── ProtocolError               malformed frame on a link (closes the link)
     │    └── HandshakeError          HELLO refused: magic, version, channel pairing
     ├── LinkError                   link unusable: closed, timed out, peer gone
     │    ├── LinkClosedError         the peer hung up or said BYE, or the link was disabled
     │    ├── LinkTimeoutError        the peer did not answer within the timeout
     │    ├── LinkStateError          operation not allowed in the endpoint's current state
     │    ├── LinkBusyError           two threads used one link socket at once
     │    └── ConnectError            enable() could not connect (wraps the cause)
     ├── MachineError                misuse of a machine or CPU: bad register, run twice
     │    └── LoaderError             firmware missing, unreadable, wrong architecture
     └── ConfigError                 bad machine or device configuration
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "ConnectError",
    "HandshakeError",
    "HostMemoryError",
    "HwModelError",
    "InvalidAccessError",
    "LinkBusyError",
    "LinkClosedError",
    "LinkError",
    "LinkStateError",
    "LinkTimeoutError",
    "ListenerMutationError",
    "LoaderError",
    "MachineError",
    "MemexposeError",
    "MemoryModelError",
    "MtreeParseError",
    "PCIConfigAccessError",
    "PCIResourceError",
    "ProtocolError",
    "RegionCycleError",
    "RegionInUseError",
    "RegionSizeError",
]


class MemexposeError(Exception):
    """Root of every exception raised by memexpose."""


class MemoryModelError(MemexposeError):
    """The memory API was used in a way QEMU's semantics do not allow.

    Raised before anything changes: the model is left as it was.
    """


class InvalidAccessError(MemoryModelError):
    """An access that can never be legal: size not in 1..8, or past 2**64.

    Attributes:
        addr: the requested address.
        size: the requested size in bytes.
    """

    def __init__(self, message: str, *, addr: int | None = None, size: int | None = None):
        super().__init__(message)
        self.addr = addr
        self.size = size


class RegionInUseError(MemoryModelError):
    """A region was added to a container while it already has one.

    Remove it first with ``del_subregion``, or create an alias to show it twice.
    """


class RegionCycleError(MemoryModelError):
    """Adding the subregion or alias would make a region contain itself."""


class RegionSizeError(MemoryModelError):
    """A region size that QEMU refuses (0 for RAM/ROM, more than 2**64)."""


class ListenerMutationError(MemoryModelError):
    """The memory map was changed from inside a MemoryListener callback.

    Listeners observe a commit; they must defer changes (for example to the
    next safe point of the CPU loop) instead of changing the map re-entrantly.
    """


class HostMemoryError(MemoryModelError):
    """Host memory backing could not be created, mapped or used."""


class HwModelError(MemexposeError):
    """The hw API (IRQ lines, sysbus, PCI) was used in a way hardware cannot be.

    Examples: a BAR whose size is not a power of two, a 64-bit BAR in slot 5,
    a capability that does not fit, two devices at one devfn. Raised before
    anything changes: the model is left as it was.
    """


class PCIConfigAccessError(HwModelError):
    """A config-space access through the Python API of illegal size or place.

    Sizes are 1, 2 or 4 bytes, naturally aligned, inside the config space
    (256 bytes, 4 KiB for PCI Express). Guest accesses never raise: host
    bridges answer them as QEMU does (all-ones reads, dropped writes).

    Attributes:
        offset: the config-space offset asked for.
        size: the access size asked for.
    """

    def __init__(self, message: str, *, offset: int | None = None, size: int | None = None):
        super().__init__(message)
        self.offset = offset
        self.size = size


class PCIResourceError(HwModelError):
    """The firmware-like enumerator cannot place a BAR or a bridge window.

    Give it larger windows, or fewer devices. ``device`` names the function
    (``bus:slot.fn``) and ``what`` the resource (``BAR2``, ``ROM``, ``window``).
    """

    def __init__(self, message: str, *, device: str | None = None, what: str | None = None):
        super().__init__(message)
        self.device = device
        self.what = what


class MtreeParseError(MemexposeError):
    """QEMU ``info mtree`` text that does not follow QEMU 7.2's format.

    Attributes:
        line_number: 1-based line of the offending text, when known.
    """

    def __init__(self, message: str, *, line_number: int | None = None):
        if line_number is not None:
            message = f"line {line_number}: {message}"
        super().__init__(message)
        self.line_number = line_number


class ProtocolError(MemexposeError):
    """A malformed message arrived on a link; the link is closed.

    Raised (and recorded as the endpoint's ``last_error``) when a frame breaks
    docs/protocol.md: bad length, unknown type, reserved bits set, a reply
    nobody asked for, an fd that no frame announced. Nothing the frame asked
    for was done. Fix the peer; ``enable()`` connects again.

    Attributes:
        peer: who sent it (transport address and, for UNIX sockets, the pid).
    """

    def __init__(self, message: str, *, peer: str | None = None):
        if peer is not None:
            message = f"peer {peer}: {message}"
        super().__init__(message)
        self.peer = peer


class HandshakeError(ProtocolError):
    """The HELLO exchange failed: wrong magic, an incompatible protocol major
    version, or an interrupt channel that does not belong to the memory
    channel. ``enable()`` raises it wrapped in ``ConnectError``.
    """


class LinkError(MemexposeError):
    """A link cannot serve the request: closed, timed out, or the peer is gone."""


class LinkClosedError(LinkError):
    """The connection ended: the peer hung up, said BYE, or we disabled the link.

    Accesses that were waiting complete with ``MEMTX_ERROR``; call
    ``enable()`` to connect again.
    """


class LinkTimeoutError(LinkError):
    """The peer did not answer within the link's timeout; the link was closed.

    Attributes:
        timeout: the timeout in seconds.
    """

    def __init__(self, message: str, *, timeout: float | None = None):
        super().__init__(message)
        self.timeout = timeout


class LinkStateError(LinkError):
    """The endpoint is in the wrong state for the call (e.g. ``enable()`` after
    ``close()``). The message names the state and the way out.
    """


class LinkBusyError(LinkError):
    """Two threads used one link socket at the same time.

    Link sockets are read and written only with the machine lock held; take
    it (``system.lock``) around calls into the link.
    """


class ConnectError(LinkError):
    """``enable()`` could not connect; the endpoint is back to DISABLED.

    The root cause (refused connection, timeout, ``HandshakeError``) is
    chained as ``__cause__``.
    """


class MachineError(MemexposeError):
    """A machine or CPU was used in a way it cannot be.

    Examples: a register the architecture lacks, ``run`` while the machine
    already runs, a trap kind the CPU has no instruction for. Guest faults
    are not exceptions: they end a run with a ``StopReason``.
    """


class LoaderError(MachineError):
    """A firmware image that cannot be loaded.

    Raised when the file is missing or unreadable, is not an ELF or raw image
    the loader understands, is built for another architecture, or places
    bytes outside RAM and ROM. ``path`` names the file.
    """

    def __init__(self, message: str, *, path: str | None = None):
        super().__init__(message)
        self.path = path


class ConfigError(MemexposeError):
    """A machine or device configuration that cannot be built as written."""
