"""Machine files (TOML): every key checked, every mistake named."""

from __future__ import annotations

from pathlib import Path

import pytest

from memexpose.errors import ConfigError, LoaderError
from memexpose.machine import DEVICE_TYPES, build_machine, load_config, register_device_type

from .helpers import FIRMWARE

pytestmark = pytest.mark.timeout(30)


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vm.toml"
    path.write_text(text)
    return path


def test_full_file(tmp_path: Path) -> None:
    path = _write(tmp_path, f"""
[machine]
board = "pc"
ram = "32M"
firmware = "{FIRMWARE}/build/hello-x86_64.elf"
timeout = 5
monitor = "vm.qmp"
name = "rich"

[[device]]
type = "edu"
slot = 4
""")
    config = load_config(path)
    assert (config.board, config.ram_size, config.timeout, config.name) == \
        ("pc", 32 << 20, 5.0, "rich")
    assert config.monitor == str(tmp_path / "vm.qmp")
    assert [d.type for d in config.devices] == ["edu"]
    with build_machine(config) as machine:
        assert machine.name == "rich"
        assert "1234:11e8" in machine.info_pci()


@pytest.mark.parametrize("text,match", [
    ('[machine]\nboard = "virt"\n[[device]]\ntype = "floppy"\n',
     r"device\[0\]\.type: unknown device type 'floppy'; known types: .*edu"),
    ('[machine]\nboard = "virt"\ncolour = "red"\n', r"unknown key machine\.colour"),
    ('[machine]\nboard = "zx81"\n', r"machine\.board: unknown board 'zx81'"),
    ('[machine]\nram = "1G"\n', r"machine\.board is missing"),
    ('[machine]\nboard = "virt"\nram = "lots"\n', r"machine\.ram: cannot read 'lots'"),
    ('[machine]\nboard = "virt"\ntimeout = -1\n', r"machine\.timeout must be a positive"),
    ('[machine]\nboard = "virt"\nload_address = "x"\n', r"machine\.load_address"),
    ('[machine]\nboard = "virt"\n[[device]]\nslot = 3\n', r"device\[0\]\.type is missing"),
    ('[vm]\nboard = "virt"\n', r"unknown table 'vm'"),
    ('board = "virt"\n', r"unknown table 'board'"),
    ('[machine\n', r"not valid TOML"),
])
def test_mistakes_are_named(tmp_path: Path, text: str, match: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError, match=match) as exc:
        load_config(path)
    assert str(path) in str(exc.value)


def test_bad_device_option(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[machine]\nboard = "pc"\n'
                                          '[[device]]\ntype = "edu"\nspeed = 3\n'))
    with pytest.raises(ConfigError, match=r"device\[0\]: unknown key 'speed'"):
        build_machine(config)
    config = load_config(_write(tmp_path, '[machine]\nboard = "pc"\n'
                                          '[[device]]\ntype = "edu"\nslot = 40\n'))
    with pytest.raises(ConfigError, match=r"device\[0\]\.slot: PCI slot 40"):
        build_machine(config)


def test_missing_and_foreign_firmware(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[machine]\nboard = "virt"\nfirmware = "gone.elf"\n'))
    with pytest.raises(LoaderError, match="gone.elf' not found"):
        build_machine(config)
    config = load_config(_write(tmp_path, f'[machine]\nboard = "virt"\n'
                                          f'firmware = "{FIRMWARE}/build/hello-x86_64.elf"\n'))
    with pytest.raises(LoaderError, match="x86-64 ELF, but this machine runs AArch64"):
        build_machine(config)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_device_types_are_extensible(tmp_path: Path) -> None:
    made = []
    register_device_type("probe-test", lambda machine, spec: made.append(spec.options))
    try:
        config = load_config(_write(tmp_path, '[machine]\nboard = "virt"\n'
                                              '[[device]]\ntype = "probe-test"\nx = 1\n'))
        build_machine(config).close()
        assert made == [{"x": 1}]
        with pytest.raises(ValueError, match="already registered"):
            register_device_type("probe-test", lambda machine, spec: None)
    finally:
        del DEVICE_TYPES["probe-test"]


@pytest.mark.integration
@pytest.mark.parametrize("name", ["virt-edu.toml", "pc-edu.toml"])
def test_example_files_run(name: str) -> None:
    from memexpose.machine import StopKind

    out = bytearray()
    machine = build_machine(load_config(FIRMWARE / name))
    machine.console = out.extend
    with machine:
        reason = machine.run(10)
    assert reason.kind in (StopKind.SHUTDOWN, StopKind.HALT), reason.describe()
    assert out == b"edu: id, liveness, factorial and DMA OK\n"
