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
     ├── MtreeParseError             QEMU ``info mtree`` text that cannot be parsed
     ├── ProtocolError               malformed frame on a link (closes the link)
     ├── LinkError                   link unusable: closed, timed out, peer gone
     └── ConfigError                 bad machine or device configuration
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "HostMemoryError",
    "InvalidAccessError",
    "LinkError",
    "ListenerMutationError",
    "MemexposeError",
    "MemoryModelError",
    "MtreeParseError",
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
    """A malformed message arrived on a link; the link is closed."""


class LinkError(MemexposeError):
    """A link cannot serve the request: closed, timed out, or the peer is gone."""


class ConfigError(MemexposeError):
    """A machine or device configuration that cannot be built as written."""
