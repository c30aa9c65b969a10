"""Device types a remote process can serve, by name (``memexpose serve-device DEVICE``).

A factory takes the ``RemotePlatform`` (its clock, guest RAM, machine lock)
and the ``--opt K=V`` options as strings, and returns an unplugged
``PCIDevice``; ``build_remote_device`` checks the name, builds and plugs it.
Adding a device type is one ``register_remote_device`` line.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from memexpose.devices import EduDevice
from memexpose.errors import ConfigError
from memexpose.hw import PCIDevice
from memexpose.remote.platform import RemotePlatform

__all__ = [
    "REMOTE_DEVICES",
    "RemoteDeviceFactory",
    "RemoteDeviceType",
    "build_remote_device",
    "int_option",
    "register_remote_device",
]

RemoteDeviceFactory = Callable[[RemotePlatform, Mapping[str, str]], PCIDevice]
"""``factory(platform, options) -> device``: builds (does not plug) the device."""


@dataclass(frozen=True, slots=True)
class RemoteDeviceType:
    """One registered device type.

    Attributes:
        name: the type name given on the command line.
        factory: builds the device.
        options: the option names it accepts (others are refused).
        description: one line for ``--help``.
    """

    name: str
    factory: RemoteDeviceFactory
    options: frozenset[str]
    description: str


REMOTE_DEVICES: dict[str, RemoteDeviceType] = {}
"""Registered device types by name."""


def register_remote_device(name: str, factory: RemoteDeviceFactory, *,
                           options: tuple[str, ...] = (), description: str = "") -> None:
    """Let ``serve-device`` serve ``name``, built by ``factory`` with ``options``.

    Raises:
        ValueError: the name is taken by another factory.
    """
    old = REMOTE_DEVICES.get(name)
    if old is not None and old.factory is not factory:
        raise ValueError(f"remote device type {name!r} is already registered by "
                         f"{old.factory!r}")
    REMOTE_DEVICES[name] = RemoteDeviceType(name, factory, frozenset(options), description)


def build_remote_device(name: str, platform: RemotePlatform,
                        options: Mapping[str, str] | None = None) -> PCIDevice:
    """Build device type ``name`` with ``options`` and plug it into ``platform``.

    Raises:
        ConfigError: an unknown type or option, or an option value the
            factory refuses (the message lists what is known).
    """
    options = dict(options or {})
    kind = REMOTE_DEVICES.get(name)
    if kind is None:
        raise ConfigError(f"unknown remote device type {name!r}; known types: "
                          f"{', '.join(sorted(REMOTE_DEVICES))}")
    unknown = sorted(set(options) - kind.options)
    if unknown:
        known = ", ".join(sorted(kind.options)) or "none"
        raise ConfigError(f"{name}: unknown option {unknown[0]!r}; options: {known}")
    return platform.plug(kind.factory(platform, options))


def int_option(options: Mapping[str, str], key: str, default: int) -> int:
    """Return option ``key`` as an int (``0x`` prefixes allowed), or ``default``.

    Raises:
        ConfigError: the value is not an integer.
    """
    text = options.get(key)
    if text is None:
        return default
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"option {key}={text!r}: expected an integer (e.g. 42 or "
                          "0xff)") from None


def _make_edu(platform: RemotePlatform, options: Mapping[str, str]) -> PCIDevice:
    return EduDevice(platform.clock, dma_mask=int_option(options, "dma_mask", (1 << 28) - 1),
                     fact_delay_ns=int_option(options, "fact_delay_ns", 1_000),
                     id=options.get("id"))


register_remote_device("edu", _make_edu, options=("dma_mask", "fact_delay_ns", "id"),
                       description="QEMU's edu teaching device (1234:11e8)")
# memexpose-pci: add one register_remote_device line here once
# memexpose.devices provides the device.
