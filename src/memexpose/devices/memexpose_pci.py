"""``memexpose-pci``: the memexpose register block and window as a PCI function.

PCI 1af4:1111, revision 2, class 0x0500 (RAM), INTA, a 64-bit MSI
capability with one vector:

* BAR0: 32-bit memory, 0x1000 bytes, the register block
  (``memexpose_common``; docs/memexpose-devices.md);
* BAR1: 64-bit memory, not prefetchable, ``window_size`` bytes (a power
  of two): the window onto the peer's exposed memory. Accesses are
  forwarded to the peer, or hit its RAM directly once shared.

Served to stock QEMU through its ``x-pci-proxy-dev`` (``memexpose
serve-device memexpose-pci``), build it with ``bar64=False`` (BAR1 is then
a 32-bit BAR of at most 2 GiB: QEMU 7.2's proxy does not understand 64-bit
BARs) and ``msi=False`` (no MSI capability: the proxy delivers INTx only,
so a guest driver must not pick MSI). The defaults stay as the spec says.

Interrupts follow the level "RX queue non-empty": with MSI off, INTx is
that level (it drops when RECV pops the last entry); with MSI on, one
message is sent per empty-to-non-empty transition, so the guest drains
RECV until it reads 0. Turning MSI off while entries wait asserts INTx.

Unlike the seed, the device has a reset handler (``device_reset``): the
link is disabled (the peer sees a BYE), the RX queue and the RX/TX
registers are cleared, and ENABLE/STATUS read 0.

Revision 2 marks the additions to the seed's layout (revision 1): STATUS,
DROPPED, PENDING, WINDOW_SIZE and WINDOW_LIMIT, a read-only RX block, and
an ENABLE that never waits.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping

from memexpose.devices.memexpose_common import (
    MemexposeCore,
    MemexposeStatistics,
    make_transport,
)
from memexpose.errors import ConfigError
from memexpose.hw import MSICap, PCIDevice
from memexpose.link import Exposure, MemexposeEndpoint, Transport
from memexpose.memory import AddressSpace

__all__ = [
    "MEMEXPOSE_PCI_DEVICE_ID",
    "MEMEXPOSE_PCI_OPTIONS",
    "MEMEXPOSE_PCI_VENDOR_ID",
    "MemexposePCI",
    "memexpose_pci_from_options",
]

MEMEXPOSE_PCI_VENDOR_ID = 0x1AF4
"""Red Hat / Qumranet, as the seed."""
MEMEXPOSE_PCI_DEVICE_ID = 0x1111
MEMEXPOSE_PCI_REVISION = 2
_CLASS_MEMORY_RAM = 0x0500
_BAR32_MAX = 1 << 31


class MemexposePCI(PCIDevice):
    """The ``memexpose-pci`` PCI function.

    Args:
        transport: how to reach the peer: a ``Transport``, ``"unix:PATH"``,
            ``"tcp:HOST:PORT"``, or a UNIX socket path. Only UNIX sockets pass
            fds, so only they map the peer's RAM directly.
        listen: for a path or address: listen (one side) or connect (the other).
        exposure: what the peer may reach of this machine's memory, e.g.
            ``Exposure.range(machine.address_space, 0, ram_size)``; None
            exports nothing.
        window_size: BAR1 bytes, a power of two from 4 KiB (the seed's
            ``shm_size``; default 4 KiB as the seed).
        lock: the machine lock; default the exposure's. Required without an
            exposure.
        name: names the link, its threads and regions (default
            ``"memexpose-pci"``; give two devices in one process two names).
        role: the link sub-priority, 0 or 1, or None to negotiate.
        timeout: seconds a forwarded access may wait for the peer.
        connect_timeout: seconds an ENABLE may spend connecting (in the
            background) before STATUS shows CONNECT_FAILED.
        readonly_share, direct: as ``MemexposeEndpoint``.
        bar64: BAR1 is a 64-bit BAR (the spec; default). False gives a
            32-bit BAR, whose ``window_size`` is at most 2 GiB: for stock
            QEMU's proxy, which sizes BARs as 32-bit ones only.
        msi: offer the MSI capability (default). False leaves INTx as the
            only interrupt, as stock QEMU's proxy delivers.
        id, path: as ``PCIDevice``.

    Raises:
        ConfigError: a bad window size (over 2 GiB with ``bar64=False``), no
            lock, or what the endpoint refuses.

    Invariants:
        * ``core.regs`` is BAR0 and ``core.window`` is BAR1;
        * INTx is asserted iff MSI is off and the RX queue level is high
          (at the last level change or config write).
    """

    def __init__(self, transport: Transport | str | os.PathLike[str], *, listen: bool = False,
                 exposure: Exposure | None = None, window_size: int = 0x1000,
                 lock: threading.RLock | None = None, name: str = "memexpose-pci",
                 role: int | None = None, timeout: float = 2.0, connect_timeout: float = 5.0,
                 readonly_share: str = "seal", direct: bool = True, bar64: bool = True,
                 msi: bool = True, id: str | None = None, path: str | None = None) -> None:
        if not bar64 and isinstance(window_size, int) and window_size > _BAR32_MAX:
            raise ConfigError(f"{name}: window_size {window_size:#x} does not fit a 32-bit "
                              "BAR1 (at most 0x80000000, 2 GiB); use a smaller window or "
                              "bar64=True (not understood by stock QEMU's proxy)")
        super().__init__("memexpose-pci", vendor_id=MEMEXPOSE_PCI_VENDOR_ID,
                         device_id=MEMEXPOSE_PCI_DEVICE_ID, revision=MEMEXPOSE_PCI_REVISION,
                         class_code=_CLASS_MEMORY_RAM, interrupt_pin=1, id=id, path=path)
        self.core = MemexposeCore(
            name, transport, listen=listen, exposure=exposure, window_size=window_size,
            lock=lock, irq_handler=self._irq_level, owner=self.owner, role=role,
            timeout=timeout, connect_timeout=connect_timeout, readonly_share=readonly_share,
            direct=direct)
        if msi:
            MSICap(self, nr_vectors=1, msi64bit=True, per_vector_mask=False)
        self.register_bar(0, self.core.regs)
        self.register_bar(1, self.core.window, mem64=bar64)
        self.msi_messages = 0
        """MSI messages sent (statistics)."""

    @property
    def endpoint(self) -> MemexposeEndpoint:
        """The link endpoint (``MemexposeEndpoint``)."""
        return self.core.endpoint

    # -- interrupts (machine lock held) ---------------------------------------------

    def _irq_level(self, level: bool) -> None:
        msi = self.msi
        if msi is not None and msi.enabled:
            if level and msi.notify(0):
                self.msi_messages += 1
            return
        self.set_irq(level)

    def do_config_write(self, offset: int, value: int, size: int) -> None:
        """Apply a config write; INTx follows the level again when MSI is turned off."""
        super().do_config_write(offset, value, size)
        msi = self.msi
        if msi is not None and not msi.enabled:
            self.set_irq(self.core.level)

    # -- life cycle -----------------------------------------------------------------

    def realize(self) -> None:
        """Check that the bus's memory system uses the link's lock.

        Raises:
            ConfigError: the machine lock of the bus is not the endpoint's.
        """
        assert self.bus is not None
        if self.bus.system.lock is not self.core.lock:
            raise ConfigError(
                f"{self.core.name}: the bus's memory system {self.bus.system.name!r} has "
                "another lock than the link; build the device with lock=machine.lock or an "
                "exposure of that machine")

    def unrealize(self) -> None:
        """Leaving the bus: disconnect (the transport stays usable)."""
        self.core.disable()

    def device_reset(self) -> None:
        """Disable the link, clear the RX queue and the registers. Machine lock held."""
        self.core.reset()

    def close(self) -> None:
        """Disconnect and release the transport. Final; call it when the machine closes."""
        self.core.close()

    def statistics(self) -> MemexposeStatistics:
        """Return the device and link counters."""
        return self.core.statistics()

    def _check_invariants(self) -> None:
        super()._check_invariants()
        self.core._check_invariants()
        msi_on = self.msi is not None and self.msi.enabled
        assert not (msi_on and self.irq_level()), "INTx asserted while MSI is on"

    def __repr__(self) -> str:
        return (f"<MemexposePCI {self.core.name!r} at {self.address} "
                f"{self.core.endpoint.state.name} window={self.core.window_size:#x}>")


# -- building from string options (``memexpose serve-device memexpose-pci``) -------------

MEMEXPOSE_PCI_OPTIONS = (
    "socket", "tcp", "listen", "server", "shm_size", "role", "expose_start", "expose_size",
    "expose", "readonly", "direct", "timeout", "connect_timeout", "name", "id", "bar64",
    "msi",
)
"""The option names ``memexpose_pci_from_options`` accepts."""

_TRUE = {"on", "yes", "true", "1"}
_FALSE = {"off", "no", "false", "0"}


def _bool(options: Mapping[str, str], key: str, default: bool) -> bool:
    text = options.get(key)
    if text is None:
        return default
    low = text.strip().lower()
    if low in _TRUE:
        return True
    if low in _FALSE:
        return False
    raise ConfigError(f"memexpose-pci option {key}={text!r}: expected on or off")


def _int(options: Mapping[str, str], key: str, default: int) -> int:
    text = options.get(key)
    if text is None:
        return default
    try:
        return int(text, 0)
    except ValueError:
        raise ConfigError(f"memexpose-pci option {key}={text!r}: expected an integer "
                          "(e.g. 4096 or 0x10000000)") from None


def _float(options: Mapping[str, str], key: str, default: float) -> float:
    text = options.get(key)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise ConfigError(f"memexpose-pci option {key}={text!r}: expected seconds > 0")
    return value


def memexpose_pci_from_options(options: Mapping[str, str], *,
                               address_space: AddressSpace | None = None,
                               lock: threading.RLock | None = None) -> MemexposePCI:
    """Build a ``MemexposePCI`` from string options (``--opt K=V``, QEMU-style names).

    Options (all strings):

    * ``socket=PATH`` (UNIX; fds pass) or ``tcp=HOST:PORT``: exactly one;
    * ``listen=on|off`` (alias ``server``; default off): accept or connect;
    * ``shm_size=N``: window (BAR1) bytes, a power of two (default 4096);
    * ``role=0|1|any``: link sub-priority (default any);
    * ``expose=on|off`` (default on when ``address_space`` is given),
      ``expose_start=ADDR`` (default 0), ``expose_size=N`` (default: to
      the end of the address space), ``readonly=on|off``: what the peer
      may reach of ``address_space``;
    * ``direct=on|off``: map the peer's RAM directly (default on);
    * ``timeout=S``, ``connect_timeout=S``: seconds (defaults 2 and 5);
    * ``name=NAME`` (link name), ``id=ID`` (PCI device id);
    * ``bar64=on|off`` (default on): BAR1 64-bit, or 32-bit (at most
      2 GiB) for stock QEMU's ``x-pci-proxy-dev``;
    * ``msi=on|off`` (default on): offer MSI, or INTx only (stock QEMU's
      proxy delivers no MSI).

    Args:
        options: the options above.
        address_space: the memory the peer may reach (a remote device
            process: the VM's RAM as ``RemotePlatform.memory``).
        lock: the machine lock; default ``address_space.system.lock``.

    Raises:
        ConfigError: an unknown option, a malformed value, neither or both of
            ``socket`` and ``tcp``, or an exposure without an address space.
    """
    unknown = sorted(set(options) - set(MEMEXPOSE_PCI_OPTIONS))
    if unknown:
        raise ConfigError(f"memexpose-pci: unknown option {unknown[0]!r}; options: "
                          f"{', '.join(MEMEXPOSE_PCI_OPTIONS)}")
    sock, tcp = options.get("socket"), options.get("tcp")
    if (sock is None) == (tcp is None):
        raise ConfigError("memexpose-pci: give exactly one of socket=PATH (UNIX, shares RAM "
                          "directly) and tcp=HOST:PORT")
    if "listen" in options and "server" in options:
        raise ConfigError("memexpose-pci: listen and server are the same option; give one")
    listen = _bool(options, "listen", _bool(options, "server", False))
    transport = make_transport(f"tcp:{tcp}" if tcp is not None else f"unix:{sock}",
                               listen=listen)
    role_text = options.get("role", "any").strip().lower()
    if role_text not in ("0", "1", "any", "either"):
        raise ConfigError(f"memexpose-pci option role={options['role']!r}: expected 0, 1 or "
                          "any")
    role = None if role_text in ("any", "either") else int(role_text)
    exposure = None
    if _bool(options, "expose", address_space is not None):
        if address_space is None:
            raise ConfigError("memexpose-pci: expose=on needs the address space to expose "
                              "(none was given)")
        start = _int(options, "expose_start", 0)
        size = _int(options, "expose_size", (1 << 64) - start)
        exposure = Exposure.range(address_space, start, size,
                                  readonly=_bool(options, "readonly", False))
    elif any(k in options for k in ("expose_start", "expose_size", "readonly")):
        raise ConfigError("memexpose-pci: expose_start/expose_size/readonly need expose=on "
                          "and an address space")
    if lock is None and address_space is not None:
        lock = address_space.system.lock
    return MemexposePCI(
        transport, exposure=exposure, window_size=_int(options, "shm_size", 0x1000), lock=lock,
        name=options.get("name", "memexpose-pci"), role=role,
        timeout=_float(options, "timeout", 2.0),
        connect_timeout=_float(options, "connect_timeout", 5.0),
        direct=_bool(options, "direct", True), bar64=_bool(options, "bar64", True),
        msi=_bool(options, "msi", True), id=options.get("id"))

