"""Drive stock QEMU through its qtest protocol, with QMP beside it.

``QtestClient`` starts ``qemu-system-*`` with ``-qtest`` and ``-qmp`` on two
UNIX sockets that *we* listen on (QEMU connects as a client, as libqtest
does), so QEMU's own stdout (edu prints "EDU: clamping DMA ...") never mixes
with protocol lines. Replies are ``OK ...`` or ``FAIL ...``; interrupt
lines (``IRQ raise N`` / ``IRQ lower N``) may arrive before any reply and
are recorded.

Debian's QEMU 7.2 has no qtest accelerator, so the machine runs under
``-accel tcg -S`` and ``clock_step`` is unknown to it. ``clock_step`` here
then falls back to real time: it lets the VM run (QMP ``cont``) and sleeps;
the virtual clock follows the host clock while the VM runs. For that the
client boots a 64 KiB BIOS that only halts (``halt_bios=True``), so no
firmware touches the devices.

The command methods (``readl``, ``outl``, ``read``, ``clock_step``, ...)
have the same names and meanings as ``memexpose.hw.QtestLikeDriver``, so one
script can drive both.

Errors (``memexpose.errors``): ``ConfigError`` when the binary is missing or
cannot start; ``LinkError`` when QEMU exits, does not answer in time or
answers ``FAIL``; ``ProtocolError`` for a line that is neither.

Whoever starts a client closes it (``with QtestClient(...) as qt:``): QEMU is
asked to quit over QMP, killed if it does not, and always reaped; the socket
directory is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from memexpose.errors import ConfigError, LinkError, ProtocolError

__all__ = ["QtestClient", "halt_bios_image", "reap_qemu"]

_BIOS_SIZE = 64 * 1024


def halt_bios_image() -> bytes:
    """Return a 64 KiB x86 BIOS image whose reset vector is ``cli; hlt; jmp $-1``."""
    image = bytearray(b"\xf4" * _BIOS_SIZE)  # hlt everywhere
    image[0xFFF0:0xFFF4] = b"\xfa\xf4\xeb\xfd"  # cli; hlt; jmp back to hlt
    return bytes(image)


def reap_qemu(proc: subprocess.Popen[bytes] | None, workdir: str | Path | None) -> None:
    """Wait for a QEMU that was asked to quit (kill it after 5 s), then remove its workdir.

    The shared tail of every stock-QEMU launcher's ``close``: no process and no
    socket folder outlive it.
    """
    if proc is not None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if workdir is not None:
        shutil.rmtree(workdir, ignore_errors=True)


class QtestClient:
    """One stock QEMU process driven over qtest (and QMP).

    Args:
        args: extra QEMU arguments (devices, memory, ...).
        binary: the QEMU binary.
        machine: ``-M`` value.
        halt_bios: boot a BIOS that only halts (so ``clock_step`` can let the
            VM run without firmware reprogramming devices).
        timeout: seconds to wait for any single answer.

    Invariants:
        * ``irq_levels[n]`` is the last level QEMU reported for intercepted
          line ``n``; ``irq_events`` lists every report in order;
        * while the client is open, exactly one QEMU process belongs to it.
    """

    def __init__(self, args: Sequence[str] = (), *, binary: str = "qemu-system-x86_64",
                 machine: str = "q35", halt_bios: bool = True, timeout: float = 10.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.binary = binary
        self.machine = machine
        self.extra_args = list(args)
        self.halt_bios = halt_bios
        self.timeout = timeout
        self.irq_levels: dict[int, bool] = {}
        self.irq_events: list[tuple[str, int]] = []
        self.running = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: str | None = None
        self._qtest: socket.socket | None = None
        self._qtest_buf = b""
        self._qmp: socket.socket | None = None
        self._qmp_buf = b""
        self._log_path: Path | None = None

    # -- lifecycle --------------------------------------------------------------

    def start(self) -> QtestClient:
        """Start QEMU and connect both sockets; return self.

        Raises:
            ConfigError: the binary is not installed or cannot start.
            LinkError: QEMU exited or did not connect in time.
        """
        if self._proc is not None:
            raise LinkError("QtestClient.start: QEMU is already running")
        path = shutil.which(self.binary)
        if path is None:
            raise ConfigError(
                f"{self.binary} not installed; install QEMU (scripts/install-qemu.sh)")
        self._dir = tempfile.mkdtemp(prefix="memexpose-qtest-")
        listeners = []
        try:
            qtest_path = os.path.join(self._dir, "qtest.sock")
            qmp_path = os.path.join(self._dir, "qmp.sock")
            for sock_path in (qtest_path, qmp_path):
                srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                srv.bind(sock_path)
                srv.listen(1)
                srv.settimeout(self.timeout)
                listeners.append(srv)
            argv = [path, "-M", self.machine, "-accel", "tcg", "-S", "-display", "none",
                    "-nodefaults", "-no-user-config", "-qtest", f"unix:{qtest_path}",
                    "-qtest-log", "/dev/null", "-qmp", f"unix:{qmp_path}"]
            if self.halt_bios:
                bios = os.path.join(self._dir, "halt.bin")
                Path(bios).write_bytes(halt_bios_image())
                argv += ["-bios", bios]
            argv += self.extra_args
            self._log_path = Path(self._dir) / "qemu.log"
            with open(self._log_path, "wb") as log:
                try:
                    self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                                  stderr=subprocess.STDOUT)
                except OSError as exc:
                    raise ConfigError(f"cannot start {path}: {exc}") from exc
            self._qtest = self._accept(listeners[0], "qtest")
            self._qmp = self._accept(listeners[1], "QMP")
            greeting = self._qmp_line()
            if "QMP" not in greeting:
                raise ProtocolError(f"expected the QMP greeting, got {greeting!r}")
            self.qmp("qmp_capabilities")
        except BaseException:
            self.close()
            raise
        finally:
            for srv in listeners:
                srv.close()
        return self

    def _accept(self, srv: socket.socket, what: str) -> socket.socket:
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                conn, _ = srv.accept()
                conn.settimeout(self.timeout)
                return conn
            except TimeoutError:
                pass
            if self._proc is not None and self._proc.poll() is not None:
                raise LinkError(f"QEMU exited ({self._proc.returncode}) before connecting the "
                                f"{what} socket{self._log_tail()}")
            if time.monotonic() > deadline:
                raise LinkError(f"QEMU did not connect the {what} socket within "
                                f"{self.timeout} s{self._log_tail()}")

    def close(self) -> None:
        """Quit QEMU (QMP ``quit``, then kill), reap it, and remove the sockets. Idempotent."""
        proc = self._proc
        if proc is not None and proc.poll() is None and self._qmp is not None:
            # Wait for the reply: closing the socket right after the command can
            # make QEMU drop it unread (then only the kill below ends it).
            with contextlib.suppress(OSError, LinkError, ProtocolError, ValueError):
                self._qmp.settimeout(2.0)
                self.qmp("quit")
        for sock in (self._qtest, self._qmp):
            if sock is not None:
                sock.close()
        self._qtest = self._qmp = None
        reap_qemu(proc, self._dir)
        self._proc = None
        self._dir = None
        self.running = False

    def __enter__(self) -> QtestClient:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def log(self) -> str:
        """What QEMU wrote on stdout/stderr so far."""
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")

    def _log_tail(self) -> str:
        text = self.log.strip()
        return f"; QEMU said: {text[-500:]}" if text else ""

    # -- qtest ------------------------------------------------------------------

    def command(self, line: str) -> str:
        """Send one qtest command line; return the text after ``OK`` (may be empty).

        Raises:
            LinkError: QEMU answered ``FAIL``, exited, or timed out.
            ProtocolError: a line that is neither a reply nor an IRQ report.
        """
        if self._qtest is None:
            raise LinkError(f"QtestClient is not started; cannot send {line!r}")
        try:
            self._qtest.sendall(line.encode() + b"\n")
        except OSError as exc:
            raise LinkError(f"cannot send {line!r} to QEMU: {exc}{self._log_tail()}") from exc
        while True:
            reply = self._qtest_line(line)
            if reply.startswith("IRQ "):
                self._record_irq(reply)
                continue
            if reply == "OK" or reply.startswith("OK "):
                return reply[3:]
            if reply.startswith("FAIL"):
                raise LinkError(f"QEMU refused qtest command {line!r}: {reply}")
            raise ProtocolError(f"unexpected qtest reply to {line!r}: {reply!r}")

    def _qtest_line(self, what: str) -> str:
        assert self._qtest is not None
        while b"\n" not in self._qtest_buf:
            try:
                chunk = self._qtest.recv(65536)
            except TimeoutError as exc:
                raise LinkError(f"QEMU did not answer {what!r} within {self.timeout} s") from exc
            if not chunk:
                raise LinkError(f"QEMU closed the qtest socket while answering {what!r}"
                                f"{self._log_tail()}")
            self._qtest_buf += chunk
        line, self._qtest_buf = self._qtest_buf.split(b"\n", 1)
        return line.decode(errors="replace").rstrip("\r")

    def _record_irq(self, line: str) -> None:
        parts = line.split()
        if len(parts) != 3 or parts[1] not in ("raise", "lower"):
            raise ProtocolError(f"malformed qtest IRQ line {line!r}")
        n = int(parts[2], 0)
        self.irq_events.append((parts[1], n))
        self.irq_levels[n] = parts[1] == "raise"

    def _value(self, line: str) -> int:
        return int(self.command(line).split()[0], 16)

    def readb(self, addr: int) -> int:
        """Read 1 byte of guest memory (the byte path, as a CPU load does)."""
        return self._value(f"readb {addr:#x}")

    def readw(self, addr: int) -> int:
        """Read 2 bytes, in the target's byte order."""
        return self._value(f"readw {addr:#x}")

    def readl(self, addr: int) -> int:
        """Read 4 bytes, in the target's byte order."""
        return self._value(f"readl {addr:#x}")

    def readq(self, addr: int) -> int:
        """Read 8 bytes, in the target's byte order."""
        return self._value(f"readq {addr:#x}")

    def writeb(self, addr: int, value: int) -> None:
        """Write 1 byte of guest memory."""
        self.command(f"writeb {addr:#x} {value & 0xFF:#x}")

    def writew(self, addr: int, value: int) -> None:
        """Write 2 bytes, in the target's byte order."""
        self.command(f"writew {addr:#x} {value & 0xFFFF:#x}")

    def writel(self, addr: int, value: int) -> None:
        """Write 4 bytes, in the target's byte order."""
        self.command(f"writel {addr:#x} {value & 0xFFFFFFFF:#x}")

    def writeq(self, addr: int, value: int) -> None:
        """Write 8 bytes, in the target's byte order."""
        self.command(f"writeq {addr:#x} {value & 0xFFFFFFFFFFFFFFFF:#x}")

    def inb(self, port: int) -> int:
        """Read a byte from an I/O port."""
        return self._value(f"inb {port:#x}")

    def inw(self, port: int) -> int:
        """Read 2 bytes from an I/O port."""
        return self._value(f"inw {port:#x}")

    def inl(self, port: int) -> int:
        """Read 4 bytes from an I/O port."""
        return self._value(f"inl {port:#x}")

    def outb(self, port: int, value: int) -> None:
        """Write a byte to an I/O port."""
        self.command(f"outb {port:#x} {value & 0xFF:#x}")

    def outw(self, port: int, value: int) -> None:
        """Write 2 bytes to an I/O port."""
        self.command(f"outw {port:#x} {value & 0xFFFF:#x}")

    def outl(self, port: int, value: int) -> None:
        """Write 4 bytes to an I/O port."""
        self.command(f"outl {port:#x} {value & 0xFFFFFFFF:#x}")

    def read(self, addr: int, size: int) -> bytes:
        """Read ``size`` bytes of guest memory as a byte string (empty for 0)."""
        if size == 0:
            return b""
        text = self.command(f"read {addr:#x} {size:#x}").split()[0]
        data = bytes.fromhex(text[2:]) if text.startswith("0x") else bytes.fromhex(text)
        if len(data) != size:
            raise ProtocolError(f"qtest read of {size} bytes at {addr:#x} returned {len(data)}")
        return data

    def write(self, addr: int, data: bytes) -> None:
        """Write ``data`` to guest memory (a no-op when empty)."""
        if data:
            self.command(f"write {addr:#x} {len(data):#x} 0x{bytes(data).hex()}")

    def irq_intercept_in(self, qom_path: str) -> None:
        """Intercept the GPIO inputs of ``qom_path`` (e.g. ``ioapic``); see ``irq_levels``."""
        self.command(f"irq_intercept_in {qom_path}")

    def irq_level(self, n: int) -> bool:
        """Return the last reported level of intercepted line ``n`` (False if never reported)."""
        return self.irq_levels.get(n, False)

    def clock_step(self, ns: int | None = None) -> None:
        """Advance the virtual clock by ``ns`` nanoseconds (to the next deadline when None).

        With a qtest accelerator this is qtest's ``clock_step``. Without one
        (Debian's build) the VM is let run (QMP ``cont``) and this sleeps
        ``ns`` of real time (10 ms when None); the virtual clock follows.
        """
        if not self.running:
            self.qmp("cont")
            self.running = True
        time.sleep((ns if ns is not None else 10_000_000) / 1e9)
        # A round trip makes sure QEMU's main loop ran since the sleep.
        self.command("readb 0x0")

    # -- QMP --------------------------------------------------------------------

    def qmp(self, command: str, **arguments: Any) -> Any:
        """Run a QMP command and return its ``return`` value (events are skipped).

        Raises:
            LinkError: QEMU answered with an error, exited, or timed out.
        """
        msg: dict[str, Any] = {"execute": command}
        if arguments:
            msg["arguments"] = arguments
        self._qmp_send(msg)
        while True:
            reply = json.loads(self._qmp_line())
            if "event" in reply:
                continue
            if "error" in reply:
                error = reply["error"]
                raise LinkError(f"QEMU refused QMP {command!r}: {error.get('class')}: "
                                f"{error.get('desc')}")
            return reply.get("return")

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command (``info pci``) and return its text."""
        return str(self.qmp("human-monitor-command", **{"command-line": command_line}))

    def _qmp_send(self, msg: dict[str, Any]) -> None:
        if self._qmp is None:
            raise LinkError("QtestClient is not started; no QMP socket")
        try:
            self._qmp.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise LinkError(f"cannot send QMP {msg.get('execute')!r}: {exc}") from exc

    def _qmp_line(self) -> str:
        assert self._qmp is not None
        while b"\n" not in self._qmp_buf:
            try:
                chunk = self._qmp.recv(65536)
            except TimeoutError as exc:
                raise LinkError(f"QEMU did not answer on QMP within {self.timeout} s") from exc
            if not chunk:
                raise LinkError(f"QEMU closed the QMP socket{self._log_tail()}")
            self._qmp_buf += chunk
        line, self._qmp_buf = self._qmp_buf.split(b"\n", 1)
        text = line.decode(errors="replace").strip()
        if not text.startswith("{"):
            raise ProtocolError(f"QMP line is not a JSON object: {text!r}")
        return text

    def __repr__(self) -> str:
        state = "running" if self._proc is not None else "closed"
        return f"<QtestClient {self.binary} -M {self.machine} {state}>"
