"""Machines described by a TOML file, and the device types a file may name.

Example (paths are relative to the file)::

    [machine]
    board = "virt"                 # "virt" (AArch64) or "pc" (x86_64)
    ram = "256M"                   # bytes, or a size with K/M/G
    firmware = "../firmware/build/hello-aarch64.elf"
    # load_address = 0x40080000    # raw (non-ELF) images only
    # timeout = 10                 # seconds before the run stops with TIMEOUT
    # monitor = "vm.qmp"           # QMP socket

    [[device]]
    type = "edu"                   # a PCI edu on the board's root bus
    # slot = 3
    # dma_mask = 0xffffffffffffffff

    [[device]]
    type = "memexpose-pci"         # or "memexpose-platform" (the board's memexpose slot)
    socket = "link.sock"           # UNIX socket (fds pass: direct sharing); or tcp = "HOST:PORT"
    listen = false                 # one side listens, the other connects
    window_size = "64K"            # BAR1 / MMIO 1: the window onto the peer, a power of two
    expose = "ram"                 # what the peer may reach: the board's RAM, or
    # expose_start = 0x40070000    # ... an explicit range (expose_size too); neither: nothing
    # expose_size = "4K"
    # readonly = false
    # role = 0                     # link sub-priority, 0 or 1 (default: negotiated)
    # timeout = 2.0                # seconds a forwarded access may wait
    # connect_timeout = 5.0        # seconds an ENABLE may spend connecting
    # direct = true                # map the peer's shared RAM directly
    # name = "rich-link"           # names the link, its threads and regions
    # slot = 4                     # memexpose-pci only: the PCI slot

Every key is checked; a mistake raises ``ConfigError`` naming the file and
the key. Device types are registered with ``register_device_type``; the
machine registers ``edu``, ``pci-serial``, ``memexpose-pci`` and
``memexpose-platform``. Paths in device tables (``socket``) are relative to
the file, like ``firmware``.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memexpose.devices import EduDevice, MemexposePCI, MemexposePlatform, PCISerial
from memexpose.errors import ConfigError
from memexpose.link import Exposure
from memexpose.machine.boards import BOARDS, get_board, parse_size
from memexpose.machine.machine import Machine

__all__ = [
    "DEVICE_TYPES",
    "DeviceSpec",
    "MachineConfig",
    "build_machine",
    "load_config",
    "register_device_type",
]

_MACHINE_KEYS = {"board", "ram", "firmware", "load_address", "timeout", "monitor", "name"}


@dataclass(frozen=True)
class DeviceSpec:
    """One ``[[device]]`` table: its type and the other keys as options.

    Attributes:
        type: the device type name.
        options: the remaining keys.
        where: ``"FILE: device[N]"`` for messages.
        base: the directory relative paths in the options start from (the
            file's directory; None: the current directory).
    """

    type: str
    options: dict[str, Any]
    where: str
    base: str | None = None


@dataclass(frozen=True)
class MachineConfig:
    """A checked machine description.

    Attributes:
        path: the TOML file ("<memory>" when built in code).
        board: the board name.
        ram_size: bytes of RAM.
        firmware: the image to boot (absolute), or None.
        load_address: where a raw image goes (None for ELF).
        timeout: seconds before the run stops, or None.
        monitor: the QMP socket path (absolute), or None.
        devices: the devices, in file order.
        name: the machine's name.
    """

    path: str
    board: str
    ram_size: int
    firmware: str | None = None
    load_address: int | None = None
    timeout: float | None = None
    monitor: str | None = None
    devices: tuple[DeviceSpec, ...] = field(default_factory=tuple)
    name: str | None = None


DeviceFactory = Callable[[Machine, DeviceSpec], Any]
"""Builds a device from its spec and plugs it into the machine; returns it."""

DEVICE_TYPES: dict[str, DeviceFactory] = {}
"""Device types a configuration may name, by name."""


def register_device_type(name: str, factory: DeviceFactory) -> None:
    """Let configurations name ``name``; ``factory(machine, spec)`` builds and plugs it.

    Raises:
        ValueError: the name is taken by another factory.
    """
    old = DEVICE_TYPES.get(name)
    if old is not None and old is not factory:
        raise ValueError(f"device type {name!r} is already registered by {old!r}")
    DEVICE_TYPES[name] = factory


def _option(spec: DeviceSpec, key: str, kind: type, default: Any) -> Any:
    value = spec.options.get(key, default)
    if value is not default and (not isinstance(value, kind) or isinstance(value, bool)):
        raise ConfigError(f"{spec.where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _check_options(spec: DeviceSpec, allowed: set[str]) -> None:
    unknown = sorted(set(spec.options) - allowed)
    if unknown:
        raise ConfigError(f"{spec.where}: unknown key {unknown[0]!r} for a {spec.type!r} "
                          f"device; known keys: {', '.join(sorted(allowed | {'type'}))}")


def _pci_slot(machine: Machine, spec: DeviceSpec) -> int | None:
    if machine.pci_bus is None:
        raise ConfigError(f"{spec.where}: board {machine.board.name!r} has no PCI bus for a "
                          f"{spec.type!r} device")
    slot = _option(spec, "slot", int, None)
    if slot is not None and not 1 <= slot < 32:
        raise ConfigError(f"{spec.where}.slot: PCI slot {slot} is not in 1..31")
    return slot


def _make_edu(machine: Machine, spec: DeviceSpec) -> Any:
    _check_options(spec, {"slot", "dma_mask", "id"})
    slot = _pci_slot(machine, spec)
    # virt's RAM starts at 1 GiB, beyond edu's default 28-bit DMA mask.
    default_mask = (1 << 64) - 1 if machine.board.name == "virt" else (1 << 28) - 1
    edu = EduDevice(machine.clock, dma_mask=_option(spec, "dma_mask", int, default_mask),
                    id=_option(spec, "id", str, None))
    with machine.memory.transaction():
        machine.pci_bus.add_device(edu, slot)
    machine.add_closer(edu.unrealize)
    return machine.add_device(edu)


def _make_pci_serial(machine: Machine, spec: DeviceSpec) -> Any:
    _check_options(spec, {"slot", "id"})
    slot = _pci_slot(machine, spec)
    dev = PCISerial(output=machine.write_console, id=_option(spec, "id", str, None))
    with machine.memory.transaction():
        machine.pci_bus.add_device(dev, slot)
    return machine.add_device(dev)


_MEMEXPOSE_KEYS = {"socket", "tcp", "listen", "window_size", "expose", "expose_start",
                   "expose_size", "readonly", "role", "timeout", "connect_timeout", "direct",
                   "name"}


def _flag(spec: DeviceSpec, key: str, default: bool) -> bool:
    value = spec.options.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{spec.where}.{key}: expected true or false, got {value!r}")
    return value


def _seconds(spec: DeviceSpec, key: str, default: float) -> float:
    value = spec.options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"{spec.where}.{key}: expected a positive number of seconds, "
                          f"got {value!r}")
    return float(value)


def _memexpose_args(machine: Machine, spec: DeviceSpec, default_name: str) -> dict[str, Any]:
    """Check the options both memexpose devices share; return their keyword arguments."""
    opts = spec.options
    sock, tcp = opts.get("socket"), opts.get("tcp")
    if (sock is None) == (tcp is None):
        raise ConfigError(f"{spec.where}: give exactly one of socket = \"PATH\" (a UNIX socket: "
                          "RAM is shared directly) and tcp = \"HOST:PORT\"")
    if sock is not None:
        transport = "unix:" + _path(Path(spec.base or "."), sock, f"{spec.where}.socket")
    else:
        if not isinstance(tcp, str) or ":" not in tcp:
            raise ConfigError(f"{spec.where}.tcp: expected \"HOST:PORT\", got {tcp!r}")
        transport = f"tcp:{tcp}"
    window = parse_size(opts.get("window_size", 0x1000), what=f"{spec.where}.window_size")
    expose = opts.get("expose")
    ranged = "expose_start" in opts or "expose_size" in opts
    exposure = None
    if expose is not None and expose is not False:
        if expose != "ram" or ranged:
            raise ConfigError(f"{spec.where}.expose: write expose = \"ram\" (the board's RAM), "
                              "or give expose_start and expose_size instead, not both")
        board = machine.board
        low = min(machine.ram_size, getattr(board, "below_4g", machine.ram_size))
        exposure = Exposure.range(machine.address_space, board.ram_base, low,
                                  readonly=_flag(spec, "readonly", False))
    elif ranged:
        start = _option(spec, "expose_start", int, None)
        if start is None or start < 0 or "expose_size" not in opts:
            raise ConfigError(f"{spec.where}: an exposed range needs expose_start (an address) "
                              "and expose_size")
        size = parse_size(opts["expose_size"], what=f"{spec.where}.expose_size")
        try:
            exposure = Exposure.range(machine.address_space, start, size,
                                      readonly=_flag(spec, "readonly", False))
        except ConfigError as exc:
            raise ConfigError(f"{spec.where}: {exc}") from None
    elif "readonly" in opts:
        raise ConfigError(f"{spec.where}.readonly: nothing is exposed; add expose = \"ram\" or "
                          "expose_start/expose_size")
    role = opts.get("role")
    if role is not None and (isinstance(role, bool) or role not in (0, 1)):
        raise ConfigError(f"{spec.where}.role: expected 0 or 1 (or leave it out), got {role!r}")
    return {
        "transport": transport,
        "listen": _flag(spec, "listen", False),
        "exposure": exposure,
        "window_size": window,
        "lock": machine.lock,
        "name": _option(spec, "name", str, f"{machine.name}.{default_name}"),
        "role": role,
        "timeout": _seconds(spec, "timeout", 2.0),
        "connect_timeout": _seconds(spec, "connect_timeout", 5.0),
        "direct": _flag(spec, "direct", True),
    }


def _make_memexpose_pci(machine: Machine, spec: DeviceSpec) -> Any:
    _check_options(spec, _MEMEXPOSE_KEYS | {"slot", "id"})
    slot = _pci_slot(machine, spec)
    args = _memexpose_args(machine, spec, "memexpose-pci")
    try:
        dev = MemexposePCI(args.pop("transport"), id=_option(spec, "id", str, None), **args)
    except ConfigError as exc:
        raise ConfigError(f"{spec.where}: {exc}") from None
    machine.add_closer(dev.close)
    with machine.memory.transaction():
        machine.pci_bus.add_device(dev, slot)
    return machine.add_device(dev)


def _make_memexpose_platform(machine: Machine, spec: DeviceSpec) -> Any:
    _check_options(spec, _MEMEXPOSE_KEYS)
    args = _memexpose_args(machine, spec, "memexpose-platform")
    try:
        dev = MemexposePlatform(args.pop("transport"), **args)
    except ConfigError as exc:
        raise ConfigError(f"{spec.where}: {exc}") from None
    try:
        dev.plug(machine)  # the board's memexpose slot; closed with the machine
    except BaseException:
        dev.close()
        raise
    return dev


register_device_type("edu", _make_edu)
register_device_type("pci-serial", _make_pci_serial)
register_device_type("memexpose-pci", _make_memexpose_pci)
register_device_type("memexpose-platform", _make_memexpose_platform)


def _path(base: Path, value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a path string, got {value!r}")
    return os.fspath((base / os.path.expanduser(value)).resolve())


def parse_config(data: dict[str, Any], path: str, base: Path) -> MachineConfig:
    """Check a parsed TOML document and return the configuration.

    Raises:
        ConfigError: a missing, unknown or malformed key (named in the message).
    """
    unknown = sorted(set(data) - {"machine", "device"})
    if unknown:
        raise ConfigError(f"{path}: unknown table {unknown[0]!r}; a machine file has "
                          "[machine] and [[device]] tables")
    machine = data.get("machine")
    if not isinstance(machine, dict):
        raise ConfigError(f"{path}: missing [machine] table (board, ram, firmware, ...)")
    bad = sorted(set(machine) - _MACHINE_KEYS)
    if bad:
        raise ConfigError(f"{path}: unknown key machine.{bad[0]}; known keys: "
                          f"{', '.join(sorted(_MACHINE_KEYS))}")
    board_name = machine.get("board")
    if board_name is None:
        raise ConfigError(f"{path}: machine.board is missing; one of "
                          f"{', '.join(sorted(BOARDS))}")
    try:
        board = get_board(board_name) if isinstance(board_name, str) else None
    except ConfigError as exc:
        raise ConfigError(f"{path}: machine.board: {exc}") from None
    if board is None:
        raise ConfigError(f"{path}: machine.board must be a string, got {board_name!r}")
    ram_size = parse_size(machine.get("ram", board.default_ram), what=f"{path}: machine.ram")
    firmware = machine.get("firmware")
    if firmware is not None:
        firmware = _path(base, firmware, f"{path}: machine.firmware")
    load_address = machine.get("load_address")
    if load_address is not None and (not isinstance(load_address, int)
                                     or isinstance(load_address, bool) or load_address < 0):
        raise ConfigError(f"{path}: machine.load_address must be a non-negative integer, "
                          f"got {load_address!r}")
    timeout = machine.get("timeout")
    if timeout is not None and (isinstance(timeout, bool)
                                or not isinstance(timeout, int | float) or timeout <= 0):
        raise ConfigError(f"{path}: machine.timeout must be a positive number of seconds, "
                          f"got {timeout!r}")
    monitor = machine.get("monitor")
    if monitor is not None:
        monitor = _path(base, monitor, f"{path}: machine.monitor")
    name = machine.get("name")
    if name is not None and not isinstance(name, str):
        raise ConfigError(f"{path}: machine.name must be a string, got {name!r}")
    devices = data.get("device", [])
    if not isinstance(devices, list):
        raise ConfigError(f"{path}: devices are an array of tables: write [[device]]")
    specs = []
    for i, table in enumerate(devices):
        where = f"{path}: device[{i}]"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: expected a table")
        kind = table.get("type")
        if not isinstance(kind, str):
            raise ConfigError(f"{where}.type is missing; known types: "
                              f"{', '.join(sorted(DEVICE_TYPES))}")
        if kind not in DEVICE_TYPES:
            raise ConfigError(f"{where}.type: unknown device type {kind!r}; known types: "
                              f"{', '.join(sorted(DEVICE_TYPES))}")
        specs.append(DeviceSpec(kind, {k: v for k, v in table.items() if k != "type"}, where,
                                os.fspath(base)))
    return MachineConfig(path, board.name, ram_size, firmware, load_address,
                         float(timeout) if timeout is not None else None, monitor,
                         tuple(specs), name)


def load_config(path: str | os.PathLike[str]) -> MachineConfig:
    """Read and check the TOML machine file at ``path``.

    Raises:
        ConfigError: the file is missing, not TOML, or has a bad key.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"machine configuration {name!r} not found") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {name!r}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{name}: not valid TOML: {exc}") from exc
    return parse_config(data, name, Path(name).resolve().parent)


def build_machine(config: MachineConfig) -> Machine:
    """Build the machine, plug its devices and load its firmware (not started).

    Raises:
        ConfigError: a device option the device refuses.
        LoaderError: the firmware cannot be loaded (see ``load_image``).
    """
    board = get_board(config.board)
    machine = board.build(ram_size=config.ram_size, name=config.name)
    try:
        for spec in config.devices:
            DEVICE_TYPES[spec.type](machine, spec)
        if config.firmware is not None:
            board.boot(machine, config.firmware, addr=config.load_address)
    except BaseException:
        machine.close()
        raise
    return machine
