"""Device types a remote process can serve, by name (``memexpose serve-device DEVICE``).

A factory takes the ``RemotePlatform`` (its clock, guest RAM, machine lock)
and the ``--opt K=V`` options as strings, and returns an unplugged
``PCIDevice``; ``build_remote_device`` checks the name, builds and plugs it.
Resources that outlive unplugging go to ``platform.add_closer``. Adding a
device type is one ``register_remote_device`` line. Registered here:
``edu`` and ``memexpose-pci`` (docs/remote.md, "memexpose across stock QEMU").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from memexpose.devices import MEMEXPOSE_PCI_OPTIONS, EduDevice, memexpose_pci_from_options
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


def _make_memexpose_pci(platform: RemotePlatform, options: Mapping[str, str]) -> PCIDevice:
    """Build a ``MemexposePCI`` whose peer reaches the VM's RAM as ``SYNC_SYSMEM`` maps it.

    The exposure is ``platform.memory`` (docs/remote.md R4, X1); the link
    runs under the platform's machine lock, the lock the server holds for
    every message. Served over the multi-process protocol, the defaults are
    what stock QEMU's proxy understands: ``bar64=off`` (its proxy sizes only
    32-bit BARs) and ``msi=off`` (it delivers INTx only). Our own
    ``remote-pci`` proxy handles both: pass ``bar64=on msi=on`` for it.
    """
    options = {"bar64": "off", "msi": "off", **options}
    dev = memexpose_pci_from_options(options, address_space=platform.memory,
                                     lock=platform.system.lock)
    platform.add_closer(dev.close)  # the link's threads and transport outlive unplugging
    return dev


register_remote_device("memexpose-pci", _make_memexpose_pci, options=MEMEXPOSE_PCI_OPTIONS,
                       description="memexpose peer link (1af4:1111) exposing the VM's RAM; "
                                   "defaults bar64=off msi=off suit stock QEMU's proxy")
