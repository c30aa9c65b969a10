"""`memexpose serve-device` as a process: --fd (stock QEMU's contract), --socket, errors;
and `remote-pci` in machine configurations."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import memexpose.cli.serve_device  # noqa: F401 - registers remote-pci
from memexpose.cli import cli
from memexpose.hw import MiniPC
from memexpose.machine import StopKind, build_machine
from memexpose.machine.config import parse_config
from memexpose.qemu import serve_device_argv
from memexpose.remote import RemotePCIDevice, wire

pytestmark = [pytest.mark.timeout(30), pytest.mark.integration]

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"


def _spawn_fd(device: str = "edu", options: dict[str, str] | None = None
              ) -> tuple[socket.socket, subprocess.Popen[bytes]]:
    vm_end, dev_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    proc = subprocess.Popen(serve_device_argv(device, dev_end.fileno(), options),
                            pass_fds=[dev_end.fileno()], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    dev_end.close()
    vm_end.settimeout(10)
    return vm_end, proc


def test_fd_serves_and_exits_0_when_the_vm_side_closes() -> None:
    vm_end, proc = _spawn_fd(options={"dma_mask": "0xfff"})
    try:
        wire.send_message(vm_end, wire.MPQemuCmd.PCI_CFGREAD, wire.pack_pci_conf(0, 0, 4))
        reply = wire.recv_message(vm_end, from_proxy=False)
        assert reply is not None and wire.RET_U64.unpack(reply.payload)[0] == 0x11E81234
    finally:
        vm_end.close()
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err.decode()


def test_bad_input_exits_1_and_logs_what_arrived() -> None:
    vm_end, proc = _spawn_fd()
    vm_end.sendall(wire.HEADER.pack(9, 0, 0))
    assert vm_end.recv(16) == b""  # closed by the server
    vm_end.close()
    out, err = proc.communicate(timeout=10)
    text = " ".join((out + err).decode().split())  # the log handler wraps long lines
    assert proc.returncode == 1
    assert "bad message from the VM side" in text and "unknown command 9" in text


def test_socket_serves_our_own_machine_proxy() -> None:
    with tempfile.TemporaryDirectory(prefix="memexpose-sd-") as tmp:
        path = os.path.join(tmp, "edu.sock")
        argv = serve_device_argv("edu", 0)
        argv = argv[:argv.index("--fd")] + ["--socket", path]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(path)
            pc = MiniPC()
            proxy = pc.add(RemotePCIDevice(sock), slot=4)
            pc.enumerate()
            assert pc.driver().readl(proxy.bars[0].addr) == 0x010000ED  # type: ignore[union-attr]
            assert not os.path.exists(path)  # removed once connected
            proxy.close()
            _, err = proc.communicate(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err.decode()


@pytest.mark.parametrize(("args", "message"), [
    (["edu"], "exactly one of --fd N and --socket PATH"),
    (["edu", "--fd", "0", "--socket", "/tmp/x"], "exactly one of"),
    (["floppy", "--fd", "0"], "unknown remote device type 'floppy'"),
    (["edu", "--fd", "0", "--opt", "novalue"], "expected KEY=VALUE"),
    (["edu", "--fd", "0", "--opt", "speed=3"], "unknown option 'speed'"),
    (["edu", "--fd", "987"], "--fd 987: not an open descriptor"),
])
def test_usage_errors_exit_2(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["serve-device", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_help_lists_the_device_types_and_their_options() -> None:
    result = CliRunner().invoke(cli, ["serve-device", "--help"])
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "Device types:" in text
    assert "edu QEMU's edu teaching device" in text
    assert "memexpose-pci memexpose peer link (1af4:1111)" in text
    assert "bar64" in text and "msi" in text


def test_fd_must_be_a_stream_socket() -> None:
    r, w = os.pipe()
    try:
        result = CliRunner().invoke(cli, ["serve-device", "edu", "--fd", str(r)])
        assert result.exit_code == 2 and "not a socket" in result.output
    finally:
        os.close(r)
        os.close(w)


@pytest.mark.parametrize(("board", "firmware", "options"), [
    ("pc", "edu-x86_64.elf", {}),
    ("virt", "edu-aarch64.elf", {"dma_mask": "0xffffffffffffffff"}),
])
def test_a_machine_guest_drives_a_remote_edu(board: str, firmware: str,
                                             options: dict[str, str]) -> None:
    # One device implementation, our VM side: the guest's edu driver runs
    # against an edu served by another process, through remote-pci.
    with tempfile.TemporaryDirectory(prefix="memexpose-sd-") as tmp:
        path = os.path.join(tmp, "edu.sock")
        argv = serve_device_argv("edu", 0, options)
        argv = argv[:argv.index("--fd")] + ["--socket", path] + argv[argv.index("--fd") + 2:]
        proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + 10
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
            config = parse_config({"machine": {"board": board, "ram": "64M",
                                               "firmware": f"build/{firmware}"},
                                   "device": [{"type": "remote-pci", "socket": path,
                                               "slot": 3, "id": "redu"}]},
                                  "test.toml", FIRMWARE)
            machine = build_machine(config)
            out = bytearray()
            machine.console = out.extend
            with machine:
                reason = machine.run(timeout=20)
                info = machine.info_pci()
            _, err = proc.communicate(timeout=10)  # the machine closed: the server exits
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert out.decode() == "edu: id, liveness, factorial and DMA OK\n", \
        (reason.describe(), err.decode())
    assert reason.kind in (StopKind.SHUTDOWN, StopKind.HALT)
    assert "1234:11e8" in info and 'id "redu"' in info
    assert proc.returncode == 0


def test_remote_pci_config_errors() -> None:
    from memexpose.errors import ConfigError

    base = {"machine": {"board": "pc", "ram": "16M"}}
    with pytest.raises(ConfigError, match="socket: the UNIX socket"):
        build_machine(parse_config({**base, "device": [{"type": "remote-pci"}]}, "t.toml",
                                   FIRMWARE))
    with pytest.raises(ConfigError, match="unknown key 'speed'"):
        build_machine(parse_config({**base, "device": [{"type": "remote-pci", "socket": "x",
                                                        "speed": 1}]}, "t.toml", FIRMWARE))
    with pytest.raises(ConfigError, match="cannot connect to /nonexistent.sock"):
        build_machine(parse_config({**base, "device": [{"type": "remote-pci",
                                                        "socket": "/nonexistent.sock"}]},
                                   "t.toml", FIRMWARE))
    assert sys.executable  # the server runs this interpreter
