"""QMP with QEMU's own client library (PyPI ``qemu.qmp``), used synchronously.

``QmpSession`` runs ``qemu.qmp.QMPClient`` on a private event loop (never
the thread's current loop) and offers blocking calls: ``listen``/``accept``
(QEMU connects to us: ``-qmp unix:PATH``), ``connect``, ``execute``, ``hmp``,
``getfd`` (pass a descriptor, e.g. for a hot-plugged ``x-pci-proxy-dev``)
and ``quit``. ``quit`` waits for QEMU's reply before the socket is closed:
closing right after sending can make QEMU drop the command unread.

``load_qemu_qmp()`` imports the library even when a package named ``qemu``
shadows it (the test suite's ``tests/qemu`` folder does, once ``tests`` is on
``sys.path``): it then loads the installed distribution's ``qemu/qmp`` by
path under a private module name.

Errors (``memexpose.errors``): ``ConfigError`` when the library is missing,
``LinkError`` when QEMU refuses a command, does not answer in time or goes away.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import importlib.util
import sys
from collections.abc import Coroutine
from pathlib import Path
from types import ModuleType
from typing import Any

from memexpose.errors import ConfigError, LinkError

__all__ = ["QmpSession", "load_qemu_qmp"]

_ALIAS = "_memexpose_pypi_qemu_qmp"


def load_qemu_qmp() -> ModuleType:
    """Return the PyPI ``qemu.qmp`` package (``QMPClient``, ``ExecuteError``, ...).

    Raises:
        ConfigError: the ``qemu.qmp`` distribution is not installed.
    """
    for name in ("qemu.qmp", _ALIAS):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "QMPClient"):
            return module
    try:
        module = importlib.import_module("qemu.qmp")
        if hasattr(module, "QMPClient"):
            return module
    except ImportError:
        pass
    # Shadowed: load the installed files under a name nobody else uses.
    try:
        dist = importlib.metadata.distribution("qemu.qmp")
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError("the QMP client library is missing: pip install qemu.qmp==0.0.6"
                          ) from exc
    init = Path(str(dist.locate_file("qemu/qmp/__init__.py")))
    spec = importlib.util.spec_from_file_location(_ALIAS, init,
                                                  submodule_search_locations=[str(init.parent)])
    if spec is None or spec.loader is None:
        raise ConfigError(f"cannot load qemu.qmp from {init}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[_ALIAS] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[_ALIAS]
        raise
    return module


class QmpSession:
    """One QMP connection, driven synchronously (one thread at a time).

    Args:
        name: the client's name in qemu.qmp's logs.
        timeout: seconds each call may take.

    Invariants:
        * ``_loop`` is private: it runs only inside this object's calls, and
          is closed by ``close``.
    """

    def __init__(self, name: str = "memexpose", *, timeout: float = 10.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self._qmp = load_qemu_qmp()
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._client = self._qmp.QMPClient(name)
        self._closed = False

    def _run(self, coro: Coroutine[Any, Any, Any], what: str,
             timeout: float | None = None) -> Any:
        if self._closed:
            coro.close()
            raise LinkError(f"QMP session is closed; cannot {what}")
        try:
            return self._loop.run_until_complete(
                asyncio.wait_for(coro, timeout if timeout is not None else self.timeout))
        except self._qmp.ExecuteError as exc:
            raise LinkError(f"QEMU refused QMP {what}: {exc.error_class}: {exc}") from exc
        except TimeoutError as exc:
            raise LinkError(f"QMP {what}: no answer within "
                            f"{timeout if timeout is not None else self.timeout} s") from exc
        except (self._qmp.QMPError, OSError, EOFError) as exc:
            raise LinkError(f"QMP {what} failed: {exc}") from exc

    def listen(self, path: str) -> None:
        """Listen on the UNIX socket ``path`` for QEMU (``-qmp unix:PATH``) to connect."""
        self._run(self._client.start_server(path), f"listen on {path}")

    def accept(self, timeout: float | None = None) -> None:
        """Wait for QEMU to connect, read the greeting and negotiate capabilities."""
        self._run(self._client.accept(), "accept", timeout)

    def connect(self, path: str) -> None:
        """Connect to QEMU's QMP server socket at ``path`` and negotiate."""
        self._run(self._client.connect(path), f"connect to {path}")

    def execute(self, command: str, **arguments: Any) -> Any:
        """Run ``command`` and return its ``return`` value.

        Raises:
            LinkError: QEMU answered with an error, timed out, or went away.
        """
        return self._run(self._client.execute(command, arguments or None), repr(command))

    def getfd(self, fd: int, fdname: str) -> None:
        """Pass ``fd`` to QEMU (``SCM_RIGHTS``) and name it ``fdname`` (QMP ``getfd``).

        Device properties that take an fd (``x-pci-proxy-dev,fd=NAME``) then
        accept the name; the caller may close its copy afterwards.
        """
        if self._closed:
            raise LinkError(f"QMP session is closed; cannot pass fd {fd}")
        try:
            self._client.send_fd_scm(fd)
        except (self._qmp.QMPError, OSError) as exc:
            raise LinkError(f"cannot pass fd {fd} to QEMU: {exc}") from exc
        self.execute("getfd", fdname=fdname)

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command (``info pci``) and return its text."""
        return str(self.execute("human-monitor-command", **{"command-line": command_line}))

    def quit(self) -> None:
        """Send ``quit`` and wait for its reply; then disconnect."""
        self.execute("quit")
        self.close()

    def close(self) -> None:
        """Disconnect and close the private event loop. Idempotent."""
        if self._closed:
            return
        try:
            self._run(self._client.disconnect(), "disconnect", 5.0)
        except LinkError:
            pass
        finally:
            self._closed = True
            self._loop.close()

    def __repr__(self) -> str:
        return f"<QmpSession {self._client.runstate.name.lower()}>"
