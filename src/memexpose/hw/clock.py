"""A virtual clock with timers: QEMU's ``QEMU_CLOCK_VIRTUAL``, deterministic.

Device models that do something "later" (edu's DMA 100 ms after the command,
its factorial) arm a ``Timer`` on the machine's ``VirtualClock``. Time moves
only when someone steps the clock: the machine's run loop, or a test through
``clock.step(ns)`` (what qtest's ``clock_step`` does for QEMU). Nothing runs
on a thread of its own, so a test sees the same result every time.

Concurrency: timers fire inside ``step`` with the machine lock held (the
clock takes it). Arming or deleting a timer takes the lock too, so device
code that already holds it pays only a re-entrant acquire.
"""

from __future__ import annotations

import heapq
import itertools
import threading
from collections.abc import Callable

from memexpose.errors import HwModelError

__all__ = ["Timer", "VirtualClock"]


class Timer:
    """One timer on a ``VirtualClock``; create it with ``clock.new_timer``.

    A timer is armed (``pending``) or idle. ``mod`` re-arms it at an absolute
    virtual time; ``delete`` disarms it. It fires at most once per arming.
    """

    __slots__ = ("_clock", "_token", "callback", "expire_ns", "name", "pending")

    def __init__(self, clock: VirtualClock, callback: Callable[[], None], name: str) -> None:
        self._clock = clock
        self.callback = callback
        self.name = name
        self.expire_ns = -1
        self.pending = False
        self._token = 0

    def mod(self, expire_ns: int) -> None:
        """Arm the timer to fire at virtual time ``expire_ns`` (replacing any earlier arming).

        A time in the past fires at the next ``step``.
        """
        self._clock._arm(self, expire_ns)

    def mod_in(self, delta_ns: int) -> None:
        """Arm the timer ``delta_ns`` nanoseconds from now."""
        if delta_ns < 0:
            raise HwModelError(f"timer {self.name!r}: negative delay {delta_ns} ns")
        self._clock._arm(self, self._clock.now_ns + delta_ns)

    def delete(self) -> None:
        """Disarm the timer (QEMU's ``timer_del``); a no-op when idle."""
        self._clock._disarm(self)

    def __repr__(self) -> str:
        state = f"at {self.expire_ns} ns" if self.pending else "idle"
        return f"<Timer {self.name!r} {state}>"


class VirtualClock:
    """Virtual nanoseconds that advance only when stepped; timers fire in order.

    Args:
        lock: the machine lock; timers fire with it held. A new ``RLock`` when None.

    Invariants:
        * ``now_ns`` never decreases;
        * an armed timer has exactly one live heap entry (older entries carry
          a stale token and are skipped);
        * timers fire in (expiry, arming order).
    """

    def __init__(self, lock: threading.RLock | None = None) -> None:
        self.lock = lock if lock is not None else threading.RLock()
        self._now = 0
        self._heap: list[tuple[int, int, int, Timer]] = []
        self._seq = itertools.count()
        self._stepping = False
        self.fired = 0
        """How many timer callbacks ran (statistics)."""

    @property
    def now_ns(self) -> int:
        """The current virtual time in nanoseconds."""
        return self._now

    def new_timer(self, callback: Callable[[], None], name: str = "timer") -> Timer:
        """Return an idle timer that calls ``callback()`` (machine lock held) when it fires."""
        return Timer(self, callback, name)

    def _arm(self, timer: Timer, expire_ns: int) -> None:
        with self.lock:
            timer._token += 1
            timer.expire_ns = expire_ns
            timer.pending = True
            heapq.heappush(self._heap, (expire_ns, next(self._seq), timer._token, timer))

    def _disarm(self, timer: Timer) -> None:
        with self.lock:
            timer._token += 1
            timer.pending = False

    def deadline_ns(self) -> int | None:
        """Return the expiry of the next armed timer, or None when none is armed."""
        with self.lock:
            heap = self._heap
            while heap and (heap[0][2] != heap[0][3]._token or not heap[0][3].pending):
                heapq.heappop(heap)
            return heap[0][0] if heap else None

    def step(self, ns: int | None = None) -> int:
        """Advance the clock and fire every timer that falls due, in order.

        Args:
            ns: nanoseconds to advance (0 fires only what is already due).
                None advances to the next deadline (qtest's bare
                ``clock_step``), or not at all when no timer is armed.

        Returns:
            The new virtual time.

        Raises:
            HwModelError: a negative ``ns``, or ``step`` called from a timer.
        """
        if ns is not None and ns < 0:
            raise HwModelError(f"cannot step the clock back ({ns} ns)")
        with self.lock:
            if self._stepping:
                raise HwModelError("VirtualClock.step called from a timer callback; "
                                   "arm another timer instead")
            if ns is None:
                deadline = self.deadline_ns()
                target = self._now if deadline is None else max(deadline, self._now)
            else:
                target = self._now + ns
            self._stepping = True
            try:
                heap = self._heap
                while heap and heap[0][0] <= target:
                    expire, _, token, timer = heapq.heappop(heap)
                    if token != timer._token or not timer.pending:
                        continue
                    timer.pending = False
                    if expire > self._now:
                        self._now = expire
                    self.fired += 1
                    timer.callback()
                self._now = target
            finally:
                self._stepping = False
            return self._now

    def __repr__(self) -> str:
        return f"<VirtualClock {self._now} ns, {len(self._heap)} heap entries>"
