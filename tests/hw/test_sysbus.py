"""SysBusDevice: regions placed and IRQs wired by the board."""

from __future__ import annotations

import pytest

from memexpose.errors import HwModelError
from memexpose.hw import IrqLine, SysBusDevice
from memexpose.memory import AddressSpace, MemoryRegion, MemoryRegionOps


def test_map_move_unmap_and_wire() -> None:
    dev = SysBusDevice("thing", id="t0")
    region = MemoryRegion.init_io("thing", 0x100, MemoryRegionOps(), owner=dev.owner)
    assert dev.init_mmio(region) == 0
    out = dev.init_irq()
    root = MemoryRegion.init_container("system", 1 << 32)
    as_ = AddressSpace(root, "memory")
    dev.mmio_map(0, root, 0x1000)
    assert as_.find_flat_range(0x1000).mr is region
    dev.mmio_map(0, root, 0x2000)
    assert as_.find_flat_range(0x1000) is None and as_.find_flat_range(0x2000).mr is region
    dev.mmio_unmap(0)
    dev.mmio_unmap(0)
    assert as_.find_flat_range(0x2000) is None
    sink = IrqLine("cpu")
    dev.connect_irq(0, sink)
    out.raise_irq()
    assert sink.level
    assert dev.owner.describe() == "{dev id=t0}"
    with pytest.raises(HwModelError, match="no region 1"):
        dev.mmio(1)
    with pytest.raises(HwModelError, match="no output 3"):
        dev.irq(3)
