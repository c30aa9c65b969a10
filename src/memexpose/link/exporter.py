"""The exporter: serves the peer's accesses to our exposed window, and invalidates.

What the peer sees is an ``Exposure``: a range of one of our address spaces
(any region or address range, not only "all memory from 0"). Window offset
``x`` is address ``exposure.start + x``. For each request the exporter
(docs/protocol.md, P12-P14):

1. refuses anything outside ``[0, size)`` with ``MEMTX_DECODE_ERROR``;
2. refuses writes to a read-only exposure with ``MEMTX_ACCESS_ERROR``;
3. refuses accesses that touch a link window of this machine (an importer's
   forwarding window or its direct mappings) with ``MEMTX_DECODE_ERROR``,
   so that serving a request never sends a request (no recursion);
4. performs the access with the requester's ``MemTxAttrs``;
5. when the access succeeded, the peer asked for it, and the flat range
   under it is RAM backed by a sealable fd, attaches the fd and where the
   range lies in it (clipped to the window), and remembers the range as
   shared.

A ``MemoryListener`` on the exposed address space collects every flat-range
change that overlaps a shared range; at ``commit`` it sends one INVALIDATE
per merged range and waits for each acknowledgement, so when our commit
returns the peer no longer maps the old memory (invariant 3 of
ARCHITECTURE.md).
"""

from __future__ import annotations

import fcntl
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING

from memexpose.errors import ConfigError
from memexpose.link.codec import decode_attrs
from memexpose.link.importer import LinkOps
from memexpose.link.locking import lock_held
from memexpose.link.stats import LinkCounters
from memexpose.memory import (
    ADDR_SPACE_END,
    MEMTX_ACCESS_ERROR,
    MEMTX_DECODE_ERROR,
    AddressSpace,
    FlatRange,
    HostMemory,
    HostMemoryKind,
    MemoryListener,
    MemoryRegion,
    MemoryRegionSection,
    swap_bytes,
)

if TYPE_CHECKING:
    from memexpose.link.session import Session

__all__ = ["READONLY_SHARE_POLICIES", "Exporter", "Exposure"]

READONLY_SHARE_POLICIES = ("seal", "trust", "never")
"""How read-only ranges are shared (P13): seal the memfd against new writable
mappings; trust the peer to map read-only; or never send an fd."""

_F_ADD_SEALS = getattr(fcntl, "F_ADD_SEALS", 1033)
_F_GET_SEALS = getattr(fcntl, "F_GET_SEALS", 1034)
_F_SEAL_WRITE = 0x0008
_F_SEAL_SHRINK = 0x0002
_F_SEAL_GROW = 0x0004
_F_SEAL_FUTURE_WRITE = 0x0010
_WIRE_MAX = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Exposure:
    """The part of an address space a peer may reach: ``[start, start + size)``.

    Use ``Exposure.range`` or ``Exposure.region``.

    Attributes:
        address_space: where accesses are performed.
        start: the address of window offset 0.
        size: bytes (1 .. 2**64 - start; announced as at most 2**64 - 1).
        readonly: refuse writes, and share only read-only mappings.

    Raises:
        ConfigError: empty, or running past 2**64.
    """

    address_space: AddressSpace
    start: int
    size: int
    readonly: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.address_space, AddressSpace):
            raise ConfigError("Exposure.address_space must be an AddressSpace")
        if self.start < 0 or self.size <= 0 or self.start + self.size > ADDR_SPACE_END:
            raise ConfigError(
                f"exposure start={self.start:#x} size={self.size:#x} of "
                f"{self.address_space.name!r} is empty or runs past 2**64")

    @classmethod
    def range(cls, address_space: AddressSpace, start: int, size: int, *,
              readonly: bool = False) -> Exposure:
        """Expose ``[start, start + size)`` of ``address_space``."""
        return cls(address_space, start, size, readonly)

    @classmethod
    def region(cls, address_space: AddressSpace, region: MemoryRegion, *,
               readonly: bool = False) -> Exposure:
        """Expose ``region`` where it sits in ``address_space`` (whatever overlaps it).

        Raises:
            ConfigError: ``region`` is not a subregion (at any depth) of the
                address space's root.
        """
        addr = 0
        mr: MemoryRegion | None = region
        while mr is not None and mr is not address_space.root:
            addr += mr.addr
            mr = mr.container
        if mr is None:
            raise ConfigError(
                f"region {region.name!r} is not inside {address_space.name!r} (root "
                f"{address_space.root.name if address_space.root else None!r}); map it there "
                "or use Exposure.range")
        if address_space.root is not None:
            addr += address_space.root.addr
        size = min(region.size, ADDR_SPACE_END - addr)
        return cls(address_space, addr, size, readonly)

    @property
    def announced_size(self) -> int:
        """The size sent in HELLO (a full 2**64 window loses its last byte)."""
        return min(self.size, _WIRE_MAX)


def is_link_region(mr: MemoryRegion) -> bool:
    """Return whether ``mr`` is a link window or one of its direct mappings."""
    if isinstance(mr.ops, LinkOps):
        return True
    container = mr.container
    return container is not None and isinstance(container.ops, LinkOps)


class _InvalidationListener(MemoryListener):
    """Collects changes that overlap shared ranges; invalidates at commit."""

    priority = 1000  # commit last: every other listener has seen the new map

    def __init__(self, exporter: Exporter) -> None:
        self._exporter = exporter

    def region_del(self, section: MemoryRegionSection) -> None:
        if self._exporter._shared_starts:
            self._exporter._touched(section.offset_within_address_space, section.size)

    def region_add(self, section: MemoryRegionSection) -> None:
        if self._exporter._shared_starts:
            self._exporter._touched(section.offset_within_address_space, section.size)

    def commit(self) -> None:
        if self._exporter._dirty:
            self._exporter._flush()


class Exporter:
    """Serves one link's requests against an ``Exposure`` (P12-P14).

    Args:
        exposure: what the peer may reach.
        counters: the endpoint's statistics counters.
        readonly_share: one of ``READONLY_SHARE_POLICIES``.

    All methods run with the machine lock held.

    Invariants:
        * ``_shared_starts``/``_shared_ends`` are sorted, non-overlapping
          absolute ranges whose fds went to the current peer and that no
          INVALIDATE has covered since;
        * ``_dirty`` is empty outside a commit;
        * ``_hot`` is None or a RAM flat range of ``_hot_view`` that is no
          link region (P12 rule 3), and ``_hot_fd`` says whether its host
          memory has an fd. It serves an access only while ``_hot_view`` is
          still the address space's view and the range still has its host
          views (``revoke_direct`` drops them in place).
    """

    def __init__(self, exposure: Exposure, *, counters: LinkCounters,
                 readonly_share: str = "seal") -> None:
        if readonly_share not in READONLY_SHARE_POLICIES:
            raise ConfigError(f"readonly_share={readonly_share!r}; use one of "
                              f"{', '.join(READONLY_SHARE_POLICIES)}")
        self.exposure = exposure
        self.address_space = exposure.address_space
        self.base = exposure.start
        self.size = exposure.size
        self.readonly = exposure.readonly
        self.readonly_share = readonly_share
        self._counters = counters
        self._swap = exposure.address_space.system.big_endian
        self._listener = _InvalidationListener(self)
        self._registered = False
        self._session: Session | None = None
        self._shared_starts: list[int] = []
        self._shared_ends: list[int] = []
        self._dirty: list[tuple[int, int]] = []
        self._vetted: dict[int, tuple[HostMemory, bool, bool]] = {}
        # The RAM range served last (hot path; see the invariants).
        self._hot: FlatRange | None = None
        self._hot_view: object = None
        self._hot_fd = False

    # -- lifecycle ---------------------------------------------------------------

    def attach(self, session: Session) -> None:
        """Serve ``session``'s peer; start following the map. Machine lock held."""
        assert lock_held(self.address_space.system.lock)
        self._session = session
        self._shared_starts.clear()
        self._shared_ends.clear()
        if not self._registered:
            self.address_space.register_listener(self._listener)
            self._registered = True

    def detach(self, session: Session) -> None:
        """Stop serving ``session``; stop following the map; forget what was shared.

        Does nothing if another session is attached now. Machine lock held,
        outside a commit (a listener cannot be removed from inside one; if
        that fails the listener stays registered but idle).
        """
        assert lock_held(self.address_space.system.lock)
        if self._session is not session:
            return
        self._session = None
        self._shared_starts.clear()
        self._shared_ends.clear()
        self._dirty.clear()
        if self._registered:
            try:
                self.address_space.unregister_listener(self._listener)
                self._registered = False
            except Exception:  # noqa: BLE001 - inside a commit: stays idle instead
                pass

    # -- serving -----------------------------------------------------------------

    def _refused(self, addr: int, end: int) -> bool:
        """Whether ``[addr, end)`` (absolute) touches a link window (P12 rule 3)."""
        view = self.address_space.flatview
        starts = view.starts
        i = bisect_right(starts, addr) - 1
        if i < 0:
            i = 0
        ranges = view.ranges
        n = len(ranges)
        while i < n:
            fr = ranges[i]
            if fr.start >= end:
                return False
            if fr.end > addr and is_link_region(fr.mr):
                return True
            i += 1
        return False

    def _remember_hot(self, fr: FlatRange | None, view: object) -> None:
        """Serve later accesses inside ``fr`` by the hot path, if it is plain RAM."""
        if fr is not None and fr.mr.ram and fr.read_view is not None \
                and not is_link_region(fr.mr):
            hm = fr.mr.hostmem
            self._hot = fr
            self._hot_view = view
            self._hot_fd = hm is not None and hm.fd is not None

    def serve_read(self, addr: int, size: int, attrs: int, want: bool
                   ) -> tuple[int, int, tuple[int, int, int, bool, int] | None]:
        """Serve READ: return ``(value, result, share)``, the value in memory byte order.

        ``share`` is ``(start, size, fd_offset, readonly, fd)`` or None.
        """
        if addr + size > self.size:
            self._counters.refused_requests += 1
            return 0, MEMTX_DECODE_ERROR, None
        a = self.base + addr
        fr = self._hot
        view = self.address_space.flatview
        if (fr is not None and view is self._hot_view and fr.start <= a and a + size <= fr.end
                and (host := fr.read_view) is not None):
            # Hot path: RAM, as ``AddressSpace.read`` reads it directly (memory
            # rules M2/M3), in memory byte order; attributes do not matter.
            o = a + fr.host_delta
            value = int.from_bytes(host[o:o + size], "little")
            self._counters.served_requests += 1
            if want and self._hot_fd:
                return value, 0, self._share(fr)
            return value, 0, None
        fr = view.lookup(a)
        if (fr is None or a + size > fr.end or is_link_region(fr.mr)) \
                and self._refused(a, a + size):
            self._counters.refused_requests += 1
            return 0, MEMTX_DECODE_ERROR, None
        value, result = self.address_space.read(a, size, decode_attrs(attrs))
        if self._swap and size > 1:
            value = swap_bytes(value, size)
        self._counters.served_requests += 1
        if fr is not None and a + size <= fr.end:
            self._remember_hot(fr, view)
            if want and not result and fr.mr.ram:
                return value, result, self._share(fr)
        return value, result, None

    def serve_write(self, addr: int, value: int, size: int, attrs: int, want: bool
                    ) -> tuple[int, tuple[int, int, int, bool, int] | None]:
        """Serve WRITE (value in memory byte order): return ``(result, share)``."""
        if addr + size > self.size:
            self._counters.refused_requests += 1
            return MEMTX_DECODE_ERROR, None
        if self.readonly:
            self._counters.refused_requests += 1
            return MEMTX_ACCESS_ERROR, None
        a = self.base + addr
        fr = self._hot
        view = self.address_space.flatview
        if (fr is not None and view is self._hot_view and fr.start <= a and a + size <= fr.end
                and (host := fr.write_view) is not None):
            # Hot path: RAM, as ``AddressSpace.write`` writes it directly.
            o = a + fr.host_delta
            host[o:o + size] = value.to_bytes(size, "little")
            self._counters.served_requests += 1
            if want and self._hot_fd:
                return 0, self._share(fr)
            return 0, None
        fr = view.lookup(a)
        if (fr is None or a + size > fr.end or is_link_region(fr.mr)) \
                and self._refused(a, a + size):
            self._counters.refused_requests += 1
            return MEMTX_DECODE_ERROR, None
        if self._swap and size > 1:
            value = swap_bytes(value, size)
        result = self.address_space.write(a, value, size, decode_attrs(attrs))
        self._counters.served_requests += 1
        if not result:
            view = self.address_space.flatview  # the write may have changed the map
            fr = view.lookup(a)
            if fr is not None and a + size <= fr.end:
                self._remember_hot(fr, view)
                if want and fr.mr.ram:
                    return result, self._share(fr)
        return result, None

    def serve_read_block(self, addr: int, out: memoryview, attrs: int, want: bool
                         ) -> tuple[int, tuple[int, int, int, bool, int] | None]:
        """Serve READ_BLOCK into ``out``: return ``(result, share)``.

        On refusal ``out`` is left as it is (zeros in a fresh reply).
        """
        count = len(out)
        if addr + count > self.size:
            self._counters.refused_requests += 1
            return MEMTX_DECODE_ERROR, None
        a = self.base + addr
        if self._refused(a, a + count):
            self._counters.refused_requests += 1
            return MEMTX_DECODE_ERROR, None
        result = self.address_space.read_into(a, out, decode_attrs(attrs))
        self._counters.served_requests += 1
        if want and not result:
            fr = self.address_space.flatview.lookup(a)
            if fr is not None and fr.mr.ram:
                return result, self._share(fr)
        return result, None

    def serve_write_block(self, addr: int, data: bytes, attrs: int, want: bool
                          ) -> tuple[int, tuple[int, int, int, bool, int] | None]:
        """Serve WRITE_BLOCK: return ``(result, share)``."""
        count = len(data)
        if addr + count > self.size:
            self._counters.refused_requests += 1
            return MEMTX_DECODE_ERROR, None
        if self.readonly:
            self._counters.refused_requests += 1
            return MEMTX_ACCESS_ERROR, None
        a = self.base + addr
        if self._refused(a, a + count):
            self._counters.refused_requests += 1
            return MEMTX_DECODE_ERROR, None
        result = self.address_space.write_bytes(a, data, decode_attrs(attrs))
        self._counters.served_requests += 1
        if want and not result:
            fr = self.address_space.flatview.lookup(a)
            if fr is not None and fr.mr.ram:
                return result, self._share(fr)
        return result, None

    # -- sharing -------------------------------------------------------------------

    def _share(self, fr: FlatRange) -> tuple[int, int, int, bool, int] | None:
        """Return ``(start, size, fd_offset, readonly, fd)`` for RAM range ``fr``, or None."""
        mr = fr.mr
        hm = mr.hostmem
        if hm is None or hm.fd is None or is_link_region(mr):
            return None
        readonly = self.readonly or fr.readonly or mr.readonly
        if not self._vet(hm, readonly):
            return None
        lo = fr.start if fr.start > self.base else self.base
        limit = self.base + self.size
        hi = fr.end if fr.end < limit else limit
        self._remember(lo, hi)
        self._counters.shares_sent += 1
        fd_offset = hm.fd_offset + lo + fr.host_delta
        return lo - self.base, hi - lo, fd_offset, readonly, hm.fd

    def _vet(self, hm: HostMemory, readonly: bool) -> bool:
        """Whether ``hm``'s fd may be sent (sealed against shrinking; read-only policy)."""
        entry = self._vetted.get(id(hm))
        if entry is None or entry[0] is not hm:
            shrink_sealed = False
            write_sealed = False
            try:
                fcntl.fcntl(hm.fd, _F_ADD_SEALS, _F_SEAL_SHRINK | _F_SEAL_GROW)
            except OSError:
                pass  # not a memfd, or sealing is sealed: look at what is there
            try:
                seals = fcntl.fcntl(hm.fd, _F_GET_SEALS)
                shrink_sealed = bool(seals & _F_SEAL_SHRINK)
                write_sealed = bool(seals & (_F_SEAL_WRITE | _F_SEAL_FUTURE_WRITE))
            except OSError:
                pass
            entry = (hm, shrink_sealed, write_sealed)
            self._vetted[id(hm)] = entry
        if not entry[1]:
            return False  # a peer mapping could SIGBUS if the file shrank
        if not readonly:
            return not entry[2]
        policy = self.readonly_share
        if policy == "trust" or entry[2]:
            return True
        if policy == "never" or hm.kind is not HostMemoryKind.MEMFD:
            return False
        try:
            hm.seal_future_writes()
        except Exception:  # noqa: BLE001 - cannot seal: do not share
            return False
        self._vetted[id(hm)] = (hm, True, True)
        return True

    def _remember(self, lo: int, hi: int) -> None:
        starts = self._shared_starts
        ends = self._shared_ends
        i = bisect_left(starts, lo)
        if i < len(starts) and starts[i] == lo and ends[i] == hi:
            return
        # Merge with overlapping neighbours (a changed map was invalidated, so
        # overlaps only come from identical or nested re-shares).
        j = i
        while j > 0 and ends[j - 1] > lo:
            j -= 1
        k = i
        while k < len(starts) and starts[k] < hi:
            k += 1
        if j < k:
            lo = min(lo, starts[j])
            hi = max(hi, ends[k - 1])
        starts[j:k] = [lo]
        ends[j:k] = [hi]

    # -- invalidation ----------------------------------------------------------------

    def _touched(self, start: int, size: int) -> None:
        """Note a changed flat range if it overlaps something shared (listener hook)."""
        end = start + size
        base = self.base
        limit = base + self.size
        if start < base:
            start = base
        if end > limit:
            end = limit
        if start >= end:
            return
        i = bisect_right(self._shared_starts, start) - 1
        if i < 0:
            i = 0
        starts = self._shared_starts
        ends = self._shared_ends
        while i < len(starts) and starts[i] < end:
            if ends[i] > start:
                self._dirty.append((start, end))
                return
            i += 1

    def _flush(self) -> None:
        """Send INVALIDATE for each merged dirty range and wait for the ACK (commit hook)."""
        assert lock_held(self.address_space.system.lock)
        dirty = sorted(self._dirty)
        self._dirty.clear()
        merged: list[list[int]] = []
        for lo, hi in dirty:
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        session = self._session
        for lo, hi in merged:
            self._forget(lo, hi)
            if session is not None and session.request_invalidate(lo - self.base, hi - lo):
                self._counters.invalidations_sent += 1

    def _forget(self, lo: int, hi: int) -> None:
        starts = self._shared_starts
        ends = self._shared_ends
        keep = [(s, e) for s, e in zip(starts, ends) if e <= lo or s >= hi]
        starts[:] = [s for s, _ in keep]
        ends[:] = [e for _, e in keep]

    @property
    def shared_ranges(self) -> list[tuple[int, int]]:
        """Window ranges ``(start, size)`` whose fds the peer may hold now."""
        return [(s - self.base, e - s) for s, e in zip(self._shared_starts, self._shared_ends)]

    def _check_invariants(self) -> None:
        pairs = list(zip(self._shared_starts, self._shared_ends))
        assert pairs == sorted(pairs)
        for (_, e0), (s1, _) in zip(pairs, pairs[1:]):
            assert e0 <= s1, "shared ranges overlap"
        assert not self._dirty

    def __repr__(self) -> str:
        return (f"<Exporter {self.address_space.name!r} [{self.base:#x}+{self.size:#x}]"
                f"{' ro' if self.readonly else ''} shared={len(self._shared_starts)}>")
