"""Benchmark of the PCI config path.

* ``pci-config``: a 4-byte config read of the edu's vendor/device dword
  through ECAM, as a guest does it (``AddressSpace.read`` of the MMCONFIG
  window: flat-view lookup, MMIO dispatch, bus-number and devfn decode,
  the host's limit checks) divided by a direct call into the device's
  config space (``PCIDevice.config_read``), in the same run. Both are
  timed as the best of several rounds.
"""

from __future__ import annotations

import time
from typing import Any

from memexpose.bench import benchmark
from memexpose.devices import EduDevice
from memexpose.hw import MiniPC

ECAM_BASE = 0xB0000000
_ROUNDS = 7
_N = 20_000


@benchmark("pci-config",
           description="config read via ECAM through the address space / direct config_read")
def bench_pci_config() -> dict[str, Any]:
    pc = MiniPC(ram_size=1 << 20)
    edu = pc.add(EduDevice(pc.clock), slot=4)
    as_read = pc.memory.read
    addr = ECAM_BASE + (edu.devfn << 12)
    direct = edu.config_read
    expected = edu.config_read(0, 4)
    value, result = as_read(addr, 4)
    if value != expected or result:
        raise RuntimeError(f"ECAM read gave {value:#x} ({result!r}), expected {expected:#x}")

    def through_ecam() -> float:
        start = time.perf_counter()
        for _ in range(_N):
            as_read(addr, 4)
        return time.perf_counter() - start

    def direct_call() -> float:
        start = time.perf_counter()
        for _ in range(_N):
            direct(0, 4)
        return time.perf_counter() - start

    ecam_s = min(through_ecam() for _ in range(_ROUNDS))
    direct_s = min(direct_call() for _ in range(_ROUNDS))
    ecam_ns = ecam_s / _N * 1e9
    direct_ns = direct_s / _N * 1e9
    return {
        "value": round(ecam_ns, 1),
        "unit": "ns/read",
        "baseline": round(direct_ns, 1),
        "ratio": round(ecam_ns / direct_ns, 2),
        "details": {"reads_per_round": _N, "rounds": _ROUNDS,
                    "path": "AddressSpace.read(ECAM) vs PCIDevice.config_read"},
    }
