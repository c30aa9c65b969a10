"""System-bus devices: MMIO regions and IRQ outputs that a board places and wires.

A ``SysBusDevice`` declares what it has (``init_mmio``, ``init_irq``); the
board decides where it goes (``mmio_map`` into a container at an address)
and what each output drives (``connect_irq``). This is QEMU's sysbus split
between device and board, without QOM.
"""

from __future__ import annotations

from memexpose.errors import HwModelError
from memexpose.hw.irq import IrqLine
from memexpose.memory import MemoryRegion, Owner

__all__ = ["SysBusDevice", "device_owner"]


def device_owner(type_name: str, *, path: str | None = None, id: str | None = None) -> Owner:
    """Return the ``Owner`` a device's regions carry (enables the MMIO re-entrancy guard).

    ``info mtree -o`` prints ``{dev id=ID}``, else ``{dev path=PATH}``, else
    ``{dev type=TYPE}``.
    """
    return Owner("dev", path=path, id=id, type_name=type_name)


class SysBusDevice:
    """A device with MMIO regions and IRQ output lines.

    Args:
        type_name: the device type (``"pl011"``).
        path: canonical path for ``info mtree -o`` (optional).
        id: user-given id (optional).
        owner: an existing owner to share (a function embedding this device).

    Invariants:
        * ``mmio_regions[i]`` is mapped in at most one container at a time;
        * ``irqs[i]`` is this device's own output line; boards connect it.
    """

    def __init__(self, type_name: str, *, path: str | None = None, id: str | None = None,
                 owner: Owner | None = None) -> None:
        self.type_name = type_name
        self.id = id
        self.owner = owner if owner is not None else device_owner(type_name, path=path, id=id)
        self.mmio_regions: list[MemoryRegion] = []
        self.irqs: list[IrqLine] = []

    def init_mmio(self, region: MemoryRegion) -> int:
        """Declare ``region`` as this device's next MMIO region; return its index."""
        self.mmio_regions.append(region)
        return len(self.mmio_regions) - 1

    def init_irq(self, name: str | None = None) -> IrqLine:
        """Declare a new IRQ output line and return it."""
        line = IrqLine(name or f"{self.type_name}.irq[{len(self.irqs)}]")
        self.irqs.append(line)
        return line

    def mmio(self, n: int = 0) -> MemoryRegion:
        """Return MMIO region ``n``.

        Raises:
            HwModelError: no such region.
        """
        if not 0 <= n < len(self.mmio_regions):
            raise HwModelError(f"{self.type_name} has {len(self.mmio_regions)} MMIO regions; "
                               f"there is no region {n}")
        return self.mmio_regions[n]

    def irq(self, n: int = 0) -> IrqLine:
        """Return IRQ output ``n``.

        Raises:
            HwModelError: no such output.
        """
        if not 0 <= n < len(self.irqs):
            raise HwModelError(f"{self.type_name} has {len(self.irqs)} IRQ outputs; "
                               f"there is no output {n}")
        return self.irqs[n]

    def mmio_map(self, n: int, container: MemoryRegion, addr: int, priority: int = 0) -> None:
        """Place MMIO region ``n`` in ``container`` at ``addr`` (QEMU's ``sysbus_mmio_map``).

        A region already mapped is moved.
        """
        region = self.mmio(n)
        if region.container is not None:
            region.container.del_subregion(region)
        container.add_subregion_overlap(addr, region, priority)

    def mmio_unmap(self, n: int) -> None:
        """Remove MMIO region ``n`` from its container (a no-op when unmapped)."""
        region = self.mmio(n)
        if region.container is not None:
            region.container.del_subregion(region)

    def connect_irq(self, n: int, sink: IrqLine) -> None:
        """Make ``sink`` follow IRQ output ``n`` (QEMU's ``sysbus_connect_irq``)."""
        self.irq(n).connect(sink)

    def reset(self) -> None:
        """Return to the power-on state (subclasses override; the base does nothing)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.owner.describe()}>"
