"""The remote layer: a PCI device served from its own process, QEMU's multi-process way.

One device implementation, two VM sides, one wire format (QEMU 7.2's
``mpqemu``; docs/remote.md):

* device side: ``RemotePlatform`` (what the device sees: the VM's RAM from
  ``SYNC_SYSMEM``, a bus where its BARs sit at the programmed bases, a clock,
  one INTx line) and ``RemoteDeviceServer`` (the message loop over one
  socket); ``build_remote_device`` builds a registered type (``edu``,
  ``memexpose-pci``);
* VM side: ``RemotePCIDevice``, the ``remote-pci`` proxy for memexpose's own
  machines (stock QEMU uses its ``x-pci-proxy-dev``);
* ``wire``: framing, payloads and checks (a module).

Modules: ``wire``, ``platform``, ``server``, ``registry``, ``proxy``.
This layer imports ``memory``, ``hw``, ``link`` and ``devices`` (through
their packages) and ``memexpose.errors``.
"""

from memexpose.remote import wire
from memexpose.remote.platform import RamEntry, RemotePlatform
from memexpose.remote.proxy import RemotePCIDevice, RemoteState
from memexpose.remote.registry import (
    REMOTE_DEVICES,
    RemoteDeviceFactory,
    RemoteDeviceType,
    build_remote_device,
    int_option,
    register_remote_device,
)
from memexpose.remote.server import RemoteDeviceServer
from memexpose.remote.wire import MPQemuCmd, MPQemuMessage

__all__ = [
    "REMOTE_DEVICES",
    "MPQemuCmd",
    "MPQemuMessage",
    "RamEntry",
    "RemoteDeviceFactory",
    "RemoteDeviceServer",
    "RemoteDeviceType",
    "RemotePCIDevice",
    "RemotePlatform",
    "RemoteState",
    "build_remote_device",
    "int_option",
    "register_remote_device",
    "wire",
]
