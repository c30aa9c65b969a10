"""Helpers for the machine tests: the committed firmware images and small CPU rigs."""

from __future__ import annotations

from pathlib import Path

from memexpose.machine import Arch, UnicornCPU
from memexpose.memory import AddressSpace, HostMemory, MemoryRegion, UnassignedIOOps

FIRMWARE = Path(__file__).resolve().parents[2] / "firmware"
RAM_BASE = {Arch.AARCH64: 0x4000_0000, Arch.X86_64: 0}


def firmware(name: str) -> Path:
    """Return the committed image ``firmware/build/NAME``."""
    path = FIRMWARE / "build" / name
    assert path.is_file(), f"{path} missing: run `make -C firmware`"
    return path


class Rig:
    """A CPU over a bare address space: RAM at the board's base, nothing else."""

    def __init__(self, arch: Arch, ram_size: int = 0x40_0000) -> None:
        self.arch = arch
        self.root = MemoryRegion.init_container("system", 1 << 64)
        self.memory = AddressSpace(self.root, "memory")
        self.hostmem = HostMemory.memfd("ram", ram_size)
        self.ram_base = RAM_BASE[arch]
        self.ram = MemoryRegion.init_ram("ram", ram_size, hostmem=self.hostmem)
        self.root.add_subregion(self.ram_base, self.ram)
        self.io = None
        if arch is Arch.X86_64:
            self.io = AddressSpace(MemoryRegion.init_io("io", 0x10000, UnassignedIOOps()),
                                   "I/O", system=self.memory.system)
        self.cpu = UnicornCPU(arch, self.memory, io=self.io)
        if arch is Arch.X86_64:
            self.cpu.write_register("rsp", 0x8_0000)

    def close(self) -> None:
        with self.cpu.lock:
            self.cpu._check_invariants()
        self.cpu.close()
        self.hostmem.close()


def import_qmp_client() -> tuple[type, type]:
    """Return ``(QMPClient, ExecuteError)`` from the PyPI package ``qemu.qmp``."""
    from qemu.qmp import ExecuteError, QMPClient

    return QMPClient, ExecuteError

