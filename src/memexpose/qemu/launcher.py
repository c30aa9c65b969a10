"""Launch stock QEMU with shared RAM, qtest and QMP, and plug remote devices into it.

``QemuVM`` starts ``qemu-system-*`` stopped (``-S``), with:

* guest RAM in a shared memfd backend (``-object memory-backend-memfd,
  id=ram,size=S,share=on -machine memory-backend=ram``), so a remote
  device process can map it (``SYNC_SYSMEM`` carries its fds);
* ``-accel tcg`` or ``kvm`` (``accel="auto"`` picks KVM when ``/dev/kvm``
  answers ``KVM_GET_API_VERSION``; see ``kvm_usable``);
* qtest on a UNIX socket we listen on (the verbs of ``QtestClient``:
  ``readl``, ``outl``, ``clock_step``, ...), and QMP through the PyPI
  ``qemu.qmp`` client (``QmpSession``);
* inherited fds (``pass_fds``), for ``-device x-pci-proxy-dev,fd=N``.

``remote_device_pair`` makes the socketpair of one proxied device: one end
for QEMU, one for the device server. ``serve_device_argv`` is the command
line of ``memexpose serve-device`` for an inherited fd.

Shutdown: ``close`` sends QMP ``quit`` and waits for the reply (QEMU does not
exit when the qtest stream closes), then waits for the process, kills it
after a grace period, and removes the socket directory. Whoever starts a
``QemuVM`` closes it (``with QemuVM(...) as vm:``).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memexpose.errors import ConfigError, LinkError, ProtocolError
from memexpose.qemu.qmpclient import QmpSession
from memexpose.qemu.qtest import QtestClient, halt_bios_image, reap_qemu

__all__ = ["QemuVM", "kvm_usable", "remote_device_pair", "serve_device_argv"]

_KVM_GET_API_VERSION = 0xAE00
_KVM_API_VERSION = 12


def kvm_usable(path: str = "/dev/kvm") -> tuple[bool, str]:
    """Return ``(True, "")`` when KVM can be used here, else ``(False, why)``.

    Opens ``path`` read-write and asks ``KVM_GET_API_VERSION`` (12).
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        return False, f"cannot open {path}: {exc.strerror}"
    try:
        version = fcntl.ioctl(fd, _KVM_GET_API_VERSION)
    except OSError as exc:
        return False, f"{path}: KVM_GET_API_VERSION failed: {exc.strerror}"
    finally:
        os.close(fd)
    if version != _KVM_API_VERSION:
        return False, f"{path}: KVM API version {version}, expected {_KVM_API_VERSION}"
    return True, ""


def remote_device_pair() -> tuple[socket.socket, socket.socket]:
    """Return ``(qemu_end, device_end)``: a connected ``AF_UNIX`` stream socketpair.

    Pass ``qemu_end.fileno()`` to QEMU (``pass_fds`` and
    ``-device x-pci-proxy-dev,fd=N``) and close it here once QEMU runs;
    serve ``device_end`` (``RemoteDeviceServer`` or ``serve_device_argv``).
    """
    qemu_end, device_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    return qemu_end, device_end


def serve_device_argv(device: str, fd: int, options: dict[str, str] | None = None, *,
                      verbose: int = 0) -> list[str]:
    """Return the command line of ``memexpose serve-device DEVICE --fd FD [--opt K=V ...]``.

    It runs this Python (``sys.executable``), so it works inside a virtual
    environment whose ``bin`` is not on ``PATH``.
    """
    argv = [sys.executable, "-c", "import sys; from memexpose.cli import main; "
            "main(sys.argv[1:])"]
    argv += ["-v"] * verbose
    argv += ["serve-device", device, "--fd", str(fd)]
    for key, value in (options or {}).items():
        argv += ["--opt", f"{key}={value}"]
    return argv


class QemuVM(QtestClient):
    """A stock QEMU with memfd-backed shared RAM, driven over qtest and QMP.

    Args:
        args: extra QEMU arguments (``-device ...``).
        binary: the QEMU binary.
        machine: ``-M`` value (its ``memory-backend`` is set here).
        accel: ``"tcg"``, ``"kvm"`` or ``"auto"`` (KVM when usable).
        ram_size: bytes of guest RAM (a multiple of 1 MiB).
        share_ram: back RAM with a shared memfd (needed for remote devices'
            DMA); False gives QEMU's plain anonymous RAM.
        halt_bios: boot a 64 KiB BIOS that only halts.
        pass_fds: descriptors QEMU inherits (same numbers).
        timeout: seconds for any single answer.

    Attributes:
        accel: the accelerator actually used (``tcg`` or ``kvm``).
        qmp_session: the ``QmpSession`` while running.

    Invariants:
        * while started, exactly one QEMU process belongs to the object, and
          ``qmp_session`` is connected to it.
    """

    def __init__(self, args: Sequence[str] = (), *, binary: str = "qemu-system-x86_64",
                 machine: str = "q35", accel: str = "auto", ram_size: int = 256 << 20,
                 share_ram: bool = True, halt_bios: bool = True,
                 pass_fds: Sequence[int] = (), timeout: float = 10.0) -> None:
        super().__init__(args, binary=binary, machine=machine, halt_bios=halt_bios,
                         timeout=timeout)
        if accel not in ("tcg", "kvm", "auto"):
            raise ConfigError(f"accel must be 'tcg', 'kvm' or 'auto', not {accel!r}")
        if ram_size <= 0 or ram_size % (1 << 20):
            raise ConfigError(f"ram_size {ram_size:#x} must be a positive multiple of 1 MiB")
        if accel == "auto":
            accel = "kvm" if kvm_usable()[0] else "tcg"
        self.accel = accel
        self.ram_size = ram_size
        self.share_ram = share_ram
        self.pass_fds = tuple(pass_fds)
        self.qmp_session: QmpSession | None = None

    def argv(self, qtest_path: str, qmp_path: str, bios: str | None) -> list[str]:
        """Return the QEMU command line (without the binary's path resolution)."""
        machine = self.machine
        argv = [self.binary]
        if self.share_ram:
            argv += ["-object", f"memory-backend-memfd,id=ram,size={self.ram_size},share=on"]
            machine += ",memory-backend=ram"
        argv += ["-M", machine, "-m", f"{self.ram_size >> 20}M", "-accel", self.accel, "-S",
                 "-display", "none", "-nodefaults", "-no-user-config",
                 "-qtest", f"unix:{qtest_path}", "-qtest-log", "/dev/null",
                 "-qmp", f"unix:{qmp_path}"]
        if bios is not None:
            argv += ["-bios", bios]
        return argv + self.extra_args

    def start(self) -> QemuVM:
        """Start QEMU, accept its qtest and QMP connections; return self.

        Raises:
            ConfigError: the binary is not installed or cannot start.
            LinkError: QEMU exited or did not connect in time (its output is
                in the message).
        """
        if self._proc is not None:
            raise LinkError("QemuVM.start: QEMU is already running")
        path = shutil.which(self.binary)
        if path is None:
            raise ConfigError(
                f"{self.binary} not installed; install QEMU (scripts/install-qemu.sh)")
        self._dir = tempfile.mkdtemp(prefix="memexpose-qemu-")
        qtest_srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            qtest_path = os.path.join(self._dir, "qtest.sock")
            qmp_path = os.path.join(self._dir, "qmp.sock")
            qtest_srv.bind(qtest_path)
            qtest_srv.listen(1)
            qtest_srv.settimeout(self.timeout)
            self.qmp_session = QmpSession(f"qemu-{os.getpid()}", timeout=self.timeout)
            self.qmp_session.listen(qmp_path)
            bios = None
            if self.halt_bios:
                bios = os.path.join(self._dir, "halt.bin")
                Path(bios).write_bytes(halt_bios_image())
            argv = self.argv(qtest_path, qmp_path, bios)
            argv[0] = path
            self._log_path = Path(self._dir) / "qemu.log"
            with open(self._log_path, "wb") as log:
                try:
                    self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                  stderr=subprocess.STDOUT,
                                                  pass_fds=self.pass_fds)
                except OSError as exc:
                    raise ConfigError(f"cannot start {path}: {exc}") from exc
            self._qtest = self._accept(qtest_srv, "qtest")
            try:
                self.qmp_session.accept()
            except LinkError as exc:
                raise LinkError(f"QEMU did not connect QMP: {exc}{self._log_tail()}") from exc
        except BaseException:
            self.close()
            raise
        finally:
            qtest_srv.close()
        return self

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command (through ``qemu.qmp``) and return its ``return`` value.

        Raises:
            LinkError: QEMU refused it, exited, or timed out.
        """
        if self.qmp_session is None:
            raise LinkError(f"QemuVM is not started; cannot run QMP {command!r}")
        return self.qmp_session.execute(command, **arguments)

    @property
    def pid(self) -> int | None:
        """QEMU's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def alive(self) -> bool:
        """Whether the QEMU process is still running."""
        return self._proc is not None and self._proc.poll() is None

    def close(self) -> None:
        """Quit QEMU (QMP ``quit``, reply awaited; then kill), reap it, clean up. Idempotent."""
        proc = self._proc
        session, self.qmp_session = self.qmp_session, None
        if session is not None:
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(LinkError, ProtocolError, OSError):
                    session.timeout = min(session.timeout, 2.0)
                    session.quit()
            session.close()
        if self._qtest is not None:
            self._qtest.close()
            self._qtest = None
        reap_qemu(proc, self._dir)
        self._proc = None
        self._dir = None
        self.running = False

    def __enter__(self) -> QemuVM:
        return self.start() if self._proc is None else self

    def __repr__(self) -> str:
        state = "running" if self._proc is not None else "closed"
        return f"<QemuVM {self.binary} -M {self.machine} -accel {self.accel} {state}>"
