"""A PCI bus: 32 slots of 8 functions, its memory and I/O spaces, INTx routing.

A bus is either a host bridge's root bus or the secondary bus of a
PCI-to-PCI bridge. Each bus has a memory space and an I/O space (containers
where its devices' BARs appear): the root bus uses the host's, a secondary
bus its own, which the bridge shows upstream through its windows.

INTx routing follows QEMU: on a secondary bus, pin ``p`` of slot ``s``
becomes pin ``(s + p) % 4`` of the bridge (the standard swizzle); on the
root bus the host maps ``(slot, pin)`` to one of its IRQ lines, and counts
how many devices assert each line (a shared, OR-ed line).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from memexpose.errors import HwModelError
from memexpose.hw.pci import regs as R
from memexpose.hw.pci.device import PCIDevice, pci_devfn, pci_func, pci_slot
from memexpose.memory import MemoryRegion, MemorySystem

if TYPE_CHECKING:
    from memexpose.hw.pci.bridge import PCIBridge
    from memexpose.hw.pci.host import PCIHost

__all__ = ["PCIBus"]


class PCIBus:
    """One PCI bus (root or secondary).

    Args:
        name: the bus name (``pcie.0``, or the bridge's id).
        system: the memory system its regions belong to.
        mem_space: container where memory BARs of its devices are mapped.
        io_space: container where I/O BARs are mapped.
        host: the host bridge (root bus).
        parent_bridge: the bridge this bus hangs behind (secondary bus).
        express: a PCI Express bus (functions may use 4 KiB config space).

    Invariants:
        * ``devices[devfn].devfn == devfn`` and ``.bus is self`` for every device;
        * function 0 of a slot with other functions has the multi-function bit;
        * exactly one of ``host`` and ``parent_bridge`` is set.
    """

    def __init__(self, name: str, *, system: MemorySystem, mem_space: MemoryRegion,
                 io_space: MemoryRegion, host: PCIHost | None = None,
                 parent_bridge: PCIBridge | None = None, express: bool = True) -> None:
        if (host is None) == (parent_bridge is None):
            raise HwModelError(f"bus {name!r}: give exactly one of host and parent_bridge")
        self.name = name
        self.system = system
        self.mem_space = mem_space
        self.io_space = io_space
        self.host = host
        self.parent_bridge = parent_bridge
        self.express = express
        self.devices: list[PCIDevice | None] = [None] * 256
        self.children: list[PCIBus] = []

    # -- identity -----------------------------------------------------------------------

    @property
    def is_root(self) -> bool:
        """Whether this is a host bridge's root bus."""
        return self.host is not None

    @property
    def root_host(self) -> PCIHost:
        """The host bridge at the top of this bus's tree."""
        bus = self
        while bus.host is None:
            assert bus.parent_bridge is not None and bus.parent_bridge.bus is not None
            bus = bus.parent_bridge.bus
        return bus.host

    @property
    def number(self) -> int:
        """The bus number: the host's for a root bus, else the bridge's secondary bus number."""
        if self.host is not None:
            return self.host.bus_number
        assert self.parent_bridge is not None
        return self.parent_bridge.config.get_byte(R.PCI_SECONDARY_BUS)

    @property
    def allow_0_address(self) -> bool:
        """Whether BARs may be mapped at address 0 (a machine property in QEMU)."""
        return self.root_host.allow_0_address

    def allows_extended_config(self) -> bool:
        """Whether functions on this bus may use config space above 256 bytes."""
        return self.express

    # -- devices --------------------------------------------------------------------------

    def add_device(self, dev: PCIDevice, slot: int | None = None, function: int = 0) -> int:
        """Plug ``dev`` into ``slot``/``function`` (first free slot when None); return its devfn.

        Raises:
            HwModelError: the devfn is taken, the device is on a bus already,
                or multi-function rules are broken (QEMU's checks: function N > 0
                needs function 0 to be multi-function; a single-function function 0
                cannot join a slot with other functions).
        """
        if dev.bus is not None:
            raise HwModelError(f"{dev.type_name} is already on bus {dev.bus.name!r} at "
                               f"{dev.address}; remove it first")
        if dev.config.express and not self.express:
            raise HwModelError(f"{dev.type_name} is a PCI Express function; bus {self.name!r} "
                               "is conventional PCI")
        if slot is None:
            for candidate in range(R.PCI_SLOT_MAX):
                if all(self.devices[candidate << 3 | f] is None for f in range(8)):
                    slot = candidate
                    break
            else:
                raise HwModelError(f"bus {self.name!r} has no free slot for {dev.type_name}")
        devfn = pci_devfn(slot, function)
        if self.devices[devfn] is not None:
            raise HwModelError(
                f"bus {self.name!r}: {slot:02x}.{function} is taken by "
                f"{self.devices[devfn].type_name}; choose another slot")  # type: ignore[union-attr]
        f0 = self.devices[pci_devfn(slot, 0)]
        if function and f0 is not None and not f0.multifunction:
            raise HwModelError(
                f"bus {self.name!r}: slot {slot:02x} holds single-function {f0.type_name}; "
                f"function {function} needs function 0 with multifunction=True")
        if not function and not dev.multifunction:
            others = [f for f in range(1, 8) if self.devices[pci_devfn(slot, f)] is not None]
            if others:
                raise HwModelError(
                    f"bus {self.name!r}: {dev.type_name} at {slot:02x}.0 is single-function but "
                    f"{slot:02x}.{others[0]} is populated; create it with multifunction=True")
        with self.system.transaction():
            self.devices[devfn] = dev
            try:
                dev._attach(self, devfn)
            except BaseException:
                self.devices[devfn] = None
                dev.bus = None
                dev.devfn = -1
                raise
        return devfn

    def remove_device(self, dev: PCIDevice) -> None:
        """Unplug ``dev``: its BARs disappear and its INTx is lowered.

        Raises:
            HwModelError: ``dev`` is not on this bus.
        """
        if dev.bus is not self:
            raise HwModelError(f"{dev.type_name} is not on bus {self.name!r}")
        self.devices[dev.devfn] = None
        dev._detach()

    def device_at(self, slot: int, function: int = 0) -> PCIDevice | None:
        """Return the device at ``slot``/``function`` of this bus, or None."""
        return self.devices[pci_devfn(slot, function)]

    def iter_devices(self) -> Iterator[PCIDevice]:
        """Yield this bus's devices in devfn order."""
        for dev in self.devices:
            if dev is not None:
                yield dev

    def walk(self) -> Iterator[PCIDevice]:
        """Yield every device of this bus and the buses behind its bridges, depth first."""
        for dev in self.iter_devices():
            yield dev
            secondary = getattr(dev, "secondary_bus", None)
            if secondary is not None:
                yield from secondary.walk()

    # -- bus numbers (QEMU's pci_find_bus_nr) -----------------------------------------------

    def find_bus(self, bus_num: int) -> PCIBus | None:
        """Return the bus numbered ``bus_num`` at or below this one, or None.

        A bridge forwards only numbers in its ``[secondary, subordinate]``
        range, and none while its secondary bus is held in reset.
        """
        if self.number == bus_num:
            return self
        if not self.is_root:
            assert self.parent_bridge is not None
            if not self.parent_bridge.secondary_in_range(bus_num):
                return None
        bus: PCIBus | None = self
        while bus is not None:
            nxt = None
            for child in bus.children:
                if child.number == bus_num:
                    return child
                assert child.parent_bridge is not None
                if child.parent_bridge.secondary_in_range(bus_num):
                    nxt = child
                    break
            bus = nxt
        return None

    def find_device(self, bus_num: int, devfn: int) -> PCIDevice | None:
        """Return the device at ``bus_num``/``devfn`` as config cycles would reach it."""
        bus = self.find_bus(bus_num)
        return bus.devices[devfn & 0xFF] if bus is not None else None

    # -- DMA and INTx ----------------------------------------------------------------------

    def dma_root_for(self, dev: PCIDevice) -> MemoryRegion:
        """Return the region ``dev``'s DMA reaches (the host decides: memory or an IOMMU)."""
        return self.root_host.dma_root_for(self, dev)

    def change_irq_level(self, dev: PCIDevice, pin: int, change: int) -> None:
        """Route a +1/-1 change of ``dev``'s ``pin`` up to the host (QEMU's routing).

        Machine lock held.
        """
        if self.host is not None:
            self.host.change_irq_level(pci_slot(dev.devfn), pin, change)
            return
        bridge = self.parent_bridge
        assert bridge is not None
        if bridge.bus is None:
            return
        bridge.bus.change_irq_level(bridge, (pci_slot(dev.devfn) + pin) % R.PCI_NUM_PINS,
                                    change)

    def reset(self) -> None:
        """Reset every device on this bus (and behind its bridges)."""
        for dev in list(self.iter_devices()):
            dev.reset()

    def _check_invariants(self) -> None:
        for devfn, dev in enumerate(self.devices):
            if dev is None:
                continue
            assert dev.devfn == devfn and dev.bus is self, dev
            if pci_func(devfn):
                f0 = self.devices[devfn & ~7]
                assert f0 is None or f0.multifunction, f"slot {pci_slot(devfn)}"

    def __repr__(self) -> str:
        count = sum(1 for d in self.devices if d is not None)
        return f"<PCIBus {self.name!r} number={self.number} devices={count}>"
