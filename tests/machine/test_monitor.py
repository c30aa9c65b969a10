"""The QMP monitor, driven by QEMU's own client (qemu.qmp)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

import pytest

from memexpose.errors import MachineError
from memexpose.machine import Machine, QmpMonitor, RunState, StopKind, get_board

from .helpers import firmware, import_qmp_client

QMPClient, ExecuteError = import_qmp_client()

pytestmark = [pytest.mark.timeout(30), pytest.mark.integration]


def _spinning_machine() -> Machine:
    machine = get_board("virt").build(ram_size=64 << 20)
    machine.board.boot(machine, firmware("poll-aarch64.elf"))
    machine.cpu.write_register("x1", 0x4010_0000)
    machine.cpu.write_register("x2", 0xDEAD)
    return machine


@pytest.fixture
def sock(tmp_path: Path) -> str:
    return str(tmp_path / "vm.qmp")


def test_qemu_qmp_client_drives_the_vm(sock: str) -> None:
    machine = _spinning_machine()
    monitor = QmpMonitor(machine, sock)
    monitor.start()
    machine.start()

    async def session() -> dict[str, object]:
        qmp = QMPClient("memexpose-test")
        await qmp.connect(sock)
        got: dict[str, object] = {"greeting": qmp.greeting}
        got["status"] = await qmp.execute("query-status")
        got["mtree"] = await qmp.execute("human-monitor-command",
                                         {"command-line": "info mtree"})
        got["mtree_f"] = await qmp.execute("human-monitor-command",
                                           {"command-line": "info mtree -f"})
        got["pci"] = await qmp.execute("human-monitor-command", {"command-line": "info pci"})
        with qmp.listener() as listener:
            await qmp.execute("stop")
            got["stopped"] = await qmp.execute("query-status")
            await qmp.execute("cont")
            got["running"] = await qmp.execute("query-status")
            got["events"] = [await asyncio.wait_for(listener.get(), 5) for _ in range(2)]
        try:
            await qmp.execute("no-such-command")
        except ExecuteError as exc:
            got["error"] = exc.error.error.class_
        await qmp.execute("quit")
        await qmp.disconnect()
        return got

    try:
        got = asyncio.run(session())
        reason = machine.wait(10)
    finally:
        machine.close()
        monitor.close()
    assert got["status"] == {"status": "running", "singlestep": False, "running": True}
    assert got["mtree"] == machine.mtree()
    assert got["mtree_f"] == machine.mtree(flatview=True)
    assert "address-space: memory" in got["mtree"]  # type: ignore[operator]
    assert "Host bridge" in got["pci"]  # type: ignore[operator]
    assert got["stopped"]["status"] == "paused"  # type: ignore[index]
    assert got["running"]["status"] == "running"  # type: ignore[index]
    assert [e["event"] for e in got["events"]] == ["STOP", "RESUME"]  # type: ignore[union-attr]
    assert got["error"] == "CommandNotFound"
    assert reason is not None and reason.kind is StopKind.SHUTDOWN
    assert not os.path.exists(sock)


def test_raw_protocol_rules(sock: str) -> None:
    machine = get_board("pc").build()
    with machine, QmpMonitor(machine, sock):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(sock)
            f = s.makefile("rwb")
            greeting = json.loads(f.readline())
            assert greeting["QMP"]["version"]["qemu"]["major"] == 7

            def ask(obj: object) -> dict[str, object]:
                f.write(json.dumps(obj).encode() + b"\n")
                f.flush()
                return json.loads(f.readline())

            before = ask({"execute": "query-status", "id": 1})
            assert before["error"]["class"] == "CommandNotFound"  # type: ignore[index]
            assert before["id"] == 1
            assert ask({"execute": "qmp_capabilities"}) == {"return": {}}
            assert ask({"execute": "query-status"})["return"]["status"] == "prelaunch"  # type: ignore[index]
            hmp = ask({"execute": "human-monitor-command",
                       "arguments": {"command-line": "info mtree -f"}})
            assert hmp["return"] == machine.mtree(flatview=True)
            assert "I/O" in machine.mtree()
            bad = ask({"execute": "human-monitor-command",
                       "arguments": {"command-line": "info bogus"}})
            assert "unknown command" in bad["return"]  # type: ignore[operator]
            f.write(b"{not json\n")
            f.flush()
            assert json.loads(f.readline())["error"]["class"] == "GenericError"
    assert not os.path.exists(sock)


def test_socket_in_use_or_stale(sock: str) -> None:
    machine = get_board("pc").build()
    with machine:
        with QmpMonitor(machine, sock):
            with pytest.raises(MachineError, match="in use"):
                QmpMonitor(machine, sock)
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(sock)
        stale.close()  # a socket file nobody listens on
        QmpMonitor(machine, sock).close()
        assert not os.path.exists(sock)
        Path(sock).write_text("not a socket")
        with pytest.raises(MachineError, match="not a socket"):
            QmpMonitor(machine, sock)


def test_pause_before_start_holds_the_guest(sock: str) -> None:
    machine = _spinning_machine()
    with machine:
        machine.pause()
        assert machine.state is RunState.PAUSED
        machine.start()
        time.sleep(0.05)
        assert machine.state is RunState.PAUSED
        machine.resume()
        time.sleep(0.05)
        assert machine.state is RunState.RUNNING
        assert machine.shutdown().kind is StopKind.SHUTDOWN  # type: ignore[union-attr]
