"""The receive queue of the interrupt channel: 16 entries, drops counted.

An interrupt is a 64-bit type and 128 data bytes. The link's interrupt
thread pushes what arrives; the device pops one entry per read of its RECV
register. The queue drives one level: high while it holds anything, which a
device wires to its IRQ line (QEMU memexpose: INTx level or one MSI per
empty-to-non-empty transition).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["INTERRUPT_QUEUE_SIZE", "InterruptMessage", "InterruptQueue"]

INTERRUPT_QUEUE_SIZE = 16
"""Entries the receiver keeps (the seed device's ring size)."""


@dataclass(frozen=True, slots=True)
class InterruptMessage:
    """One received interrupt.

    Attributes:
        type: the sender's 64-bit type.
        data: exactly 128 bytes.
    """

    type: int
    data: bytes


class InterruptQueue:
    """A bounded FIFO of received interrupts with a "non-empty" level.

    Args:
        capacity: entries kept; later arrivals are dropped and counted.
        on_level: called with True when the queue becomes non-empty and
            with False when it becomes empty, machine lock held.

    Invariants:
        * ``len(self) <= capacity``;
        * ``received >= popped + dropped + len(self)`` (equal unless
          ``clear`` discarded entries);
        * the last level reported equals ``len(self) > 0`` once
          ``update_level`` has run (a push from the interrupt thread is
          reported under the machine lock as soon as that lock is free).
    """

    __slots__ = ("_entries", "_lock", "_reported", "capacity", "dropped", "on_level",
                 "popped", "received")

    def __init__(self, capacity: int = INTERRUPT_QUEUE_SIZE,
                 on_level: Callable[[bool], None] | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"interrupt queue capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self.on_level = on_level
        self._entries: deque[InterruptMessage] = deque()
        self._lock = threading.Lock()
        self._reported = False
        self.received = 0
        self.dropped = 0
        self.popped = 0

    def push(self, itype: int, data: bytes) -> bool:
        """Queue an arrival; return False when the queue was full (dropped).

        Any thread; does not call ``on_level`` (see ``update_level``).
        """
        with self._lock:
            self.received += 1
            if len(self._entries) >= self.capacity:
                self.dropped += 1
                return False
            self._entries.append(InterruptMessage(itype, data))
            return True

    def pop(self) -> InterruptMessage | None:
        """Remove and return the oldest entry, or None when empty.

        Machine lock held: reports the level when the queue runs empty.
        """
        with self._lock:
            if not self._entries:
                return None
            entry = self._entries.popleft()
            self.popped += 1
        self.update_level()
        return entry

    def update_level(self) -> None:
        """Call ``on_level`` if the non-empty level changed since last reported.

        Machine lock held.
        """
        with self._lock:
            level = bool(self._entries)
            if level == self._reported:
                return
            self._reported = level
        if self.on_level is not None:
            self.on_level(level)

    @property
    def level(self) -> bool:
        """Whether the queue holds anything (the IRQ level a device shows)."""
        return bool(self._entries)

    def clear(self) -> None:
        """Drop every queued entry (they are not counted as dropped); machine lock held."""
        with self._lock:
            self._entries.clear()
        self.update_level()

    def __len__(self) -> int:
        return len(self._entries)

    def _check_invariants(self) -> None:
        with self._lock:
            assert len(self._entries) <= self.capacity
            assert self.received >= self.popped + self.dropped + len(self._entries)

    def __repr__(self) -> str:
        return (f"<InterruptQueue {len(self._entries)}/{self.capacity} received={self.received}"
                f" dropped={self.dropped}>")
