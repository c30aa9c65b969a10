"""A QMP-subset monitor on a UNIX socket, so QEMU's own client can drive a VM.

Commands (QEMU's names and replies): ``qmp_capabilities``, ``query-status``,
``stop``, ``cont``, ``quit``, ``query-commands``, ``query-version`` and
``human-monitor-command`` with ``info mtree [-f] [-o] [-D]``, ``info pci``
and ``info status``. Events: ``STOP``, ``RESUME``, ``SHUTDOWN``.

One thread (started by ``start``, joined by ``close``) owns the listening
socket and every client socket: it reads commands, runs them, and writes
replies and events. Other threads only queue events and wake it, so no
socket ever has two writers. Several clients may connect; each negotiates
capabilities on its own.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import selectors
import socket
import stat
import threading
import time
from collections.abc import Callable
from typing import Any

from memexpose.errors import MachineError
from memexpose.machine.machine import Machine, RunState, StopReason

__all__ = ["QMP_VERSION", "QmpMonitor"]

log = logging.getLogger(__name__)

QMP_VERSION = {"qemu": {"major": 7, "minor": 2, "micro": 0}, "package": "memexpose"}
"""What the greeting claims: the QEMU release whose QMP dialect this speaks."""

_MAX_LINE = 1 << 20
_DECODER = json.JSONDecoder()


class _Client:
    __slots__ = ("buffer", "negotiated", "outbox", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.outbox = bytearray()
        self.negotiated = False


class QmpMonitor:
    """Serve QMP on ``path`` for ``machine``.

    Args:
        machine: the VM to control.
        path: the UNIX socket path; a stale socket file there is replaced.

    Raises:
        MachineError: ``path`` is in use by a live server, or is not a socket.

    Invariants:
        * only the monitor thread reads or writes client sockets;
        * after ``close`` the socket file is gone and the thread has ended.
    """

    def __init__(self, machine: Machine, path: str | os.PathLike[str]) -> None:
        self.machine = machine
        self.path = os.fspath(path)
        self._prepare_path()
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self._listener.bind(self.path)
            self._listener.listen(4)
        except OSError as exc:
            self._listener.close()
            raise MachineError(f"QMP monitor: cannot listen on {self.path!r}: "
                               f"{exc.strerror}") from exc
        self._listener.setblocking(False)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._events: list[dict[str, Any]] = []
        self._events_lock = threading.Lock()
        self._clients: list[_Client] = []
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._commands: dict[str, Callable[[dict[str, Any]], Any]] = {
            "qmp_capabilities": self._cmd_capabilities,
            "query-status": self._cmd_query_status,
            "query-version": lambda args: QMP_VERSION,
            "query-commands": lambda args: [{"name": n} for n in sorted(self._commands)],
            "stop": self._cmd_stop,
            "cont": self._cmd_cont,
            "quit": self._cmd_quit,
            "human-monitor-command": self._cmd_hmp,
        }
        machine.add_state_listener(self._state_changed)

    def _prepare_path(self) -> None:
        try:
            mode = os.stat(self.path).st_mode
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(mode):
            raise MachineError(f"QMP monitor: {self.path!r} exists and is not a socket; "
                               "choose another monitor path")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(self.path)
        except OSError:
            os.unlink(self.path)  # stale: nobody listens
            return
        finally:
            probe.close()
        raise MachineError(f"QMP monitor: {self.path!r} is in use by a running server")

    # -- lifecycle ------------------------------------------------------------

    def start(self) -> None:
        """Start serving in a background thread."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._serve, name="qmp-monitor", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop serving, join the thread, close every socket, remove the socket file."""
        self.machine.remove_state_listener(self._state_changed)
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        for client in self._clients:
            client.sock.close()
        self._clients.clear()
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)

    def __enter__(self) -> QmpMonitor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _wake(self) -> None:
        if self._wake_w >= 0:
            with contextlib.suppress(OSError):
                os.write(self._wake_w, b"x")

    # -- events (any thread) ------------------------------------------------------

    def _state_changed(self, state: RunState, reason: StopReason | None) -> None:
        if state is RunState.RUNNING:
            self.emit("RESUME", {})
        elif state in (RunState.PAUSED, RunState.DEBUG, RunState.GUEST_PANICKED):
            self.emit("STOP", {})
        elif state is RunState.SHUTDOWN:
            message = reason.message if reason is not None else ""
            guest = "guest" in message or "PSCI" in message
            self.emit("SHUTDOWN", {"guest": guest,
                                   "reason": "guest-shutdown" if guest else "host-qmp-quit"})

    def emit(self, event: str, data: dict[str, Any]) -> None:
        """Queue an event for every negotiated client."""
        now = time.time()
        message = {"event": event, "data": data,
                   "timestamp": {"seconds": int(now), "microseconds": int(now % 1 * 1e6)}}
        with self._events_lock:
            self._events.append(message)
        self._wake()

    # -- the monitor thread ----------------------------------------------------------

    def _serve(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, "listen")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stopping:
                for key, mask in sel.select(timeout=1.0):
                    if key.data == "listen":
                        self._accept(sel)
                    elif key.data == "wake":
                        with contextlib.suppress(OSError):
                            os.read(self._wake_r, 4096)
                    else:
                        client: _Client = key.data
                        if mask & selectors.EVENT_READ:
                            self._read(sel, client)
                        if mask & selectors.EVENT_WRITE and client in self._clients:
                            self._flush(sel, client)
                self._deliver_events(sel)
        finally:
            sel.close()

    def _accept(self, sel: selectors.BaseSelector) -> None:
        try:
            sock, _ = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        client = _Client(sock)
        self._clients.append(client)
        sel.register(sock, selectors.EVENT_READ, client)
        self._send(sel, client, {"QMP": {"version": QMP_VERSION, "capabilities": []}})

    def _drop(self, sel: selectors.BaseSelector, client: _Client) -> None:
        with contextlib.suppress(KeyError, ValueError):
            sel.unregister(client.sock)
        client.sock.close()
        if client in self._clients:
            self._clients.remove(client)

    def _read(self, sel: selectors.BaseSelector, client: _Client) -> None:
        try:
            data = client.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop(sel, client)
            return
        client.buffer.extend(data)
        # QMP is a stream of JSON objects: no newline is needed between them
        # (qemu.qmp sends none). A malformed object is dropped up to the next
        # newline, as QEMU's lexer resynchronises.
        while client.buffer:
            text = bytes(client.buffer).decode("utf-8", errors="replace")
            stripped = text.lstrip()
            if not stripped:
                client.buffer.clear()
                return
            try:
                request, end = _DECODER.raw_decode(stripped)
            except ValueError as exc:
                newline = stripped.find("\n")
                if newline < 0:
                    if len(client.buffer) > _MAX_LINE:
                        self._drop(sel, client)
                    return
                client.buffer = bytearray(stripped[newline + 1:].encode())
                self._send(sel, client, _error("GenericError", f"JSON parse error, {exc}"))
                continue
            client.buffer = bytearray(stripped[end:].encode())
            self._handle(sel, client, request)
            if client not in self._clients:
                return

    def _handle(self, sel: selectors.BaseSelector, client: _Client, request: Any) -> None:
        ident = request.get("id") if isinstance(request, dict) else None
        reply = self._execute(client, request)
        if ident is not None:
            reply["id"] = ident
        self._send(sel, client, reply)

    def _execute(self, client: _Client, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("execute"), str):
            return _error("GenericError", "QMP input must be a JSON object with 'execute'")
        name = request["execute"]
        args = request.get("arguments", {})
        if not isinstance(args, dict):
            return _error("GenericError", "QMP input member 'arguments' must be an object")
        if not client.negotiated and name != "qmp_capabilities":
            return _error("CommandNotFound",
                          "Expecting capabilities negotiation with 'qmp_capabilities'")
        if client.negotiated and name == "qmp_capabilities":
            return _error("CommandNotFound",
                          "Capabilities negotiation is already complete, command ignored")
        command = self._commands.get(name)
        if command is None:
            return _error("CommandNotFound", f"The command {name} has not been found")
        try:
            result = command(args)
        except _QmpError as exc:
            return _error(exc.error_class, str(exc))
        except Exception as exc:
            log.exception("QMP command %s failed", name)
            return _error("GenericError", f"{name} failed: {exc}")
        if name == "qmp_capabilities":
            client.negotiated = True
        return {"return": result}

    def _send(self, sel: selectors.BaseSelector, client: _Client, message: dict[str, Any]
              ) -> None:
        client.outbox.extend(json.dumps(message).encode() + b"\r\n")
        self._flush(sel, client)

    def _flush(self, sel: selectors.BaseSelector, client: _Client) -> None:
        try:
            sent = client.sock.send(client.outbox)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._drop(sel, client)
            return
        del client.outbox[:sent]
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if client.outbox else 0)
        with contextlib.suppress(KeyError, ValueError):
            sel.modify(client.sock, events, client)

    def _deliver_events(self, sel: selectors.BaseSelector) -> None:
        with self._events_lock:
            events, self._events = self._events, []
        for event in events:
            for client in list(self._clients):
                if client.negotiated:
                    self._send(sel, client, event)

    # -- commands (monitor thread) -------------------------------------------------

    def _cmd_capabilities(self, args: dict[str, Any]) -> dict[str, Any]:
        if args.get("enable"):
            raise _QmpError("GenericError",
                            f"Capability {args['enable'][0]!r} not available")
        return {}

    def _cmd_query_status(self, args: dict[str, Any]) -> dict[str, Any]:
        state = self.machine.state
        return {"status": state.value, "singlestep": False,
                "running": state is RunState.RUNNING}

    def _cmd_stop(self, args: dict[str, Any]) -> dict[str, Any]:
        self.machine.pause()
        return {}

    def _cmd_cont(self, args: dict[str, Any]) -> dict[str, Any]:
        self.machine.resume()
        return {}

    def _cmd_quit(self, args: dict[str, Any]) -> dict[str, Any]:
        self.machine.request_shutdown("QMP quit")
        return {}

    def _cmd_hmp(self, args: dict[str, Any]) -> str:
        line = args.get("command-line")
        if not isinstance(line, str):
            raise _QmpError("GenericError", "Parameter 'command-line' is missing")
        return human_monitor_command(self.machine, line)


class _QmpError(Exception):
    def __init__(self, error_class: str, desc: str) -> None:
        super().__init__(desc)
        self.error_class = error_class


def _error(error_class: str, desc: str) -> dict[str, Any]:
    return {"error": {"class": error_class, "desc": desc}}


def human_monitor_command(machine: Machine, line: str) -> str:
    """Run an HMP command line: ``info mtree [-f] [-o] [-D]``, ``info pci``, ``info status``.

    Returns QEMU's text; an unknown command gives QEMU's "unknown command" line.
    """
    words = line.split()
    if words[:1] == ["info"] and len(words) >= 2:
        what, flags = words[1], set(words[2:])
        if what == "mtree":
            unknown = flags - {"-f", "-o", "-D", "-d"}
            if unknown:
                return f"info mtree: unknown option {sorted(unknown)[0]}\n"
            return machine.mtree(flatview="-f" in flags, owner="-o" in flags,
                                 disabled="-D" in flags)
        if what == "pci":
            return machine.info_pci()
        if what == "status":
            state = machine.state.value
            return f"VM status: {'running' if state == 'running' else state}\n"
    return f"unknown command: '{line.strip()}'\n"
