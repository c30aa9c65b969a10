"""The machine-lock check used by "machine lock held" methods (STYLE rule 11)."""

from __future__ import annotations

import threading

__all__ = ["lock_held"]


def lock_held(lock: threading.RLock) -> bool:
    """Return whether the calling thread holds ``lock`` (an ``RLock``).

    For ``assert lock_held(...)`` on entry to cold paths; the hot paths
    (forwarded accesses, serving) take or already hold the lock by
    construction and skip the check.
    """
    return lock._is_owned()  # type: ignore[attr-defined]
