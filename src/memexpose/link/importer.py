"""The importer: a window onto the peer's exposed memory.

``Importer.window`` is an MMIO region (map it where the device's BAR or
platform window goes). Its ops forward every 1..8-byte access to the peer
(the slow path). When a reply carries an fd, the flat range it describes is
mapped from that fd as a subregion of the window at priority 1: RAM for a
writable share, a ROM device whose writes are still forwarded for a
read-only one (docs/protocol.md, P13-P15). Later accesses there never leave
this process (the direct path).

Mappings are kept sorted and non-overlapping, any number at once. An
INVALIDATE removes every mapping that overlaps its range, and closes their
fds, before the acknowledgement is sent.
"""

from __future__ import annotations

import fcntl
import os
from bisect import bisect_left, bisect_right
from contextlib import nullcontext
from typing import TYPE_CHECKING

from memexpose.errors import ListenerMutationError
from memexpose.link.codec import ATTRS_UNSPECIFIED_CODE, FLAG_WANT_SHARE, encode_attrs
from memexpose.link.locking import lock_held
from memexpose.link.stats import LinkCounters
from memexpose.memory import (
    MEMTX_DECODE_ERROR,
    MEMTX_ERROR,
    MEMTXATTRS_UNSPECIFIED,
    AccessConstraints,
    Endianness,
    HostMemory,
    MemoryRegion,
    MemoryRegionOps,
    MemTxAttrs,
    MemTxResult,
)

if TYPE_CHECKING:
    import threading

    from memexpose.link.session import Session

__all__ = ["Importer", "LinkOps", "WindowOps"]

_F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
_F_SEAL_SHRINK = 0x0002
_DIRECT_PRIORITY = 1


class LinkOps(MemoryRegionOps):
    """Base class of the ops of link-owned regions.

    An exporter refuses accesses that reach a region with these ops (or a
    direct mapping inside one): serving them would send a request while
    serving one.
    """


class WindowOps(LinkOps):
    """Forward each access of the window (or of a read-only mapping) to the peer.

    Values travel in memory byte order (little-endian numbers of the
    access's bytes), so the ops are ``LITTLE`` and take 1..8 bytes at any
    alignment in one call.
    """

    endianness = Endianness.LITTLE
    valid = AccessConstraints(1, 8, unaligned=True)
    impl = AccessConstraints(1, 8, unaligned=True)

    __slots__ = ("_base", "_importer")

    def __init__(self, importer: Importer, base: int = 0) -> None:
        self._importer = importer
        self._base = base

    def read_with_attrs(self, offset: int, size: int,
                        attrs: MemTxAttrs) -> tuple[int, MemTxResult]:
        """Forward a load (machine lock held by the caller, or taken here)."""
        return self._importer.read(self._base + offset, size, attrs)

    def write_with_attrs(self, offset: int, value: int, size: int,
                         attrs: MemTxAttrs) -> MemTxResult:
        """Forward a store."""
        return self._importer.write(self._base + offset, value, size, attrs)


class _Mapping:
    """One direct mapping: window ``[start, end)`` from a received fd."""

    __slots__ = ("end", "hostmem", "region", "start")

    def __init__(self, start: int, end: int, region: MemoryRegion, hostmem: HostMemory) -> None:
        self.start = start
        self.end = end
        self.region = region
        self.hostmem = hostmem

    def __repr__(self) -> str:
        return f"<_Mapping {self.start:#x}-{self.end:#x} {self.hostmem!r}>"


class Importer:
    """The importing half of an endpoint: window region, forwarding, direct mappings.

    Args:
        name: prefix of the region names.
        size: window size in bytes.
        lock: the machine lock (taken around forwarded accesses).
        counters: the endpoint's statistics counters.
        direct: map shared RAM directly (False: forward everything).

    Invariants:
        * ``_starts[i] == _maps[i].start``; mappings sorted, non-overlapping,
          each inside ``[0, limit)``;
        * every mapping's region is a subregion of ``window`` at priority 1,
          and its ``hostmem`` is open; a revoked mapping (P15) is in
          ``_zombies``, forwarding, with its ``hostmem`` closed, until
          ``reap`` removes it.
    """

    def __init__(self, name: str, size: int, *, lock: threading.RLock,
                 counters: LinkCounters, direct: bool = True) -> None:
        self.name = name
        self.size = size
        self.direct = direct
        self.window = MemoryRegion.init_io(f"{name}.window", size, WindowOps(self))
        self._lock = lock
        self._counters = counters
        self._session: Session | None = None
        self._limit = 0
        self._flags = 0
        self._max_block = 0
        self._starts: list[int] = []
        self._maps: list[_Mapping] = []
        self._zombies: list[_Mapping] = []

    # -- lifecycle ---------------------------------------------------------------

    def attach(self, session: Session, *, peer_size: int, fd_passing: bool,
               max_block: int) -> None:
        """Forward through ``session`` to a peer exposing ``peer_size`` bytes. Machine lock held."""
        assert lock_held(self._lock)
        self._limit = min(self.size, peer_size)
        self._flags = FLAG_WANT_SHARE if self.direct and fd_passing else 0
        self._max_block = max_block
        self._session = session

    def detach(self, session: Session) -> None:
        """Stop forwarding for ``session``; remove every mapping and close its fd.

        Does nothing if another session is attached now. Machine lock held.
        """
        assert lock_held(self._lock)
        if self._session is not session:
            return
        self._session = None
        self._limit = 0
        victims = self._maps[:]
        self._maps.clear()
        self._starts.clear()
        self._unmap(victims + self._zombies)
        self._zombies.clear()

    @property
    def limit(self) -> int:
        """Window bytes the peer serves now (0 when disconnected)."""
        return self._limit

    # -- forwarding (window ops) ------------------------------------------------------

    def read(self, addr: int, size: int,
             attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> tuple[int, MemTxResult]:
        """Forward a load of ``size`` bytes at window offset ``addr``.

        Returns ``(value, result)``: ``MEMTX_DECODE_ERROR`` past the peer's
        window, ``MEMTX_ERROR`` when the link is down or fails meanwhile.
        """
        if addr + size > self._limit:
            return 0, MEMTX_DECODE_ERROR
        session = self._session
        if session is None:
            return 0, MEMTX_ERROR
        code = ATTRS_UNSPECIFIED_CODE if attrs is MEMTXATTRS_UNSPECIFIED else encode_attrs(attrs)
        with self._lock:
            return session.request_read(addr, size, code, self._flags)

    def write(self, addr: int, value: int, size: int,
              attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> MemTxResult:
        """Forward a store; results as ``read``."""
        if addr + size > self._limit:
            return MEMTX_DECODE_ERROR
        session = self._session
        if session is None:
            return MEMTX_ERROR
        code = ATTRS_UNSPECIFIED_CODE if attrs is MEMTXATTRS_UNSPECIFIED else encode_attrs(attrs)
        with self._lock:
            return session.request_write(addr, value, size, code, self._flags)

    def read_into(self, addr: int, buf: bytearray | memoryview,
                  attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> MemTxResult:
        """Fill ``buf`` from window offset ``addr`` with block transfers (bulk path).

        Parts that are mapped directly are copied from the mapping; the rest
        travels in READ_BLOCK frames of at most the negotiated block size.
        Returns the OR of all results. An empty buffer is a no-op.
        """
        out = memoryview(buf).cast("B")
        total = len(out)
        if addr + total > self._limit:
            return MEMTX_DECODE_ERROR if total else MemTxResult.OK
        code = ATTRS_UNSPECIFIED_CODE if attrs is MEMTXATTRS_UNSPECIFIED else encode_attrs(attrs)
        result = MemTxResult.OK
        pos = 0
        with self._lock:
            while pos < total:
                here = addr + pos
                m, next_start = self._mapping_at(here)
                if m is not None:
                    n = min(total - pos, m.end - here)
                    o = here - m.start
                    out[pos:pos + n] = m.hostmem.view[o:o + n]  # type: ignore[index]
                else:
                    session = self._session
                    if session is None:
                        return result | MEMTX_ERROR
                    n = min(total - pos, self._max_block, next_start - here)
                    result |= session.request_read_block(here, out[pos:pos + n], code,
                                                         self._flags)
                pos += n
        return result

    def write_bytes(self, addr: int, data: bytes | bytearray | memoryview,
                    attrs: MemTxAttrs = MEMTXATTRS_UNSPECIFIED) -> MemTxResult:
        """Write ``data`` at window offset ``addr`` with block transfers (bulk path).

        Directly mapped writable parts are written in place; read-only
        mappings and unmapped parts travel in WRITE_BLOCK frames.
        """
        src = memoryview(data).cast("B")
        total = len(src)
        if addr + total > self._limit:
            return MEMTX_DECODE_ERROR if total else MemTxResult.OK
        code = ATTRS_UNSPECIFIED_CODE if attrs is MEMTXATTRS_UNSPECIFIED else encode_attrs(attrs)
        result = MemTxResult.OK
        pos = 0
        with self._lock:
            while pos < total:
                here = addr + pos
                m, next_start = self._mapping_at(here)
                if m is not None and not m.hostmem.readonly:
                    n = min(total - pos, m.end - here)
                    o = here - m.start
                    m.hostmem.view[o:o + n] = src[pos:pos + n]  # type: ignore[index]
                else:
                    session = self._session
                    if session is None:
                        return result | MEMTX_ERROR
                    stop = m.end if m is not None else next_start
                    n = min(total - pos, self._max_block, stop - here)
                    result |= session.request_write_block(here, src[pos:pos + n], code,
                                                          self._flags)
                pos += n
        return result

    def _mapping_at(self, addr: int) -> tuple[_Mapping | None, int]:
        """Return ``(mapping containing addr or None, start of the next mapping)``."""
        i = bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._maps[i].end:
            return self._maps[i], self._maps[i].end
        nxt = self._starts[i + 1] if i + 1 < len(self._starts) else self._limit
        return None, nxt

    # -- direct mappings -------------------------------------------------------------

    def map_share(self, start: int, size: int, fd_offset: int, readonly: bool,
                  fd: int) -> bool:
        """Map ``size`` bytes of ``fd`` at window offset ``start`` (takes the fd).

        Refused (fd closed, False returned) when the range leaves the window,
        overlaps a different mapping, lies past the end of the file, or the
        file could shrink under us (no ``F_SEAL_SHRINK``: a later access
        would fault); also when our memory map cannot change right now
        (inside our own commit). An identical existing mapping keeps the
        old fd. Machine lock held.
        """
        assert lock_held(self._lock)
        end = start + size
        counters = self._counters
        counters.shares_received += 1
        if not self.direct or self._session is None or end > self._limit:
            return self._refuse(fd)
        i = bisect_right(self._starts, start) - 1
        if i >= 0 and self._maps[i].end > start:
            m = self._maps[i]
            if m.start == start and m.end == end:
                os.close(fd)
                return True
            return self._refuse(fd)
        if i + 1 < len(self._maps) and self._maps[i + 1].start < end:
            return self._refuse(fd)
        try:
            if os.fstat(fd).st_size < fd_offset + size:
                return self._refuse(fd)
            if not fcntl.fcntl(fd, _F_GET_SEALS) & _F_SEAL_SHRINK:
                return self._refuse(fd)
        except OSError:
            return self._refuse(fd)
        name = f"{self.name}.direct@{start:#x}"
        try:
            hostmem = HostMemory.foreign(name, fd, size, offset=fd_offset, readonly=readonly)
        except Exception:  # noqa: BLE001 - HostMemoryError: the fd is closed already
            counters.shares_refused += 1
            return False
        if readonly:
            region = MemoryRegion.init_rom_device(name, size, WindowOps(self, start),
                                                  hostmem=hostmem)
        else:
            region = MemoryRegion.init_ram(name, size, hostmem=hostmem)
            # RAM dispatches to its ops only for an access that runs past its
            # end; forwarding it whole lets the exporter serve it across ranges.
            region.ops = WindowOps(self, start)
        try:
            self.window.add_subregion_overlap(start, region, _DIRECT_PRIORITY)
        except ListenerMutationError:
            hostmem.close()
            counters.shares_refused += 1
            return False
        j = bisect_left(self._starts, start)
        self._starts.insert(j, start)
        self._maps.insert(j, _Mapping(start, end, region, hostmem))
        counters.mappings_created += 1
        counters.bytes_mapped_total += size
        return True

    def _refuse(self, fd: int) -> bool:
        os.close(fd)
        self._counters.shares_refused += 1
        return False

    def invalidate(self, start: int, size: int) -> int:
        """Remove every mapping overlapping ``[start, start + size)``; return how many.

        The fds are closed before this returns. Inside our own memory
        commit (the simultaneous-invalidation case, P15) the map cannot
        change: the mappings are revoked instead (accesses there are
        forwarded from now on; the memory and fd are released) and removed
        from the window by ``reap`` right after. Machine lock held.
        """
        assert lock_held(self._lock)
        end = start + size
        lo = bisect_right(self._starts, start) - 1
        if lo < 0 or self._maps[lo].end <= start:
            lo += 1
        hi = bisect_left(self._starts, end)
        if lo >= hi:
            return 0
        victims = self._maps[lo:hi]
        del self._maps[lo:hi]
        del self._starts[lo:hi]
        return self._unmap(victims)

    def _unmap(self, victims: list[_Mapping]) -> int:
        if not victims:
            return 0
        system = self.window.system
        try:
            with system.transaction() if system is not None else nullcontext():
                for m in victims:
                    if m.region.container is self.window:
                        self.window.del_subregion(m.region)
        except ListenerMutationError:
            for m in victims:
                self._revoke(m)
            self._zombies.extend(victims)
            self._counters.revoked_in_commit += len(victims)
            if self._session is not None:
                self._session.kick()
            return len(victims)
        for m in victims:
            m.hostmem.close()
        self._counters.mappings_removed += len(victims)
        return len(victims)

    def _revoke(self, m: _Mapping) -> None:
        """Turn a mapping into a forwarding range at once, without a re-render (P15).

        Our own memory commit is running, so the region cannot leave the map
        yet (memory rule T5). Until ``reap`` removes it, accesses must not use
        the peer's old memory, and must not fail either: the region becomes
        an MMIO region with the window's forwarding ops, and the ranges that
        show it in the current flat views lose their host views. The mapping
        and its fd are released now.

        Uses the memory layer's ``revoke_direct`` (docs/memory.md M11), which is
        allowed during a commit; ``test_session.py`` checks the behaviour.
        """
        m.region.revoke_direct(WindowOps(self, m.start))
        m.hostmem.close()

    def reap(self) -> None:
        """Remove revoked mappings from the window (outside any commit). Machine lock held."""
        assert lock_held(self._lock)
        if not self._zombies:
            return
        zombies = self._zombies
        self._zombies = []
        self._unmap(zombies)

    # -- introspection ---------------------------------------------------------------

    @property
    def mappings(self) -> list[tuple[int, int, bool]]:
        """Current direct mappings as ``(start, size, readonly)``."""
        return [(m.start, m.end - m.start, m.hostmem.readonly) for m in self._maps]

    @property
    def direct_bytes(self) -> int:
        """Bytes mapped directly now."""
        return sum(m.end - m.start for m in self._maps)

    def _check_invariants(self) -> None:
        assert self._starts == [m.start for m in self._maps]
        prev = 0
        for m in self._maps:
            assert prev <= m.start < m.end, f"mappings overlap or disorder at {m!r}"
            assert m.region.container is self.window and m.region.priority == _DIRECT_PRIORITY
            assert not m.hostmem.closed
            prev = m.end
        for m in self._zombies:
            assert m.hostmem.closed

    def __repr__(self) -> str:
        return (f"<Importer {self.name!r} size={self.size:#x} limit={self._limit:#x} "
                f"mappings={len(self._maps)}>")
