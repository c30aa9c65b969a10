"""Which implementation runs the link's forwarded-access hot path.

The per-access loops of a link (the requester's send-and-receive, the
server thread's receive-serve-reply) exist twice: in Python (session.py)
and in C (``_hotpath.c``, built by ``pip install`` with the machine's C
compiler). They accept exactly the same frames; the C one removes the
Python overhead of each system call, which was most of a round trip.

``MEMEXPOSE_HOTPATH`` chooses, read when a link connects: ``c`` (fail if
the extension is missing), ``python``, or unset (C when built).
"""

from __future__ import annotations

import os
from types import ModuleType

from memexpose.errors import ConfigError, LinkBusyError
from memexpose.link import codec

try:
    from memexpose.link import _hotpath as _native
except ImportError:  # built without a C compiler: the Python path serves
    _native = None
else:
    _native.configure(codec.READ_LEN, codec.WRITE_LEN, codec.READ_REPLY_LEN,
                      codec.RESULT_SHARE_LEN, codec._WANT_SHARE_BIT, codec._ACCESS_TAIL_BAD,
                      LinkBusyError)

__all__ = ["ENV", "native_available", "selected"]

ENV = "MEMEXPOSE_HOTPATH"


def native_available() -> bool:
    """Whether the C hot path was built."""
    return _native is not None


def selected() -> ModuleType | None:
    """The C module to use for a new link, or None for the Python path.

    Raises:
        ConfigError: ``MEMEXPOSE_HOTPATH`` is unknown, or asks for C that
            was not built.
    """
    want = os.environ.get(ENV, "").strip().lower()
    if want in ("", "auto"):
        return _native
    if want == "python":
        return None
    if want == "c":
        if _native is None:
            raise ConfigError(f"{ENV}=c, but memexpose.link._hotpath was not built; "
                              "reinstall with a C compiler (make venv), or set "
                              f"{ENV}=python")
        return _native
    raise ConfigError(f"{ENV}={want!r}: expected 'c', 'python' or 'auto'")
