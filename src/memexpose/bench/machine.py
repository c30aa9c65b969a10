"""Benchmarks of guest code on a ``Machine``, each against bare Unicorn in the same run.

* ``guest-mmio``: an AArch64 loop of 32-bit loads from a device register,
  through the memory model (the machine lock, the region's ops) ÷ the same
  loop against a bare ``mmio_map`` Python callback. Target ratio <= 2.0.
* ``guest-ram``: an AArch64 loop of loads and stores over 1 MiB of RAM that
  the machine maps from a memory region ÷ the same loop with RAM mapped
  into Unicorn by hand (``mem_map_ptr`` over a memfd mapping). Throughput ratio,
  target >= 0.95.

Both alternate the two sides several times and keep the best time of each
(the host is shared and noisy: the minimum is the time the work needs).
The guest loops are embedded as machine code (the source is beside each),
so the benchmarks need no cross assembler.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import time
from typing import Any

import unicorn
from unicorn import arm64_const as a64c
from unicorn import unicorn_const as ucc

from memexpose.bench import benchmark
from memexpose.machine import Arch, Machine, StopKind
from memexpose.memory import AccessConstraints, MemoryRegion, MemoryRegionOps

__all__ = ["bench_guest_mmio", "bench_guest_ram"]

_CODE_BASE = 0x4000_0000
_DEVICE = 0x0900_0000
_RAM_BUFFER = 0x4010_0000
_UNTIL = 0xFFFF_FFFF_FFFF_FFFC
_ROUNDS = 7

# 1: ldr w0, [x1]; subs x2, x2, #1; b.ne 1b; hlt #0
_MMIO_LOOP = bytes.fromhex("200040b9420400f1c1ffff54000040d4")
# mov x5, x1; mov x6, x3
# 1: ldr x4, [x5], #8; add x0, x0, x4; str x0, [x5, #-8]; subs x6, x6, #1; b.ne 2f
#    mov x5, x1; mov x6, x3
# 2: subs x2, x2, #1; b.ne 1b; hlt #0
_RAM_LOOP = bytes.fromhex("e50301aae60303aaa48440f80000048ba0801ff8c60400f161000054"
                          "e50301aae60303aa420400f101ffff54000040d4")


class _Register(MemoryRegionOps):
    """One 32-bit read-only register."""

    valid = AccessConstraints(4, 4)

    def read(self, offset: int, size: int) -> int:
        return 0x1234_5678


def _machine(code: bytes, ram_size: int) -> Machine:
    machine = Machine(Arch.AARCH64, name="bench")
    machine.add_ram("ram", _CODE_BASE, ram_size)
    machine.system_memory.add_subregion(
        _DEVICE, MemoryRegion.init_io("register", 0x1000, _Register()))
    machine.address_space.write_rom(_CODE_BASE, code)
    return machine


def _run_machine(machine: Machine, regs: dict[str, int]) -> float:
    with machine.lock:
        machine.cpu.pc = _CODE_BASE
        for name, value in regs.items():
            machine.cpu.write_register(name, value)
    start = time.perf_counter()
    reason = machine.run(timeout=120)
    elapsed = time.perf_counter() - start
    if reason.kind is not StopKind.HALT:
        raise RuntimeError(f"benchmark guest did not halt: {reason.describe()}")
    return elapsed


class _Bare:
    """The same loop on a Unicorn set up by hand."""

    def __init__(self, code: bytes, ram_size: int) -> None:
        self.uc = unicorn.Uc(ucc.UC_ARCH_ARM64, ucc.UC_MODE_ARM)
        # A memfd like the machine's RAM, so the only difference is the memory layer.
        fd = os.memfd_create("bench-bare-ram", os.MFD_CLOEXEC)
        os.ftruncate(fd, ram_size)
        self.ram = mmap.mmap(fd, ram_size)
        os.close(fd)
        self.anchor = ctypes.c_char.from_buffer(self.ram)
        self.uc.mem_map_ptr(_CODE_BASE, ram_size, ucc.UC_PROT_ALL, ctypes.addressof(self.anchor))
        self.uc.mem_write(_CODE_BASE, code)
        self.uc.mmio_map(_DEVICE, 0x1000, lambda uc, offset, size, user: 0x1234_5678, None,
                         lambda uc, offset, size, value, user: None, None)
        self.uc.hook_add(ucc.UC_HOOK_INTR, lambda uc, intno, user: uc.emu_stop())

    def run(self, regs: dict[str, int]) -> float:
        for name, value in regs.items():
            self.uc.reg_write(getattr(a64c, f"UC_ARM64_REG_{name.upper()}"), value)
        start = time.perf_counter()
        self.uc.emu_start(_CODE_BASE, _UNTIL)
        return time.perf_counter() - start

    def close(self) -> None:
        self.uc.mem_unmap(_CODE_BASE, len(self.ram))
        del self.anchor
        self.ram.close()


def _compare(code: bytes, ram_size: int, regs: dict[str, int]) -> tuple[float, float]:
    machine = _machine(code, ram_size)
    bare = _Bare(code, ram_size)
    try:
        _run_machine(machine, regs)  # warm up both translation caches
        bare.run(regs)
        ours, theirs = [], []
        for _ in range(_ROUNDS):
            ours.append(_run_machine(machine, regs))
            theirs.append(bare.run(regs))
        return min(ours), min(theirs)
    finally:
        bare.close()
        machine.close()


@benchmark("guest-mmio", description="guest MMIO loads through the memory model vs bare "
           "Unicorn mmio_map (ratio, target <= 2.0)")
def bench_guest_mmio() -> dict[str, Any]:
    """Time 200k guest loads from a device register, both ways."""
    n = 200_000
    ours, bare = _compare(_MMIO_LOOP, 1 << 20, {"x1": _DEVICE, "x2": n})
    value = ours / n * 1e9
    baseline = bare / n * 1e9
    return {"value": round(value, 1), "unit": "ns/load", "baseline": round(baseline, 1),
            "ratio": round(value / baseline, 3), "target": 2.0,
            "details": {"loads": n, "rounds": _ROUNDS, "statistic": "min", "arch": "aarch64",
                        "baseline_is": "bare Unicorn mmio_map with a Python callback"}}


@benchmark("guest-ram", description="guest RAM loop through the memory layer vs RAM mapped "
           "into Unicorn by hand (throughput ratio, target >= 0.95)")
def bench_guest_ram() -> dict[str, Any]:
    """Time 8M iterations of load/add/store over 1 MiB of RAM, both ways."""
    n = 8_000_000
    words = (1 << 20) // 8
    regs = {"x0": 0, "x1": _RAM_BUFFER, "x2": n, "x3": words}
    ours, bare = _compare(_RAM_LOOP, 4 << 20, regs)
    moved = n * 16  # bytes loaded plus stored
    value = moved / ours / 1e6
    baseline = moved / bare / 1e6
    return {"value": round(value, 1), "unit": "MB/s", "baseline": round(baseline, 1),
            "ratio": round(value / baseline, 3), "target": 0.95,
            "details": {"iterations": n, "buffer_bytes": 1 << 20, "rounds": _ROUNDS,
                        "statistic": "min",
                        "arch": "aarch64",
                        "baseline_is": "bare Unicorn mem_map_ptr over a memfd mmap"}}
