"""Host memory backends: the bytes behind RAM and ROM regions.

A ``HostMemory`` owns one ``mmap`` and, when shareable, the file descriptor
behind it. Closing releases the mapping and the fd exactly once; a second
``close`` does nothing.

Kinds:

* ``memfd`` (default for RAM): an anonymous file from ``memfd_create``; its fd
  can be handed to a peer, which maps the very same pages (zero copy).
  Read-only sharing seals the memfd against future writes.
* ``anonymous``: private to this process; not shareable, so a peer reaches it
  only through forwarded accesses.
* ``file``: a file on disk mapped shared (persistent RAM, a ``-mem-path``).
* ``foreign``: an fd received from a peer, mapped at an offset.
"""

from __future__ import annotations

import ctypes
import enum
import fcntl
import mmap
import os
import threading

from memexpose.errors import HostMemoryError

__all__ = ["HostMemory", "HostMemoryKind", "HostMemoryPin"]

_PAGE_SIZE = mmap.PAGESIZE
# Linux memfd seal bits (fcntl.h); F_SEAL_FUTURE_WRITE is Linux 5.1+.
_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
_F_SEAL_SHRINK = 0x0002
_F_SEAL_GROW = 0x0004
_F_SEAL_FUTURE_WRITE = 0x0010


class HostMemoryKind(enum.Enum):
    """Where the bytes of a ``HostMemory`` come from."""

    ANONYMOUS = "anonymous"
    MEMFD = "memfd"
    FILE = "file"
    FOREIGN = "foreign"


class HostMemoryPin:
    """Keeps a ``HostMemory``'s pages mapped until ``release``, even across ``close``.

    A CPU that maps host memory by address (Unicorn's ``mem_map_ptr``) pins it
    so that a ``close`` elsewhere (a peer invalidating a shared range) cannot
    unmap pages the CPU still uses; the pages go when the last pin is
    released after the CPU has unmapped them.

    Attributes:
        address: host virtual address of byte 0 of the memory.
        size: bytes pinned.
    """

    __slots__ = ("_view", "address", "size")

    def __init__(self, view: memoryview, address: int) -> None:
        self._view: memoryview | None = view
        self.address = address
        self.size = len(view)

    @property
    def released(self) -> bool:
        """Whether ``release`` has run."""
        return self._view is None

    def release(self) -> None:
        """Drop the pin; safe to call more than once."""
        if self._view is not None:
            self._view.release()
            self._view = None

    def __repr__(self) -> str:
        state = "released" if self._view is None else f"{self.address:#x}+{self.size:#x}"
        return f"<HostMemoryPin {state}>"


class HostMemory:
    """A host mapping of ``size`` bytes, optionally backed by a shareable fd.

    Use the class methods to create one: ``memfd``, ``anonymous``, ``file``,
    ``foreign``.

    Invariants:
        * ``view`` is a memoryview of exactly ``size`` bytes while open;
        * ``fd`` is an open descriptor iff the memory is shareable and open;
        * after ``close()``, ``view`` and ``fd`` are None and stay None.
    """

    __slots__ = (
        "_close_lock",
        "_ctypes_anchor",
        "_map_delta",
        "_mmap",
        "fd",
        "fd_offset",
        "kind",
        "name",
        "readonly",
        "size",
        "view",
    )

    def __init__(
        self,
        *,
        name: str,
        kind: HostMemoryKind,
        size: int,
        fd: int | None,
        fd_offset: int = 0,
        readonly: bool = False,
    ) -> None:
        """Map ``size`` bytes of ``fd`` at ``fd_offset`` (or anonymous memory).

        Prefer the class methods; this constructor takes ownership of ``fd``
        (it is closed if mapping fails, and on ``close``).

        Raises:
            HostMemoryError: size not positive, or mmap failed.
        """
        self.name = name
        self.kind = kind
        self.size = size
        self.fd = fd
        self.fd_offset = fd_offset
        self.readonly = readonly
        self._close_lock = threading.Lock()
        self._ctypes_anchor: ctypes.c_char | None = None
        self.view: memoryview | None = None
        self._mmap: mmap.mmap | None = None
        self._map_delta = 0
        if size <= 0:
            self._close_fd()
            raise HostMemoryError(f"host memory {name!r}: size must be positive, got {size}")
        prot = mmap.PROT_READ | (0 if readonly else mmap.PROT_WRITE)
        try:
            if fd is None:
                self._mmap = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                       prot=prot)
            else:
                # mmap offsets must be page aligned: map from the page below and
                # keep the distance, so any byte offset in the fd works.
                delta = fd_offset % _PAGE_SIZE
                self._mmap = mmap.mmap(fd, size + delta, flags=mmap.MAP_SHARED, prot=prot,
                                       offset=fd_offset - delta)
                self._map_delta = delta
        except (OSError, ValueError) as exc:
            self._close_fd()
            raise HostMemoryError(
                f"cannot map host memory {name!r} ({kind.value}, {size:#x} bytes at fd offset "
                f"{fd_offset:#x}): {exc}"
            ) from exc
        whole = memoryview(self._mmap)
        self.view = whole[self._map_delta:self._map_delta + size]
        whole.release()

    # -- constructors -----------------------------------------------------

    @classmethod
    def memfd(cls, name: str, size: int) -> HostMemory:
        """Create shareable RAM backed by a new memfd (the default for RAM).

        Raises:
            HostMemoryError: size not positive, or the kernel refused.
        """
        if size <= 0:
            raise HostMemoryError(f"host memory {name!r}: size must be positive, got {size}")
        try:
            fd = os.memfd_create(name[:240] or "memexpose",
                                 os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        except OSError as exc:
            raise HostMemoryError(f"memfd_create({name!r}) failed: {exc}") from exc
        try:
            os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            raise HostMemoryError(f"cannot size memfd {name!r} to {size:#x}: {exc}") from exc
        return cls(name=name, kind=HostMemoryKind.MEMFD, size=size, fd=fd)

    @classmethod
    def anonymous(cls, name: str, size: int) -> HostMemory:
        """Create private, non-shareable memory (reached by peers only by forwarding)."""
        return cls(name=name, kind=HostMemoryKind.ANONYMOUS, size=size, fd=None)

    @classmethod
    def file(cls, name: str, path: str | os.PathLike[str], size: int,
             *, readonly: bool = False) -> HostMemory:
        """Map ``size`` bytes of the file at ``path`` shared, growing it if shorter.

        Raises:
            HostMemoryError: the file cannot be opened, grown or mapped.
        """
        flags = (os.O_RDONLY if readonly else os.O_RDWR | os.O_CREAT) | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise HostMemoryError(f"cannot open {os.fspath(path)!r} for {name!r}: {exc}") from exc
        try:
            if not readonly and os.fstat(fd).st_size < size:
                os.ftruncate(fd, size)
        except OSError as exc:
            os.close(fd)
            raise HostMemoryError(f"cannot grow {os.fspath(path)!r} to {size:#x}: {exc}") from exc
        return cls(name=name, kind=HostMemoryKind.FILE, size=size, fd=fd, readonly=readonly)

    @classmethod
    def foreign(cls, name: str, fd: int, size: int, *, offset: int = 0,
                readonly: bool = False) -> HostMemory:
        """Map ``size`` bytes of a received fd at byte ``offset``; takes ownership of fd.

        Raises:
            HostMemoryError: the mapping failed (the fd is closed all the same).
        """
        return cls(name=name, kind=HostMemoryKind.FOREIGN, size=size, fd=fd,
                   fd_offset=offset, readonly=readonly)

    # -- use ----------------------------------------------------------------

    @property
    def shareable(self) -> bool:
        """Whether a peer can map these bytes from ``fd`` (memfd, file, foreign)."""
        return self.fd is not None

    @property
    def closed(self) -> bool:
        """Whether ``close`` has run."""
        return self.view is None

    def host_address(self) -> int:
        """Return the host virtual address of byte 0 (for Unicorn's mem_map_ptr).

        Raises:
            HostMemoryError: the memory is closed or mapped read-only.
        """
        if self._mmap is None:
            raise HostMemoryError(f"host memory {self.name!r} is closed")
        if self._ctypes_anchor is None:
            if self.readonly:
                raise HostMemoryError(
                    f"host memory {self.name!r} is mapped read-only; map a writable copy "
                    "for a CPU and write-protect it there instead")
            self._ctypes_anchor = ctypes.c_char.from_buffer(self._mmap)
        return ctypes.addressof(self._ctypes_anchor) + self._map_delta

    def pin(self) -> HostMemoryPin:
        """Return a pin that keeps the pages mapped until it is released.

        Raises:
            HostMemoryError: the memory is closed or mapped read-only.
        """
        if self.view is None or self._mmap is None:
            raise HostMemoryError(f"host memory {self.name!r} is closed; cannot pin it")
        if self.readonly:
            raise HostMemoryError(f"host memory {self.name!r} is mapped read-only; cannot pin "
                                  "it for a CPU (map a writable copy and write-protect it)")
        # A view derived from ours shares the mmap export, so mmap.close()
        # cannot unmap while it lives (close() tolerates that).
        view = self.view[:]
        anchor = ctypes.c_char.from_buffer(view)
        address = ctypes.addressof(anchor)
        del anchor  # the address stays valid while ``view`` holds the export
        return HostMemoryPin(view, address)

    def seal_future_writes(self) -> None:
        """Forbid new writable mappings of a memfd (read-only sharing).

        Existing writable mappings, including ours, keep working.

        Raises:
            HostMemoryError: not a memfd, or the kernel refused the seal.
        """
        if self.kind is not HostMemoryKind.MEMFD or self.fd is None:
            raise HostMemoryError(f"host memory {self.name!r} is not an open memfd; cannot seal")
        try:
            fcntl.fcntl(self.fd, _F_ADD_SEALS,
                        _F_SEAL_SHRINK | _F_SEAL_GROW | _F_SEAL_FUTURE_WRITE)
        except OSError as exc:
            raise HostMemoryError(f"cannot seal memfd {self.name!r}: {exc}") from exc

    def close(self) -> None:
        """Release the mapping and the fd; safe to call more than once."""
        with self._close_lock:
            if self.view is None:
                return
            self.view.release()
            self.view = None
            self._ctypes_anchor = None
            if self._mmap is not None:
                try:
                    self._mmap.close()
                except BufferError:
                    # Someone still holds a buffer export (e.g. a live CPU
                    # mapping); the pages go when that export is dropped.
                    pass
                self._mmap = None
            self._close_fd()

    def _close_fd(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def __enter__(self) -> HostMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    def __repr__(self) -> str:
        state = "closed" if self.view is None else f"fd={self.fd}"
        return (f"<HostMemory {self.name!r} {self.kind.value} size={self.size:#x} {state}"
                f"{' ro' if self.readonly else ''}>")
