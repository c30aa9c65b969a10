"""Boards with PCI: a guest finds and drives edu; memory maps; configuration."""

from __future__ import annotations

import pytest

from memexpose.errors import ConfigError
from memexpose.machine import BOARDS, StopKind, build_machine, get_board, parse_size
from memexpose.machine.config import parse_config

from .helpers import FIRMWARE

pytestmark = [pytest.mark.timeout(30), pytest.mark.integration]

SUFFIX = {"virt": "aarch64", "pc": "x86_64"}


@pytest.mark.parametrize("board", ["virt", "pc"])
def test_guest_drives_edu_over_pci(board: str) -> None:
    config = parse_config({"machine": {"board": board, "ram": "64M",
                                       "firmware": f"build/edu-{SUFFIX[board]}.elf"},
                           "device": [{"type": "edu", "slot": 3}]}, "test.toml", FIRMWARE)
    machine = build_machine(config)
    out = bytearray()
    machine.console = out.extend
    with machine:
        reason = machine.run(timeout=10)
        result = machine.cpu.read_register("x19" if board == "virt" else "rax")
        info = machine.info_pci()
    assert out.decode() == "edu: id, liveness, factorial and DMA OK\n", reason.describe()
    assert result == 0
    assert reason.kind in (StopKind.SHUTDOWN, StopKind.HALT)
    assert "1234:11e8" in info and "device   3" in info
    assert "BAR0: 32 bit memory at" in info


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_memory_map_matches_the_mtree(name: str) -> None:
    board = get_board(name)
    with board.build(ram_size=64 << 20) as machine:
        flat = machine.mtree(flatview=True)
        for entry in board.memory_map(64 << 20):
            assert entry.addr % 0x1000 == 0 and entry.size > 0
        ram = board.memory_map(64 << 20)[0 if name == "pc" else 5]
        assert f"{ram.addr:016x}-{ram.addr + ram.size - 1:016x}" in flat


def test_ram_limits_are_checked() -> None:
    with pytest.raises(ConfigError, match="multiple of 1 MiB"):
        get_board("virt").build(ram_size=1000)
    with pytest.raises(ConfigError, match="at most 64 GiB"):
        get_board("pc").build(ram_size=65 << 30)
    with pytest.raises(ConfigError, match="unknown board 'q35'; known boards: pc, virt"):
        get_board("q35")


def test_pc_ram_above_4g() -> None:
    with get_board("pc").build(ram_size=(3 << 30) + (16 << 20)) as machine:
        flat = machine.mtree(flatview=True)
        assert "0000000100000000-0000000100ffffff" in flat
        assert machine.address_space.find_flat_range(1 << 32).mr is machine.ram


@pytest.mark.parametrize("text,size", [("256M", 256 << 20), ("1G", 1 << 30), (4096, 4096),
                                       ("64MiB", 64 << 20), ("0x1000", 0x1000)])
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["lots", "-1M", 0, True, 1.5])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ConfigError):
        parse_size(bad)  # type: ignore[arg-type]
