"""UnicornCPU: zero-copy RAM, MMIO dispatch, split accesses, traps, faults, replay."""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from typing import Any

import pytest

from memexpose.errors import MachineError
from memexpose.machine import Arch, CpuExitKind, Trap
from memexpose.machine.loader import load_elf
from memexpose.memory import (
    AccessConstraints,
    Endianness,
    MemoryRegion,
    MemoryRegionOps,
    MemTxAttrs,
    Owner,
)

from .helpers import Rig, firmware

pytestmark = pytest.mark.timeout(30)


def _boot(rig: Rig, name: str) -> int:
    suffix = "aarch64" if rig.arch is Arch.AARCH64 else "x86_64"
    image = load_elf(rig.memory, firmware(f"{name}-{suffix}.elf"), rig.arch, cpu=rig.cpu)
    rig.cpu.pc = image.entry
    return image.entry


def _set(rig: Rig, **regs: int) -> None:
    for name, value in regs.items():
        rig.cpu.write_register(name, value)


class Recorder(MemoryRegionOps):
    """Logs every callback; reads return a value derived from the offset."""

    valid = AccessConstraints(1, 8)
    impl = AccessConstraints(1, 4)

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        value = 0x1122_3344_5566_7788 >> (offset % 8 * 8) if size < 8 else 0x1122_3344_5566_7788
        self.calls.append(("r", offset, size, value & ((1 << (8 * size)) - 1)))
        return value

    def write(self, offset: int, value: int, size: int) -> None:
        self.calls.append(("w", offset, size, value))


class WideRecorder(Recorder):
    impl = AccessConstraints(4, 8)


class Counter(MemoryRegionOps):
    """Each read returns how many reads came before plus one; may kick the CPU."""

    valid = AccessConstraints(4, 8)
    impl = AccessConstraints(4, 8)

    def __init__(self, kick=None, every: int = 0) -> None:
        self.reads = 0
        self.kick = kick
        self.every = every

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        if self.kick is not None and self.every and self.reads % self.every == 0:
            self.kick()
        return self.reads


def test_memcpy_is_zero_copy(rig: Rig) -> None:
    _boot(rig, "memcpy")
    src, dst, n = rig.ram_base + 0x20_0000, rig.ram_base + 0x30_0000, 0x1_0000
    data = os.urandom(n)
    rig.hostmem.view[0x20_0000:0x20_0000 + n] = data  # the host writes; no sync step
    if rig.arch is Arch.AARCH64:
        _set(rig, x1=src, x2=dst, x3=n)
    else:
        _set(rig, rsi=src, rdi=dst, rcx=n)
    exit_ = rig.cpu.execute()
    assert exit_.kind is CpuExitKind.HALTED
    assert bytes(rig.hostmem.view[0x30_0000:0x30_0000 + n]) == data
    assert rig.cpu.mappings[0].kind == "direct"


def test_wide_register_sees_one_8_byte_access(rig: Rig) -> None:
    wide = WideRecorder()
    rig.root.add_subregion(0x0900_0000, MemoryRegion.init_io("wide", 0x1000, wide))
    _boot(rig, "memcpy")
    rig.hostmem.view[0x28_0000:0x28_0008] = (0xAABB_CCDD_EEFF_0011).to_bytes(8, "little")
    if rig.arch is Arch.AARCH64:
        _set(rig, x1=rig.ram_base + 0x28_0000, x2=0x0900_0010, x3=8)
    else:
        _set(rig, rsi=rig.ram_base + 0x28_0000, rdi=0x0900_0010, rcx=8)
    assert rig.cpu.execute().kind is CpuExitKind.HALTED
    assert wide.calls == [("w", 0x10, 8, 0xAABB_CCDD_EEFF_0011)]
    assert [m.wide for m in rig.cpu.mappings if m.kind == "device"] == [True]


def test_narrow_device_gets_two_4_byte_accesses(rig: Rig) -> None:
    narrow = Recorder()
    rig.root.add_subregion(0x0900_0000, MemoryRegion.init_io("narrow", 0x1000, narrow))
    _boot(rig, "memcpy")
    if rig.arch is Arch.AARCH64:
        _set(rig, x1=0x0900_0000, x2=rig.ram_base + 0x28_0000, x3=8)
    else:
        _set(rig, rsi=0x0900_0000, rdi=rig.ram_base + 0x28_0000, rcx=8)
    assert rig.cpu.execute().kind is CpuExitKind.HALTED
    # impl max 4: the memory layer would split an 8-byte access the same way (M7).
    assert [c[:3] for c in narrow.calls] == [("r", 0, 4), ("r", 4, 4)]
    assert bytes(rig.hostmem.view[0x28_0000:0x28_0008]) == \
        (0x1122_3344_5566_7788).to_bytes(8, "little")


def test_wide_load_reassembled(a64: Rig) -> None:
    wide = WideRecorder()
    a64.root.add_subregion(0x0900_0000, MemoryRegion.init_io("wide", 0x1000, wide))
    _boot(a64, "doorbell")
    _set(a64, x1=0x0900_0000, x2=0x0900_0008, x3=5)
    assert a64.cpu.execute().kind is CpuExitKind.HALTED
    assert wide.calls == [("w", 0, 4, 5), ("r", 8, 8, 0x1122_3344_5566_7788)]
    assert a64.cpu.read_register("x0") == 0x1122_3344_5566_7788


class _Attrs(MemoryRegionOps):
    def read_with_attrs(self, offset: int, size: int, attrs: MemTxAttrs):
        from memexpose.memory import MEMTX_OK
        return offset + 1, MEMTX_OK


class _Picky(Recorder):
    def accepts(self, offset: int, size: int, is_write: bool, attrs: MemTxAttrs) -> bool:
        return offset < 0x10


class _Big(Recorder):
    endianness = Endianness.BIG


class _Strict(Recorder):
    valid = AccessConstraints(4, 4)


class _Unaligned(Recorder):
    valid = AccessConstraints(1, 8, unaligned=True)


@pytest.mark.parametrize("ops_cls", [Recorder, WideRecorder, _Attrs, _Picky, _Big, _Strict,
                                     _Unaligned])
@pytest.mark.parametrize("guarded", [False, True])
def test_fast_path_matches_address_space(a64: Rig, ops_cls: type, guarded: bool) -> None:
    """The CPU's direct call to ops gives what AddressSpace.read/write would (M6-M9)."""
    owner = Owner("dev", type_name="probe") if guarded else None
    ops_cpu, ops_ref = ops_cls(), ops_cls()
    a64.root.add_subregion(0x0900_0000, MemoryRegion.init_io("cpu", 0x1000, ops_cpu,
                                                             owner=owner))
    a64.root.add_subregion(0x0A00_0000, MemoryRegion.init_io("ref", 0x1000, ops_ref,
                                                             owner=owner))
    read, write = a64.cpu.mmio_callbacks(0x0900_0000)
    for offset in (0, 1, 2, 4, 6, 8, 0x14):
        for size in (1, 2, 4):
            with a64.cpu.lock:
                got = read(0, offset, size, 0)
                want, _ = a64.memory.read(0x0A00_0000 + offset, size)
                write(0, offset, size, 0x5A5A_5A5A, 0)
                a64.memory.write(0x0A00_0000 + offset, 0x5A5A_5A5A, size)
            assert got == want, (offset, size)
    if hasattr(ops_cpu, "calls"):
        assert ops_cpu.calls == ops_ref.calls


def test_stop_inside_an_access_is_replayed(rig: Rig) -> None:
    """Kicks landing inside MMIO reads never make the device see a read twice."""
    counter = Counter(kick=lambda: rig.cpu.kick(), every=7)
    rig.root.add_subregion(0x0900_0000, MemoryRegion.init_io("counter", 0x1000, counter))
    _boot(rig, "poll")
    n = 200
    if rig.arch is Arch.AARCH64:
        _set(rig, x1=0x0900_0000, x2=n)
    else:
        _set(rig, rsi=0x0900_0000, rdx=n)
    kicks = 0
    while True:
        exit_ = rig.cpu.execute()
        if exit_.kind is not CpuExitKind.KICKED:
            break
        kicks += 1
        with rig.cpu.lock:
            rig.cpu.take_requests()
    assert exit_.kind is CpuExitKind.HALTED
    assert kicks >= n // 7 - 1
    assert counter.reads == n
    assert rig.cpu.read_register("x0" if rig.arch is Arch.AARCH64 else "rax") == n
    assert rig.cpu.replays > 0


def test_region_added_from_mmio_callback_is_seen_by_next_load(a64: Rig) -> None:
    extra = MemoryRegion.init_ram("extra", 0x1000)
    extra.hostmem.view[0:8] = (0xFEED_F00D).to_bytes(8, "little")

    class Doorbell(MemoryRegionOps):
        def write(self, offset: int, value: int, size: int) -> None:
            a64.root.add_subregion(0x0B00_0000, extra)

    a64.root.add_subregion(0x0900_0000, MemoryRegion.init_io("doorbell", 0x1000, Doorbell()))
    _boot(a64, "doorbell")
    _set(a64, x1=0x0900_0000, x2=0x0B00_0000, x3=1)
    exit_ = a64.cpu.execute()
    assert exit_.kind is CpuExitKind.HALTED, exit_
    assert a64.cpu.read_register("x0") == 0xFEED_F00D
    a64.root.del_subregion(extra)
    extra.close()


def test_device_moved_from_its_own_callback(a64: Rig) -> None:
    """Unmapping the device whose callback runs is deferred to a safe point."""
    target = MemoryRegion.init_ram("target", 0x1000)
    target.hostmem.view[0:8] = (0x5151).to_bytes(8, "little")

    class Mover(MemoryRegionOps):
        def write(self, offset: int, value: int, size: int) -> None:
            with a64.memory.transaction():
                a64.root.del_subregion(mover)
                a64.root.add_subregion(0x0B00_0000, target)

    mover = MemoryRegion.init_io("mover", 0x1000, Mover())
    a64.root.add_subregion(0x0900_0000, mover)
    _boot(a64, "doorbell")
    _set(a64, x1=0x0900_0000, x2=0x0B00_0000, x3=1)
    exit_ = a64.cpu.execute()
    while exit_.kind is CpuExitKind.KICKED:
        with a64.cpu.lock:
            a64.cpu.take_requests()
        exit_ = a64.cpu.execute()
    assert exit_.kind is CpuExitKind.HALTED, exit_
    assert a64.cpu.read_register("x0") == 0x5151
    assert all(m.start != 0x0900_0000 for m in a64.cpu.mappings)
    a64.root.del_subregion(target)
    target.close()


def test_fetch_from_unmapped_memory_faults(rig: Rig) -> None:
    rig.cpu.pc = 0x7000_0000
    exit_ = rig.cpu.execute()
    assert exit_.kind is CpuExitKind.FAULT
    assert exit_.fault is not None
    assert exit_.fault.access == "fetch"
    assert exit_.fault.addr == 0x7000_0000
    assert "0x70000000" in exit_.fault.message
    assert exit_.fault.registers


def test_load_from_unmapped_memory_names_address_and_instruction(rig: Rig) -> None:
    entry = _boot(rig, "poll")
    if rig.arch is Arch.AARCH64:
        _set(rig, x1=0x5000_0000, x2=1)
    else:
        _set(rig, rsi=0x5000_0000, rdx=1)
    exit_ = rig.cpu.execute()
    assert exit_.kind is CpuExitKind.FAULT
    fault = exit_.fault
    assert fault is not None and fault.access == "read" and fault.addr == 0x5000_0000
    assert fault.size == 8
    assert entry <= fault.pc < entry + 16
    assert fault.instruction.startswith("ldr" if rig.arch is Arch.AARCH64 else "mov")
    assert fault.instruction in fault.message


def test_write_to_rom_faults(a64: Rig) -> None:
    rom = MemoryRegion.init_rom("rom", 0x1000)
    a64.root.add_subregion(0x0B00_0000, rom)
    _boot(a64, "memcpy")
    _set(a64, x1=a64.ram_base, x2=0x0B00_0000, x3=8)
    exit_ = a64.cpu.execute()
    assert exit_.kind is CpuExitKind.FAULT
    assert exit_.fault is not None and exit_.fault.access == "write"
    assert "write-protected" in exit_.fault.message
    a64.root.del_subregion(rom)
    rom.close()


def test_arm_traps(a64: Rig) -> None:
    seen: list[tuple[str, int, int, int]] = []

    def handler(trap: Trap) -> None:
        seen.append((trap.kind, trap.imm, trap.arg(0), trap.arg(1)))
        trap.set_result(trap.arg(0) + 100)

    a64.cpu.set_trap_handler("smc", handler)
    entry = _boot(a64, "traps")
    exit_ = a64.cpu.execute()
    assert exit_.kind is CpuExitKind.BREAKPOINT
    assert seen == [("smc", 0x42, 1, 0x11)]
    assert a64.cpu.read_register("x19") == 101
    assert a64.cpu.read_register("x20") == (1 << 64) - 1  # hvc without handler: SMCCC -1
    assert exit_.pc == entry + 0x1c
    assert a64.cpu.execute().kind is CpuExitKind.HALTED  # resumes past the brk


def test_x86_traps_and_ports(x64: Rig) -> None:
    from memexpose.memory import MemoryRegion as MR

    class Port(MemoryRegionOps):
        def __init__(self) -> None:
            self.written: list[tuple[int, int]] = []

        def read(self, offset: int, size: int) -> int:
            return 0x99

        def write(self, offset: int, value: int, size: int) -> None:
            self.written.append((offset, value))

    port = Port()
    assert x64.io is not None
    x64.io.root.add_subregion(0x80, MR.init_io("port80", 2, port))

    def vmcall(trap: Trap) -> None:
        assert (trap.kind, trap.arg(0), trap.arg(1)) == ("vmcall", 1, 0x11)
        trap.set_result(0x777)

    x64.cpu.set_trap_handler("vmcall", vmcall)
    _boot(x64, "traps")
    exit_ = x64.cpu.execute()
    assert exit_.kind is CpuExitKind.BREAKPOINT
    assert x64.cpu.read_register("r12") == 0x777
    assert port.written == [(0, 0x55)]
    assert x64.cpu.read_register("r13") == 0x99
    assert x64.cpu.execute().kind is CpuExitKind.HALTED


def test_trap_handler_errors_become_faults(a64: Rig) -> None:
    def broken(trap: Trap) -> None:
        raise RuntimeError("boom")

    a64.cpu.set_trap_handler("smc", broken)
    _boot(a64, "traps")
    exit_ = a64.cpu.execute()
    assert exit_.kind is CpuExitKind.FAULT
    assert "boom" in exit_.detail


def test_host_breakpoint(a64: Rig) -> None:
    entry = _boot(a64, "memcpy")
    _set(a64, x1=a64.ram_base, x2=a64.ram_base + 0x1000, x3=16)
    a64.cpu.add_breakpoint(entry + 8)
    exit_ = a64.cpu.execute()
    assert (exit_.kind, exit_.pc) == (CpuExitKind.BREAKPOINT, entry + 8)
    a64.cpu.remove_breakpoint(entry + 8)
    assert a64.cpu.execute().kind is CpuExitKind.HALTED


def test_misuse_raises(a64: Rig) -> None:
    with pytest.raises(MachineError, match="no register 'rax'"):
        a64.cpu.read_register("rax")
    with pytest.raises(MachineError, match="vmcall"):
        a64.cpu.set_trap_handler("vmcall", lambda trap: None)
    with pytest.raises(MachineError, match="I/O port space"):
        from memexpose.machine import UnicornCPU
        UnicornCPU(Arch.AARCH64, a64.memory, io=a64.memory)


def test_kick_before_execute_returns_at_once(a64: Rig) -> None:
    _boot(a64, "poll")
    _set(a64, x1=a64.ram_base, x2=1234)  # would spin forever
    with a64.cpu.lock:
        a64.cpu.kick()
    assert a64.cpu.execute().kind is CpuExitKind.KICKED


def test_arm32_mmio_traps_and_irq() -> None:
    """ARM (32-bit): MMIO, smc (INTR) and hvc (invalid-instruction hook), IRQ entry."""
    import struct

    from memexpose.machine import UnicornCPU
    from memexpose.memory import AddressSpace

    root = MemoryRegion.init_container("system", 1 << 64)
    memory = AddressSpace(root, "memory")
    ram = MemoryRegion.init_ram("ram", 0x10_0000)
    root.add_subregion(0x4000_0000, ram)
    dev = Recorder()
    root.add_subregion(0x0900_0000, MemoryRegion.init_io("dev", 0x1000, dev))
    cpu = UnicornCPU(Arch.ARM, memory)
    words = [0xE5910000,  # ldr r0, [r1]
             0xE5820004,  # str r0, [r2, #4]
             0xE3A00007,  # mov r0, #7
             0xE1600070,  # smc #0
             0xE1A06000,  # mov r6, r0
             0xE1400071,  # hvc #1
             0xE1A07000,  # mov r7, r0
             0xEE0C8F10,  # mcr p15, 0, r8, c12, c0, 0 (VBAR = r8)
             0xF1080080,  # cpsie i
             0xE320F003,  # 1: wfi
             0xE3550001,  # cmp r5, #1
             0x1AFFFFFC,  # bne 1b
             0xE1200070]  # bkpt
    memory.write_rom(0x4000_0000, b"".join(struct.pack("<I", w) for w in words))
    # IRQ vector (VBAR + 0x18): add r5, r5, #1; subs pc, lr, #4
    memory.write_rom(0x4000_1018, struct.pack("<II", 0xE2855001, 0xE25EF004))
    cpu.pc = 0x4000_0000
    for name, value in (("r1", 0x0900_0000), ("r2", 0x0900_0000), ("r8", 0x4000_1000),
                        ("sp", 0x4008_0000)):
        cpu.write_register(name, value)
    seen = []

    def handler(trap: Trap) -> None:
        seen.append((trap.kind, trap.imm, trap.pc))
        trap.set_result(trap.arg(0) + 1)

    cpu.set_trap_handler("smc", handler)
    cpu.set_trap_handler("hvc", handler)
    exit_ = cpu.execute()
    assert exit_.kind is CpuExitKind.IDLE
    assert seen == [("smc", 0, 0x4000_000C), ("hvc", 1, 0x4000_0014)]
    assert (cpu.read_register("r6"), cpu.read_register("r7")) == (8, 9)
    assert dev.calls[1][:2] == ("w", 4)
    with cpu.lock:
        assert cpu.inject_irq()
    exit_ = cpu.execute()
    assert (exit_.kind, cpu.read_register("r5")) == (CpuExitKind.BREAKPOINT, 1)
    cpu.close()


# -- stops and MMIO accesses (docs/machine.md, "Stops and MMIO accesses") --------
#
# Unicorn looks for a stop request after every guest memory access and, finding
# one, rewinds the PC to the start of that instruction. A kick from another
# thread that landed after an MMIO callback had returned, but before that check
# (the callback's "tail"), used to make the access reach the device twice.
# ``TailKick`` makes a kick land there deterministically: a profile hook on the
# CPU thread sees the callback return and holds that thread until another
# thread has kicked the CPU.

# The guests (source beside each) run from RAM at ram_base and end in a
# breakpoint (a trap the CPU reports however a kick races with it).
_GUESTS = {
    # str w3, [x1]; ldr w4, [x1, #4]; 1: subs x5, x5, #1; b.ne 1b; brk #0
    (Arch.AARCH64, "access"): "230000b9240440b9a50400f1e1ffff54000020d4",
    # movl %ebx, (%rsi); movl 4(%rsi), %ecx; 1: dec %rdx; jnz 1b; int3
    (Arch.X86_64, "access"): "891e8b4e0448ffca75fbcc",
    # ldr x4, [x1]; 1: subs x5, x5, #1; b.ne 1b; brk #0
    (Arch.AARCH64, "wide"): "240040f9a50400f1e1ffff54000020d4",
    # movq (%rsi), %rcx; 1: dec %rdx; jnz 1b; int3
    (Arch.X86_64, "wide"): "488b0e48ffca75fbcc",
    # 1: ldr w4, [x1]; str w4, [x1, #4]; subs x5, x5, #1; b.ne 1b; brk #0
    (Arch.AARCH64, "echo"): "240040b9240400b9a50400f1a1ffff54000020d4",
    # 1: movl (%rsi), %ecx; movl %ecx, 4(%rsi); dec %rdx; jnz 1b; int3
    (Arch.X86_64, "echo"): "8b0e894e0448ffca75f6cc",
    # ldr w0, [x0]; brk #0
    (Arch.AARCH64, "self-load"): "000040b9000020d4",
}
_DEV = 0x0900_0000
_FOREVER = 1 << 62  # spins: only a kick ends them (see _run_to_breakpoint)


def _load_guest(rig: Rig, name: str, spins: int = _FOREVER) -> None:
    """Load guest ``name`` at ram_base; x1/rsi = the device, x3/rbx = 0x5A, x5/rdx = ``spins``."""
    rig.memory.write_rom(rig.ram_base, bytes.fromhex(_GUESTS[rig.arch, name]))
    rig.cpu.invalidate_code(rig.ram_base, 0x100)
    rig.cpu.pc = rig.ram_base
    if rig.arch is Arch.AARCH64:
        _set(rig, x1=_DEV, x3=0x5A, x5=spins)
    else:
        _set(rig, rsi=_DEV, rbx=0x5A, rdx=spins)


def _run_to_breakpoint(rig: Rig, *, end_spin: bool = False) -> list[CpuExitKind]:
    """Run, taking kicks, until the guest's final breakpoint; return every exit's kind.

    With ``end_spin``, each kick also cuts the guest's spin loop short.
    """
    kinds = []
    while True:
        exit_ = rig.cpu.execute()
        kinds.append(exit_.kind)
        if exit_.kind is not CpuExitKind.KICKED:
            assert exit_.kind is CpuExitKind.BREAKPOINT, exit_
            return kinds
        with rig.cpu.lock:
            rig.cpu.take_requests()
        if end_spin:
            _set(rig, **{"x5" if rig.arch is Arch.AARCH64 else "rdx": 1})


class TailKick:
    """Kick the CPU from another thread in the tail of the ``nth`` call of ``callback``.

    Use as a context manager around ``cpu.execute()`` on the calling thread.
    """

    def __init__(self, cpu: Any, callback: Any, nth: int = 1) -> None:
        self.cpu = cpu
        self.code = callback.__code__
        self.nth = nth
        self.calls = 0
        self.go = threading.Event()
        self.kicked = threading.Event()
        self.thread = threading.Thread(target=self._kick, name="tail-kicker")

    def _kick(self) -> None:
        if self.go.wait(10) and self.calls:
            with self.cpu.lock:
                self.cpu.kick()
            self.kicked.set()

    def _profile(self, frame: Any, event: str, arg: Any) -> None:
        if event == "return" and frame.f_code is self.code:
            self.calls += 1
            if self.calls == self.nth:
                # The callback has released the machine lock; Unicorn has not
                # yet looked for a stop request. The other thread kicks now.
                self.go.set()
                assert self.kicked.wait(10)

    def __enter__(self) -> TailKick:
        self.thread.start()
        sys.setprofile(self._profile)
        return self

    def __exit__(self, *exc: object) -> None:
        sys.setprofile(None)
        self.go.set()
        self.thread.join()


@pytest.mark.parametrize("kind", ["w", "r"])
def test_kick_in_the_tail_of_an_access_does_not_repeat_it(rig: Rig, kind: str) -> None:
    """A kick right after a store's or a load's callback: the device sees it once."""
    dev = Recorder()
    rig.root.add_subregion(_DEV, MemoryRegion.init_io("dev", 0x1000, dev))
    _load_guest(rig, "access")
    read, write = rig.cpu.mmio_callbacks(_DEV)
    with TailKick(rig.cpu, write if kind == "w" else read) as tail:
        kinds = _run_to_breakpoint(rig, end_spin=True)
    assert tail.kicked.is_set()
    assert kinds == [CpuExitKind.KICKED, CpuExitKind.BREAKPOINT]  # the kick was honoured
    assert dev.calls == [("w", 0, 4, 0x5A), ("r", 4, 4, 0x1122_3344)]
    assert rig.cpu.read_register("x4" if rig.arch is Arch.AARCH64 else "rcx") == 0x1122_3344
    stats = rig.cpu.statistics()
    assert stats["deferred_kicks"] == 1
    # After the store, the load's callback found the kick and stopped inside it.
    assert stats["replays"] == (1 if kind == "w" else 0)


def test_kick_between_the_halves_of_a_split_access(rig: Rig) -> None:
    """An 8-byte load that a 4-byte device sees as two reads, kicked in between."""
    dev = Recorder()
    rig.root.add_subregion(_DEV, MemoryRegion.init_io("dev", 0x1000, dev))
    _load_guest(rig, "wide")
    read, _ = rig.cpu.mmio_callbacks(_DEV)
    with TailKick(rig.cpu, read) as tail:
        kinds = _run_to_breakpoint(rig, end_spin=True)
    assert tail.kicked.is_set() and kinds == [CpuExitKind.KICKED, CpuExitKind.BREAKPOINT]
    assert [c[:3] for c in dev.calls] == [("r", 0, 4), ("r", 4, 4)]
    assert rig.cpu.read_register("x4" if rig.arch is Arch.AARCH64 else "rcx") == \
        0x1122_3344_5566_7788
    assert rig.cpu.statistics()["replays"] == 1


def test_stop_inside_a_load_that_overwrites_its_base(a64: Rig) -> None:
    """AArch64 writes a load's register before Unicorn stops: ``ldr w0, [x0]`` survives."""

    class Kicking(MemoryRegionOps):
        reads = 0

        def read(self, offset: int, size: int) -> int:
            Kicking.reads += 1
            a64.cpu.kick()  # lands inside the access
            return 0x1234

    a64.root.add_subregion(_DEV, MemoryRegion.init_io("dev", 0x1000, Kicking()))
    _load_guest(a64, "self-load")
    _set(a64, x0=_DEV + 8)
    assert _run_to_breakpoint(a64) == [CpuExitKind.KICKED, CpuExitKind.BREAKPOINT]
    assert Kicking.reads == 1
    assert a64.cpu.read_register("x0") == 0x1234


class Echo(MemoryRegionOps):
    """Reads at offset 0 return 1, 2, 3...; writes at offset 4 are logged."""

    valid = AccessConstraints(4, 4)

    def __init__(self) -> None:
        self.reads = 0
        self.written: list[int] = []

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        return self.reads

    def write(self, offset: int, value: int, size: int) -> None:
        self.written.append(value)


def test_random_kicks_never_repeat_or_drop_accesses(rig: Rig) -> None:
    """Kicks from another thread at random times: every read and write happens once.

    The guest's loop starts with the load, so a stop that lands at the loop
    head looks like one in the tail of the previous iteration's load.
    """
    echo = Echo()
    rig.root.add_subregion(_DEV, MemoryRegion.init_io("echo", 0x1000, echo))
    _load_guest(rig, "echo")
    done = threading.Event()
    rng = random.Random(1)
    kicks = 0

    def kicker() -> None:
        nonlocal kicks
        while not done.is_set():
            time.sleep(rng.random() * 0.0003)
            with rig.cpu.lock:
                rig.cpu.kick()
                kicks += 1

    thread = threading.Thread(target=kicker, name="kicker")
    thread.start()
    try:
        while True:
            exit_ = rig.cpu.execute()
            if exit_.kind is not CpuExitKind.KICKED:
                break
            with rig.cpu.lock:
                rig.cpu.take_requests()
                if kicks >= 200:
                    _set(rig, **{"x5" if rig.arch is Arch.AARCH64 else "rdx": 1})
    finally:
        done.set()
        thread.join()
    assert exit_.kind is CpuExitKind.BREAKPOINT, exit_
    assert echo.reads > 200
    # A repeated read skips a value; a repeated or swallowed write repeats one.
    assert echo.written == list(range(1, echo.reads + 1))
