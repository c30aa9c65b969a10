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


def test_memexpose_devices(tmp_path: Path) -> None:
    import tempfile

    from memexpose.devices import MemexposePCI, MemexposePlatform
    from memexpose.link import LinkState
    from memexpose.machine import parse_fdt

    sockdir = Path(tempfile.mkdtemp(prefix="mxc-"))
    rich = _write(sockdir, """
[machine]
board = "pc"
ram = "32M"

[[device]]
type = "memexpose-pci"
socket = "link.sock"
window_size = "8K"
expose = "ram"
slot = 5
connect_timeout = 0.5
""")
    with build_machine(load_config(rich)) as machine:
        dev = machine.devices[-1]
        assert isinstance(dev, MemexposePCI) and dev.address.startswith("00:05")
        assert dev.endpoint.transport.describe() == f"unix:{sockdir}/link.sock"
        assert dev.core.window_size == 0x2000
        exposure = dev.endpoint.exporter.exposure
        assert (exposure.start, exposure.size) == (0, 32 << 20)
        assert dev.endpoint.state is LinkState.DISABLED  # the guest enables it
        assert "1af4:1111" in machine.info_pci()
    trusted = sockdir / "trusted.toml"
    trusted.write_text(f"""
[machine]
board = "virt"
firmware = "{FIRMWARE}/build/hello-aarch64.elf"

[[device]]
type = "memexpose-platform"
tcp = "127.0.0.1:1"
window_size = "64M"
expose_start = 0x40070000
expose_size = "4K"
readonly = true
role = 1
""")
    with build_machine(load_config(trusted)) as machine:
        dev = machine.slot_device
        assert isinstance(dev, MemexposePlatform) and dev in machine.devices
        exposure = dev.endpoint.exporter.exposure
        assert (exposure.start, exposure.size, exposure.readonly) == (0x4007_0000, 0x1000, True)
        # the device tree gives the window's real size
        blob, _ = machine.address_space.read_bytes(0x4000_0000, 0x1_0000)
        node = parse_fdt(blob).find("/memexpose@c000000")
        assert node is not None
        assert node.props["reg"][-8:] == (64 << 20).to_bytes(8, "big")
        assert node.props["compatible"].startswith(b"memexpose-memregion\0")
    assert not list(sockdir.glob("*.sock"))
    for path in sockdir.iterdir():
        path.unlink()
    sockdir.rmdir()


@pytest.mark.parametrize("device,match", [
    ('type = "memexpose-pci"\nwindow_size = "8K"', r"device\[0\]: give exactly one of socket"),
    ('type = "memexpose-pci"\nsocket = "a"\ntcp = "h:1"', r"exactly one of socket"),
    ('type = "memexpose-pci"\ntcp = "nowhere"', r"device\[0\]\.tcp: expected \"HOST:PORT\""),
    ('type = "memexpose-pci"\nsocket = "a"\nwindow_size = "12K"',
     r"device\[0\]: .*must be a power of two"),
    ('type = "memexpose-pci"\nsocket = "a"\nexpose = "all"', r"device\[0\]\.expose: write"),
    ('type = "memexpose-pci"\nsocket = "a"\nexpose_start = 0', r"needs expose_start .* and "
     "expose_size"),
    ('type = "memexpose-pci"\nsocket = "a"\nreadonly = true', r"readonly: nothing is exposed"),
    ('type = "memexpose-pci"\nsocket = "a"\nrole = 2', r"device\[0\]\.role: expected 0 or 1"),
    ('type = "memexpose-pci"\nsocket = "a"\nlisten = "yes"', r"listen: expected true or false"),
    ('type = "memexpose-pci"\nsocket = "a"\ntimeout = 0', r"timeout: expected a positive"),
    ('type = "memexpose-pci"\nsocket = "a"\nshm_size = 4096', r"unknown key 'shm_size'"),
    ('type = "memexpose-platform"\nsocket = "a"\nslot = 3', r"unknown key 'slot'"),
    ('type = "memexpose-platform"\nsocket = "a"\nwindow_size = "128G"',
     r"the slot window is 0x1000000000 bytes"),
])
def test_memexpose_mistakes_are_named(tmp_path: Path, device: str, match: str) -> None:
    from memexpose.errors import MachineError

    path = _write(tmp_path, f'[machine]\nboard = "virt"\n[[device]]\n{device}\n')
    with pytest.raises((ConfigError, MachineError), match=match):
        build_machine(load_config(path))
