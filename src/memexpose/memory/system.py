"""The memory system: address spaces, listeners and transactions of one machine.

QEMU keeps this state in globals; memexpose keeps it in one object per
machine, so two machines in one process never see each other's commits.
Every mutation runs in a transaction; only the outermost commit re-renders,
once per distinct flat-view root, and tells the listeners.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from memexpose.errors import ListenerMutationError, MemoryModelError
from memexpose.memory.flatview import FlatView, flatview_root, render_flatview
from memexpose.memory.listener import MemoryListener, MemoryRegionSection, diff_views

if TYPE_CHECKING:
    from memexpose.memory.addrspace import AddressSpace
    from memexpose.memory.region import MemoryRegion

__all__ = ["MemorySystem"]


class MemorySystem:
    """Owns the address spaces, listeners and transaction depth of one machine.

    Args:
        name: a label for messages.
        big_endian: the target's byte order (resolves ``Endianness.NATIVE``).
        lock: the machine lock; a new ``RLock`` when None. Transactions hold it.

    Invariants:
        * ``_depth`` counts open transactions; rendering happens only when it
          returns to 0 with a change pending;
        * ``_listeners`` is sorted by priority, stable for equal priorities;
        * no mutation happens while listeners are being notified.
    """

    def __init__(self, name: str = "memory", *, big_endian: bool = False,
                 lock: threading.RLock | None = None) -> None:
        self.name = name
        self.big_endian = big_endian
        self.lock = lock if lock is not None else threading.RLock()
        self._depth = 0
        self._pending = False
        self._notifying = False
        self._address_spaces: list[AddressSpace] = []
        self._listeners: list[MemoryListener] = []
        # The views a running commit is installing (revoke_direct patches them too).
        self._incoming_views: list[FlatView] = []
        self.renders = 0
        """How many flat views were rendered (statistics)."""

    # -- transactions -------------------------------------------------------

    def begin(self) -> None:
        """Open a (nestable) transaction; prefer ``with system.transaction():``.

        Raises:
            ListenerMutationError: called from inside a listener callback.
        """
        if self._notifying:
            raise ListenerMutationError(
                "the memory map was changed from inside a MemoryListener callback; "
                "defer the change until after commit")
        self.lock.acquire()
        self._depth += 1

    def commit(self) -> None:
        """Close a transaction; the outermost one re-renders and notifies."""
        # Fix: checked before the try, whose finally would otherwise release
        # a lock we do not hold and turn this error into a RuntimeError.
        if self._depth <= 0:
            raise MemoryModelError("commit without a matching begin")
        try:
            self._depth -= 1
            if self._depth == 0 and self._pending:
                self._update_topology()
        finally:
            self.lock.release()

    @contextmanager
    def transaction(self) -> Iterator[MemorySystem]:
        """Group changes: listeners see one update when the outermost block exits."""
        self.begin()
        try:
            yield self
        finally:
            self.commit()

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open."""
        return self._depth > 0

    def _topology_changed(self) -> None:
        self._pending = True

    def _adopt(self, region: MemoryRegion) -> None:
        """Make ``region`` and everything it reaches part of this system."""
        joining = []
        for mr in region.walk():
            if mr._system is None:
                joining.append(mr)
            elif mr._system is not self:
                raise MemoryModelError(
                    f"region {mr.name!r} belongs to memory system {mr._system.name!r}; it "
                    f"cannot also be used in {self.name!r}")
        for mr in joining:
            mr._system = self

    def _update_topology(self) -> None:
        self._pending = False
        views: dict[int, FlatView] = {}
        new_views = []
        for as_ in self._address_spaces:
            new_views.append(self._view_for(as_.root, views))
        self._incoming_views = new_views
        self._notifying = True
        try:
            for listener in self._listeners:
                listener.begin()
            for as_, view in zip(self._address_spaces, new_views, strict=True):
                old = as_._flatview
                try:
                    if as_._listeners and old is not view:
                        diff_views(old, view, as_, as_._listeners)
                finally:
                    as_._flatview = view
            for listener in self._listeners:
                listener.commit()
        finally:
            self._notifying = False
            self._incoming_views = []
            # Fix: if a listener raised (e.g. ListenerMutationError), the
            # address spaces after it kept their stale view while _pending
            # was already cleared. Every AS gets its new view regardless.
            for as_, view in zip(self._address_spaces, new_views, strict=True):
                as_._flatview = view

    def _view_for(self, root: MemoryRegion | None, cache: dict[int, FlatView]) -> FlatView:
        fv_root = flatview_root(root)
        key = id(fv_root)
        view = cache.get(key)
        if view is None:
            view = render_flatview(fv_root)
            self.renders += 1
            cache[key] = view
        return view

    # -- address spaces and listeners ---------------------------------------

    @property
    def address_spaces(self) -> tuple[AddressSpace, ...]:
        """Address spaces in registration order."""
        return tuple(self._address_spaces)

    def _register_address_space(self, as_: AddressSpace) -> FlatView:
        with self.transaction():
            if as_.root is not None:
                self._adopt(as_.root)
            cache = {id(flatview_root(other.root)): other._flatview
                     for other in self._address_spaces if not self._pending}
            view = self._view_for(as_.root, cache)
            self._address_spaces.append(as_)
        return view

    def _unregister_address_space(self, as_: AddressSpace) -> None:
        with self.transaction():
            for listener in list(as_._listeners):
                self.unregister_listener(listener)
            self._address_spaces.remove(as_)

    def register_listener(self, listener: MemoryListener, as_: AddressSpace) -> None:
        """Attach ``listener`` to ``as_`` and replay the current map to it.

        Raises:
            MemoryModelError: the listener is already registered.
        """
        if any(existing is listener for existing in self._listeners):
            raise MemoryModelError(f"listener {listener!r} is already registered")
        with self.transaction():
            _insert_by_priority(self._listeners, listener)
            _insert_by_priority(as_._listeners, listener)
            self._notifying = True
            try:
                listener.begin()
                for fr in as_._flatview.ranges:
                    listener.region_add(MemoryRegionSection.from_flat_range(fr, as_))
                listener.commit()
            finally:
                self._notifying = False

    def unregister_listener(self, listener: MemoryListener) -> None:
        """Detach ``listener``, first telling it every range is deleted."""
        with self.transaction():
            for as_ in self._address_spaces:
                if any(existing is listener for existing in as_._listeners):
                    self._notifying = True
                    try:
                        listener.begin()
                        for fr in as_._flatview.ranges:
                            listener.region_del(MemoryRegionSection.from_flat_range(fr, as_))
                        listener.commit()
                    finally:
                        self._notifying = False
                    as_._listeners[:] = [x for x in as_._listeners if x is not listener]
            self._listeners[:] = [x for x in self._listeners if x is not listener]

    def __repr__(self) -> str:
        return (f"<MemorySystem {self.name!r} address_spaces={len(self._address_spaces)} "
                f"listeners={len(self._listeners)} depth={self._depth}>")


def _insert_by_priority(listeners: list[MemoryListener], listener: MemoryListener) -> None:
    for i, other in enumerate(listeners):
        if other.priority > listener.priority:
            listeners.insert(i, listener)
            return
    listeners.append(listener)
