"""The machine benchmarks: registered, and their embedded guest loops are what they say."""

from __future__ import annotations

import capstone

from memexpose import bench
from memexpose.bench import machine as bench_machine


def _disasm(code: bytes) -> list[str]:
    cs = capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
    return [f"{i.mnemonic} {i.op_str}" for i in cs.disasm(code, 0)]


def test_registered() -> None:
    known = bench.load_benchmarks()
    assert {"guest-mmio", "guest-ram"} <= set(known)
    assert "memexpose.bench.machine" not in bench.import_errors()


def test_mmio_loop() -> None:
    assert _disasm(bench_machine._MMIO_LOOP) == [
        "ldr w0, [x1]", "subs x2, x2, #1", "b.ne #0", "hlt #0"]


def test_ram_loop() -> None:
    text = _disasm(bench_machine._RAM_LOOP)
    assert text[2:5] == ["ldr x4, [x5], #8", "add x0, x0, x4", "stur x0, [x5, #-8]"]
    assert text[-1] == "hlt #0"
