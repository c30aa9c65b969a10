"""``memexpose run CONFIG.toml``: console, exit status, messages, no socket left."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from memexpose.cli.main import cli

pytestmark = pytest.mark.timeout(60)

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware" / "build"


def _config(tmp_path: Path, machine: str, devices: str = "") -> Path:
    path = tmp_path / "vm.toml"
    path.write_text(f"[machine]\n{machine}\nmonitor = \"vm.qmp\"\n{devices}")
    return path


def _run(path: Path, *args: str):
    return CliRunner().invoke(cli, ["run", str(path), *args])


@pytest.mark.parametrize("board,image,greeting", [
    ("virt", "hello-aarch64.elf", "Hello from memexpose virt (aarch64)!"),
    ("pc", "hello-x86_64.elf", "Hello from memexpose pc (x86_64)!"),
])
def test_hello(tmp_path: Path, board: str, image: str, greeting: str) -> None:
    path = _config(tmp_path, f'board = "{board}"\nfirmware = "{FIRMWARE / image}"')
    result = _run(path)
    assert result.exit_code == 0, result.output
    assert greeting in result.stdout
    assert not (tmp_path / "vm.qmp").exists()


def test_unknown_device(tmp_path: Path) -> None:
    path = _config(tmp_path, 'board = "virt"', '[[device]]\ntype = "floppy"\n')
    result = _run(path)
    assert result.exit_code == 2
    assert "device[0].type: unknown device type 'floppy'" in result.stderr
    assert str(path) in result.stderr
    assert not (tmp_path / "vm.qmp").exists()


def test_missing_firmware(tmp_path: Path) -> None:
    path = _config(tmp_path, 'board = "pc"\nfirmware = "missing.elf"')
    result = _run(path)
    assert result.exit_code == 2
    assert "missing.elf' not found" in result.stderr
    assert not (tmp_path / "vm.qmp").exists()


def test_wrong_architecture(tmp_path: Path) -> None:
    path = _config(tmp_path, f'board = "pc"\nfirmware = "{FIRMWARE / "hello-aarch64.elf"}"')
    result = _run(path)
    assert result.exit_code == 2
    assert "hello-aarch64.elf is an AArch64 ELF, but this machine runs x86-64" in result.stderr


def test_jump_into_unmapped_memory(tmp_path: Path) -> None:
    raw = tmp_path / "jump.bin"
    # movz x0, #0x7000, lsl #16; br x0
    raw.write_bytes(bytes.fromhex("0000aed2" "00001fd6"))
    path = _config(tmp_path, f'board = "virt"\nfirmware = "{raw}"\nload_address = 0x40080000')
    result = _run(path)
    assert result.exit_code == 1
    assert "instruction fetch from unmapped address 0x70000000" in result.stderr
    assert "registers:" in result.stderr
    assert not (tmp_path / "vm.qmp").exists()


def test_timeout(tmp_path: Path) -> None:
    path = _config(tmp_path, f'board = "virt"\nfirmware = "{FIRMWARE / "irq-aarch64.elf"}"')
    result = _run(path, "--timeout", "0.2")  # waits in wfi for interrupts that never come
    assert result.exit_code == 1
    assert "time limit" in result.stderr


@pytest.mark.integration
def test_real_process(tmp_path: Path) -> None:
    path = _config(tmp_path, f'board = "virt"\nfirmware = "{FIRMWARE / "hello-aarch64.elf"}"',
                   '[[device]]\ntype = "edu"\n')
    exe = Path(sys.executable).with_name("memexpose")
    proc = subprocess.run([str(exe), "run", str(path)], capture_output=True, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == b"Hello from memexpose virt (aarch64)!\n"
    assert not (tmp_path / "vm.qmp").exists()
