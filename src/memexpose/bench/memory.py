"""Benchmarks of the memory layer: rendering and the RAM access path.

* ``flatview-render``: render time of a 10k-region map (ms); the ratio is the
  time for a 100k-region map of the same shape divided by it (ideal: 10).
* ``as-read``: ``AddressSpace.read`` of 4 bytes from RAM divided by a bare
  ``bisect`` + slice + ``int.from_bytes`` over the same flat view.
"""

from __future__ import annotations

import time
from bisect import bisect_right
from typing import Any

from memexpose.bench import benchmark
from memexpose.memory import (
    AddressSpace,
    HostMemory,
    MemoryRegion,
    MemoryRegionOps,
    render_flatview,
)


def build_board_like_map(regions: int) -> MemoryRegion:
    """Return a root with about ``regions`` regions shaped like a busy board.

    Devices sit in containers of 64 (one MMIO block each, some with an
    overlapping higher-priority register window), RAM windows are aliases
    into one shared RAM region, and every eighth container is disabled and
    re-enabled lower down so priorities and holes matter.
    """
    root = MemoryRegion.init_container("system", 1 << 64)
    ops = MemoryRegionOps()
    ram = MemoryRegion.init_ram("bench.ram", 1 << 24,
                                hostmem=HostMemory.anonymous("bench.ram", 1 << 24))
    made = 1
    bus = 0
    while made < regions:
        bus_base = 0x1_0000_0000 + bus * 0x100_0000
        container = MemoryRegion.init_container(f"bus{bus}", 0x100_0000)
        for slot in range(64):
            if made >= regions:
                break
            base = slot * 0x4_0000
            kind = made % 10
            if kind < 7:
                container.add_subregion(base, MemoryRegion.init_io(f"dev{made}", 0x2_0000, ops))
            elif kind < 9:
                alias = MemoryRegion.init_alias(f"ram-window{made}", ram, (made * 0x1000)
                                                % (1 << 23), 0x1_0000)
                container.add_subregion(base, alias)
            else:
                # Overlaps the previous device's block with a higher priority.
                container.add_subregion_overlap(base - 0x1_0000, MemoryRegion.init_io(
                    f"regs{made}", 0x2_0000, ops), 1)
            made += 1
        root.add_subregion_overlap(bus_base, container, -1 if bus % 8 == 7 else 0)
        made += 1
        bus += 1
    return root


def _best_render_ms(root: MemoryRegion, repeats: int) -> tuple[float, int]:
    best = float("inf")
    ranges = 0
    for _ in range(repeats):
        start = time.perf_counter()
        view = render_flatview(root)
        best = min(best, time.perf_counter() - start)
        ranges = len(view.ranges)
    return best * 1000.0, ranges


@benchmark("flatview-render", description="render a 10k-region map (ms); ratio 100k/10k")
def bench_flatview_render() -> dict[str, Any]:
    """Render 10k and 100k region maps; report the 10k time and the scaling ratio."""
    small_ms, small_ranges = _best_render_ms(build_board_like_map(10_000), 5)
    large_ms, large_ranges = _best_render_ms(build_board_like_map(100_000), 3)
    return {
        "value": round(small_ms, 3),
        "unit": "ms",
        "baseline": round(large_ms, 3),
        "ratio": round(large_ms / small_ms, 3),
        "target": {"value_max": 50.0, "ratio_max": 15.0},
        "details": {"regions_small": 10_000, "ranges_small": small_ranges,
                    "regions_large": 100_000, "ranges_large": large_ranges,
                    "baseline_is": "render time of the 100k-region map (ms)"},
    }


@benchmark("as-read", description="AddressSpace.read 4 bytes of RAM vs bare bisect+slice")
def bench_as_read() -> dict[str, Any]:
    """Time ``AddressSpace.read`` against the bare lookup it is built on."""
    root = MemoryRegion.init_container("system", 1 << 64)
    ops = MemoryRegionOps()
    for i in range(64):
        root.add_subregion(0x1000_0000 + i * 0x1000, MemoryRegion.init_io(f"dev{i}", 0x100, ops))
    ram = MemoryRegion.init_ram("ram", 1 << 20)
    root.add_subregion(0x4000_0000, ram)
    as_ = AddressSpace(root, "memory")
    addr = 0x4000_0000 + 0x8_0000
    loops = 200_000
    read = as_.read

    def ours() -> float:
        start = time.perf_counter()
        for _ in range(loops):
            read(addr, 4)
        return time.perf_counter() - start

    view = as_.flatview
    starts = view.starts
    ranges = view.ranges
    host = ram.hostmem.view  # type: ignore[union-attr]

    def bare() -> float:
        start = time.perf_counter()
        for _ in range(loops):
            fr = ranges[bisect_right(starts, addr) - 1]
            o = addr - fr.start
            int.from_bytes(host[o:o + 4], "little")
        return time.perf_counter() - start

    ours_s = min(ours() for _ in range(5))
    bare_s = min(bare() for _ in range(5))
    value_ns = ours_s / loops * 1e9
    baseline_ns = bare_s / loops * 1e9
    as_.destroy()
    return {
        "value": round(value_ns, 1),
        "unit": "ns/read",
        "baseline": round(baseline_ns, 1),
        "ratio": round(value_ns / baseline_ns, 3),
        "target": {"ratio_max": 2.5},
        "details": {"loops": loops, "flat_ranges": len(ranges)},
    }
