"""Capture ``info mtree`` from an installed QEMU over QMP on stdio.

``capture_mtree("qemu-system-x86_64", ["-M", "pc"])`` starts::

    qemu-system-x86_64 -accel tcg -display none -nodefaults -no-user-config \\
        -S -qmp stdio -M pc

reads the QMP greeting, sends ``qmp_capabilities``, runs the HMP commands
``info mtree -o -D``, ``info mtree -f -o`` and ``info mtree -f`` through
``human-monitor-command``, converts the monitor's CRLF to LF, and sends
``quit``. The guest never runs (``-S``). No socket is bound: QMP travels on
QEMU's stdin/stdout, JSON one object per line.

The process is always reaped: on success it exits after ``quit``; on any
failure or timeout it is killed and waited for before the error propagates.
Only this process's pipes are read (with ``selectors``), so no thread is
started.

Errors (``memexpose.errors``):

* ``ConfigError``: the binary is not installed;
* ``LinkError``: QEMU exited early, did not answer in time, or answered a
  command with a QMP error (the message carries QEMU's stderr or error);
* ``ProtocolError``: a line on stdout that is not a JSON object.
"""

from __future__ import annotations

import json
import os
import selectors
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from memexpose.errors import ConfigError, LinkError, ProtocolError

__all__ = ["BASE_ARGS", "MtreeCapture", "QmpStdio", "capture_mtree"]

#: Arguments every capture uses: stopped TCG guest, no devices by default, QMP on stdio.
BASE_ARGS: tuple[str, ...] = ("-accel", "tcg", "-display", "none", "-nodefaults",
                              "-no-user-config", "-S", "-qmp", "stdio")

_STDERR_KEEP = 8192


@dataclass(frozen=True, slots=True)
class MtreeCapture:
    """``info mtree`` text of one QEMU run, LF line endings.

    Attributes:
        command: the full command line that was run.
        version: QEMU's version string (``query-version``), e.g. ``7.2.22 (Debian ...)``.
        tree_do: ``info mtree -o -D`` (parse this one).
        flat_o: ``info mtree -f -o`` (the hints, and the owner oracle).
        flat: ``info mtree -f``.
    """

    command: tuple[str, ...]
    version: str
    tree_do: str
    flat_o: str
    flat: str


class QmpStdio:
    """A QEMU started with ``-qmp stdio``: synchronous QMP commands on its pipes.

    Use as a context manager; leaving it always reaps the process (``quit``
    on a clean exit, else kill). One user at a time (no locking).

    Args:
        argv: the full command line (binary first; must contain ``-qmp stdio``).
        timeout: seconds each step (start, each command, exit) may take.
    """

    def __init__(self, argv: Sequence[str], *, timeout: float = 30.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, not {timeout!r}")
        self.argv = tuple(argv)
        self.timeout = timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._selector: selectors.BaseSelector | None = None
        self._stdout = bytearray()
        self._stderr = bytearray()
        self._eof = False
        self._next_id = 0
        self.greeting: dict[str, Any] | None = None

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> None:
        """Start QEMU, read its greeting and negotiate capabilities.

        Raises:
            ConfigError: the binary cannot be started.
            LinkError, ProtocolError: as ``command``.
        """
        try:
            self._proc = subprocess.Popen(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, close_fds=True)
        except OSError as exc:
            raise ConfigError(f"cannot start {self.argv[0]!r}: {exc}") from exc
        assert self._proc.stdout is not None and self._proc.stderr is not None
        self._selector = selectors.DefaultSelector()
        for pipe in (self._proc.stdout, self._proc.stderr):
            os.set_blocking(pipe.fileno(), False)
            self._selector.register(pipe, selectors.EVENT_READ)
        try:
            self.greeting = self._read_message(time.monotonic() + self.timeout, "the greeting")
            if "QMP" not in self.greeting:
                raise ProtocolError(f"expected the QMP greeting, got {self.greeting!r}")
            self.command("qmp_capabilities")
        except BaseException:
            self.kill()
            raise

    def __enter__(self) -> QmpStdio:
        self.start()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if exc_type is None:
            self.quit()
        else:
            self.kill()

    def quit(self) -> int:
        """Send ``quit`` and wait for the exit; kill if it does not come in time.

        Returns:
            The exit status.
        """
        proc = self._proc
        if proc is None:
            return 0
        try:
            if proc.poll() is None:
                try:
                    self.command("quit")
                except (LinkError, ProtocolError):
                    pass  # it may close stdout before the reply is read
            return proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return proc.returncode
        finally:
            self._close()

    def kill(self) -> None:
        """Kill QEMU (if still running) and wait for it; safe to call twice."""
        proc = self._proc
        if proc is None:
            return
        try:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        finally:
            self._close()

    def _close(self) -> None:
        proc, self._proc = self._proc, None
        if self._selector is not None:
            self._selector.close()
            self._selector = None
        if proc is not None:
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass

    # -- commands -----------------------------------------------------------

    def command(self, name: str, **arguments: Any) -> Any:
        """Run a QMP command and return its ``return`` value (events are skipped).

        Raises:
            LinkError: QEMU answered with an error, exited, or timed out.
            ProtocolError: QEMU wrote something that is not a JSON object.
        """
        proc = self._proc
        if proc is None or proc.stdin is None:
            raise LinkError(f"QEMU is not running; cannot run {name!r} (call start() first)")
        self._next_id += 1
        ident = self._next_id
        message: dict[str, Any] = {"execute": name, "id": ident}
        if arguments:
            message["arguments"] = arguments
        try:
            proc.stdin.write(json.dumps(message).encode() + b"\n")
            proc.stdin.flush()
        except OSError as exc:
            raise LinkError(f"cannot send {name!r} to QEMU: {exc}{self._stderr_tail()}") from exc
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._read_message(deadline, f"the reply to {name!r}")
            if reply.get("id") != ident:
                continue  # an event, or a late reply to something else
            if "error" in reply:
                error = reply["error"]
                raise LinkError(f"QEMU refused {name!r}: {error.get('class')}: "
                                f"{error.get('desc')}")
            if "return" in reply:
                return reply["return"]

    def hmp(self, command_line: str) -> str:
        """Run a human-monitor command and return its output with LF line endings."""
        out = self.command("human-monitor-command", **{"command-line": command_line})
        return str(out).replace("\r\n", "\n")

    def _read_message(self, deadline: float, what: str) -> dict[str, Any]:
        while True:
            newline = self._stdout.find(b"\n")
            if newline >= 0:
                line = bytes(self._stdout[:newline])
                del self._stdout[:newline + 1]
                if not line.strip():
                    continue
                try:
                    message = json.loads(line)
                except ValueError as exc:
                    raise ProtocolError(
                        f"QEMU wrote a line that is not JSON while we waited for {what}: "
                        f"{line[:200]!r}") from exc
                if not isinstance(message, dict):
                    raise ProtocolError(f"QEMU wrote {message!r}, not a JSON object")
                return message
            if self._eof:
                status = None
                if self._proc is not None:
                    try:  # it is exiting: give it a moment to report its status
                        status = self._proc.wait(timeout=min(2.0, self.timeout))
                    except subprocess.TimeoutExpired:
                        pass
                raise LinkError(f"QEMU closed its QMP stream (exit status {status}) before "
                                f"{what}{self._stderr_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LinkError(f"QEMU did not send {what} within {self.timeout:g} s"
                                f"{self._stderr_tail()}")
            self._pump(remaining)

    def _pump(self, timeout: float) -> None:
        assert self._selector is not None and self._proc is not None
        for key, _ in self._selector.select(timeout):
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            if key.fileobj is self._proc.stdout:
                if chunk:
                    self._stdout += chunk
                else:
                    self._eof = True
                    self._selector.unregister(key.fileobj)
            elif chunk:
                self._stderr += chunk
                del self._stderr[:-_STDERR_KEEP]
            else:
                self._selector.unregister(key.fileobj)

    def _stderr_tail(self) -> str:
        if self._proc is not None and self._proc.stderr is not None and self._selector is not None:
            try:  # collect what is already there, without waiting
                self._pump(0)
            except (OSError, ValueError):
                pass
        text = self._stderr.decode(errors="replace").strip()
        return f"; QEMU stderr: {text}" if text else ""


def capture_mtree(binary: str, machine_args: Sequence[str], *, timeout: float = 30.0,
                  run_for: float = 0.0) -> MtreeCapture:
    """Run QEMU stopped and return its ``info mtree`` texts.

    Args:
        binary: ``qemu-system-*`` name or path.
        machine_args: arguments after ``BASE_ARGS``, e.g. ``["-M", "pc"]``.
        timeout: seconds each step may take.
        run_for: when positive, let the guest (firmware) run that many seconds
            (``cont``, then ``stop``) before capturing, so it can program
            BARs, PAM and bus mastering. 0 captures the machine as created.

    Returns:
        The three texts, the version and the command line.

    Raises:
        ConfigError: the binary is not installed.
        LinkError: QEMU exited early (bad arguments: see the message), timed
            out, or refused a command.
        ProtocolError: QEMU's QMP output was not JSON.
    """
    path = shutil.which(binary)
    if path is None:
        raise ConfigError(f"{binary} not installed: run `sudo scripts/install-qemu.sh`")
    argv = (path, *BASE_ARGS, *machine_args)
    if run_for < 0:
        raise ValueError(f"run_for must be >= 0 seconds, not {run_for!r}")
    with QmpStdio(argv, timeout=timeout) as qmp:
        if run_for:
            qmp.command("cont")
            time.sleep(run_for)
            qmp.command("stop")
        version = qmp.command("query-version")
        package = str(version.get("package", "")).strip()
        qemu = version.get("qemu", {})
        text = f"{qemu.get('major')}.{qemu.get('minor')}.{qemu.get('micro')}"
        tree_do = qmp.hmp("info mtree -o -D")
        flat_o = qmp.hmp("info mtree -f -o")
        flat = qmp.hmp("info mtree -f")
    return MtreeCapture(command=argv, version=f"{text} {package}".strip(), tree_do=tree_do,
                        flat_o=flat_o, flat=flat)
