"""The CPU: Unicorn running guest code over the memory layer.

``UnicornCPU`` runs AArch64, ARM (32-bit) or x86_64 code. docs/machine.md
describes the model; the points that matter here:

* **Memory.** The CPU listens to its address space. At each commit it plans
  Unicorn mappings from the flat view (``mapping.py``, rules C1-C5): RAM is
  mapped zero copy with ``mem_map_ptr`` over the region's ``HostMemory``,
  MMIO with ``mmio_map`` whose callbacks take the machine lock and call the
  region's ops. A plan is applied at a *safe point*: at once when the CPU is
  stopped, or from inside a hook on the CPU thread; from inside an MMIO
  callback when it only adds mappings; otherwise the CPU is kicked and the
  change is applied before guest code runs again (or, sooner, when the guest
  touches a page that is not mapped yet).
* **Accesses Unicorn splits.** Unicorn hands an 8-byte MMIO access to its
  callbacks as two 4-byte ones. For regions whose callbacks take 8 bytes
  (``impl.max_access_size == 8``) the CPU adds a memory hook on those pages
  only; it reports the real size first, and the two halves become one
  8-byte dispatch.
* **Stops and MMIO accesses** (docs/machine.md, rules S1-S4). Unicorn
  looks for a stop request after every guest memory access; finding one,
  it rewinds the PC to the start of that instruction, whose device
  accesses already happened. Every MMIO callback records its access (S1).
  A callback that finds a kick pending stops the CPU itself; the CPU then
  re-runs that one instruction replaying the recorded accesses, so an
  instruction with several accesses repeats none of them (S2). A kick from
  another thread may land in a callback's *tail* (after it released the
  lock, before Unicorn's check; no Python code marks its end), so it stops
  Unicorn at once only while no callback has returned since the CPU was
  last known to be between instructions (S3). Otherwise the stopper thread
  stops it once the CPU thread has spent ``_TAIL_CPU_NS`` of CPU time with
  no further callback (S4).
* **Traps.** ``smc``/``hvc``/``svc`` (ARM) and ``vmcall`` (x86) go to the
  handler registered for the kind (``set_trap_handler``); x86 ``in``/``out``
  go to the I/O address space.
* **Interrupts.** One level-triggered IRQ input. Unicorn never enters guest
  exception vectors, so ``inject_irq`` emulates the entry (see its
  docstring for what is saved and where the guest lands).

Threads: guest code runs in the thread that calls ``execute``, without the
machine lock. Any thread may call ``kick``; the rest of the API is for the
machine's run loop, with the machine lock held, while guest code is not
running. The CPU starts its stopper thread on the first deferred kick and
joins it in ``close``.
"""

from __future__ import annotations

import enum
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import capstone
import unicorn
from unicorn import arm64_const as a64c
from unicorn import arm_const as armc
from unicorn import unicorn_const as ucc
from unicorn import x86_const as x86c
from unicorn.unicorn_py3.unicorn import MMIO_READ_CFUNC, MMIO_WRITE_CFUNC, uclib

from memexpose.errors import MachineError
from memexpose.machine.mapping import (
    KIND_DEVICE,
    KIND_DIRECT,
    CpuMapping,
    plan_mappings,
)
from memexpose.memory import (
    AddressSpace,
    Endianness,
    HostMemoryPin,
    MemoryListener,
    MemoryRegion,
    MemoryRegionOps,
)

__all__ = [
    "Arch",
    "CpuExit",
    "CpuExitKind",
    "CpuFault",
    "Trap",
    "TrapHandler",
    "UnicornCPU",
]

log = logging.getLogger(__name__)

_MASKS = tuple((1 << (8 * n)) - 1 for n in range(9))
_MASK64 = (1 << 64) - 1
_UNTIL = 0xFFFF_FFFF_FFFF_FFFC  # never reached: no block is invalidated at exit
_READ = 0
_WRITE = 1
# How many recent MMIO accesses are kept for replay (S1): more than any one
# instruction makes (an 8-byte access split in two is two).
_RECENT = 256
# CPU time the CPU thread must spend after its last MMIO callback before
# another thread's kick may stop Unicorn (S4): a tail costs a few us.
_TAIL_CPU_NS = 100_000
_TAIL_POLL_NS = 20_000  # the stopper's shortest wait between looks at that CPU time

# Kick reasons (bits of UnicornCPU._requests).
KICK_MAP = 1
KICK_IRQ = 2
KICK_MACHINE = 4
KICK_ERROR = 8
KICK_SELF = 16  # a hook ended the run itself (its exit is in _exit)


class Arch(enum.Enum):
    """The guest architectures the CPU runs."""

    AARCH64 = "aarch64"
    ARM = "arm"
    X86_64 = "x86_64"

    @property
    def page_size(self) -> int:
        """Unicorn's mapping granularity in bytes."""
        return 4096 if self is Arch.X86_64 else 1024

    @property
    def elf_machine(self) -> str:
        """pyelftools' ``e_machine`` name for ELF images of this architecture."""
        return {"aarch64": "EM_AARCH64", "arm": "EM_ARM", "x86_64": "EM_X86_64"}[self.value]


class CpuExitKind(enum.Enum):
    """Why ``UnicornCPU.execute`` returned."""

    KICKED = "kicked"          # someone called kick(): the machine has work
    IDLE = "idle"              # wfi / hlt with interrupts able to wake it
    CONTINUE = "continue"      # nothing to do (wfe, a spurious exit): run again
    HALTED = "halted"          # x86 cli;hlt, A64/A32 hlt: nothing can wake it
    BREAKPOINT = "breakpoint"  # brk / bkpt / int3, or a host breakpoint
    FAULT = "fault"            # unmapped or forbidden access, bad instruction
    STOP = "stop"              # a trap handler asked the machine to stop


@dataclass(frozen=True)
class CpuFault:
    """A guest fault: what was accessed, how, and where the guest was.

    Attributes:
        message: one line naming the access, address, PC and instruction.
        pc: the faulting instruction's address.
        instruction: its disassembly (``"??"`` when unreadable).
        addr: the data address, for memory faults (None otherwise).
        access: ``"read"``, ``"write"``, ``"fetch"``, or ``"instruction"``
            for a bad instruction.
        size: access size in bytes (0 when unknown).
        registers: register name -> value at the fault.
    """

    message: str
    pc: int
    instruction: str
    addr: int | None = None
    access: str = "instruction"
    size: int = 0
    registers: dict[str, int] = field(default_factory=dict)

    def register_dump(self) -> str:
        """Return the registers as ``name=value`` lines, four to a line."""
        items = [f"{name:>6}={value:#018x}" for name, value in self.registers.items()]
        return "\n".join("  ".join(items[i:i + 4]) for i in range(0, len(items), 4))


@dataclass(frozen=True)
class CpuExit:
    """The result of one ``execute``.

    Attributes:
        kind: why the CPU stopped.
        pc: where it stopped (the next instruction to run).
        fault: set for ``FAULT``.
        detail: a short human-readable reason (for STOP: the handler's words).
    """

    kind: CpuExitKind
    pc: int
    fault: CpuFault | None = None
    detail: str = ""


class Trap:
    """A trapping instruction handed to a handler (machine lock held).

    Attributes:
        kind: ``"smc"``, ``"hvc"``, ``"svc"`` (ARM) or ``"vmcall"`` (x86).
        imm: the instruction's immediate (0 for vmcall).
        pc: the address of the trapping instruction.
        cpu: the CPU; read and write registers through it.

    Calling conventions: ARM handlers find arguments in x0-x7 (r0-r7) and
    return results in x0-x3 (SMCCC); x86 handlers find the call number in
    rax and arguments in rbx, rcx, rdx, rsi (KVM's hypercall ABI) and return
    in rax. Execution continues after the trapping instruction.
    """

    __slots__ = ("cpu", "imm", "kind", "pc")

    def __init__(self, cpu: UnicornCPU, kind: str, imm: int, pc: int) -> None:
        self.cpu = cpu
        self.kind = kind
        self.imm = imm
        self.pc = pc

    def arg(self, index: int) -> int:
        """Return argument ``index`` (x0.. / r0.. on ARM; rax, rbx, rcx, rdx, rsi on x86)."""
        return self.cpu.read_register(self.cpu.arg_registers[index])

    def set_result(self, *values: int) -> None:
        """Write return values into x0, x1... (ARM) or rax (x86; one value)."""
        names = self.cpu.arg_registers
        if len(values) > (1 if self.cpu.arch is Arch.X86_64 else 4):
            raise MachineError(f"{self.kind} handler returned {len(values)} values; "
                               "ARM returns up to 4 (x0-x3), x86 one (rax)")
        for name, value in zip(names, values):
            self.cpu.write_register(name, value & _MASK64)

    def __repr__(self) -> str:
        return f"<Trap {self.kind} #{self.imm:#x} at {self.pc:#x}>"


TrapHandler = Callable[[Trap], None]
"""Called with the machine lock held; may call ``Machine.request_shutdown`` or
``Trap.cpu.request_stop`` to stop the run."""

# SMCCC: "not supported", the answer to an unknown function id.
SMCCC_NOT_SUPPORTED = 0xFFFF_FFFF_FFFF_FFFF
# KVM: -KVM_ENOSYS for an unknown hypercall number.
KVM_ENOSYS = (-1000) & _MASK64


class _CallbackState:
    """Mutable state shared by the hot callbacks (slots: cheap attribute access).

    Invariants:
        * ``stop`` is True iff a kick is pending (``UnicornCPU._requests``);
        * ``recent`` holds this slice's last ``_RECENT`` MMIO accesses, oldest
          first, as ``(kind, addr, size, value)``; it is cleared when a slice
          starts (no instruction is under way then);
        * ``interrupted`` is True iff a callback of this slice stopped the
          CPU inside an access; ``context`` is then the AArch64 registers
          taken in that callback (None elsewhere);
        * ``replay`` is non-empty only while the CPU finishes an interrupted
          instruction.
    """

    __slots__ = ("context", "interrupted", "recent", "replay", "replay_started", "stop",
                 "wide_hi", "wide_hi_addr", "wide_pending", "wide_skip")

    def __init__(self) -> None:
        self.stop = False
        self.recent: deque[tuple[int, int, int, int]] = deque(maxlen=_RECENT)
        self.interrupted = False
        self.context: Any = None
        self.replay: list[tuple[int, int, int, int]] = []
        self.replay_started = False
        self.wide_pending: tuple[bool, int, int] | None = None
        self.wide_hi = 0
        self.wide_hi_addr = -1
        self.wide_skip = -1

    def take_replay(self, kind: int, addr: int, size: int, value: int) -> int | None:
        """Return the recorded value of this access if the replay has it, else None (S2).

        The interrupted instruction's accesses are the newest recorded ones,
        but how many of them is not known: the first access of the re-run
        matches the most recent record equal to it (``value`` is compared for
        writes), and each further one must match the record after. An access
        that matches nothing ends the replay; it and the rest are performed.
        """
        replay = self.replay
        if not self.replay_started:
            self.replay_started = True
            for i in range(len(replay) - 1, -1, -1):
                k, a, s, v = replay[i]
                if k == kind and a == addr and s == size and (kind == _READ or v == value):
                    del replay[:i + 1]
                    self.wide_pending = None
                    return v
            replay.clear()
            return None
        k, a, s, v = replay[0]
        if k == kind and a == addr and s == size and (kind == _READ or v == value):
            del replay[0]
            self.wide_pending = None
            return v
        replay.clear()
        return None


def _fast_sizes(ops: MemoryRegionOps, is_write: bool, big_endian: bool) -> tuple[bool, ...]:
    """Per access size 0..8: can the callback go straight to ``ops.read``/``write``?

    True only where ``AddressSpace.read``/``write`` would make exactly that
    one call (docs/memory.md M6-M8): no ``accepts`` filter, the plain
    callback variant, the size valid and implemented as is, and the device
    in the target's byte order (or one byte). Alignment and the re-entrancy
    guard (M9) are checked per access by the caller.
    ``tests/machine/test_cpu.py`` checks the equivalence.
    """
    cls = type(ops)
    if cls.accepts is not MemoryRegionOps.accepts:
        return (False,) * 9
    attrs_variant = cls.write_with_attrs if is_write else cls.read_with_attrs
    base_variant = MemoryRegionOps.write_with_attrs if is_write else \
        MemoryRegionOps.read_with_attrs
    if attrs_variant is not base_variant:
        return (False,) * 9
    valid, impl = ops.valid, ops.impl
    end = ops.endianness
    dev_big = big_endian if end is Endianness.NATIVE else end is Endianness.BIG
    out = []
    for size in range(9):
        ok = size in (1, 2, 4, 8)
        if ok and valid.max_access_size:
            ok = valid.min_access_size <= size <= valid.max_access_size
        if ok:
            ok = (impl.min_access_size or 1) <= size <= (impl.max_access_size or 4)
        if ok and size > 1 and dev_big != big_endian:
            ok = False
        out.append(ok)
    return tuple(out)


def _guard_owner(mr: MemoryRegion) -> Any:
    """The owner whose re-entrancy guard an access engages (M9), or None."""
    owner = mr.owner
    if owner is None or not owner.is_device or mr.disable_reentrancy_guard or mr.ram \
            or mr.rom_device or mr.readonly:
        return None
    return owner


class _Mapped:
    """A mapping applied to Unicorn, with what keeps it alive."""

    __slots__ = ("callbacks", "hook", "mapping", "pin")

    def __init__(self, mapping: CpuMapping) -> None:
        self.mapping = mapping
        self.callbacks: tuple[Any, ...] = ()
        self.hook: int | None = None
        self.pin: HostMemoryPin | None = None


class _CpuListener(MemoryListener):
    """Follows the CPU's address space; every commit re-plans the mappings."""

    def __init__(self, cpu: UnicornCPU) -> None:
        self._cpu = cpu

    def commit(self) -> None:
        self._cpu._memory_changed()


_ARCH_SETUP = {
    Arch.AARCH64: (ucc.UC_ARCH_ARM64, ucc.UC_MODE_ARM, a64c.UC_ARM64_REG_PC),
    Arch.ARM: (ucc.UC_ARCH_ARM, ucc.UC_MODE_ARM, armc.UC_ARM_REG_PC),
    Arch.X86_64: (ucc.UC_ARCH_X86, ucc.UC_MODE_64, x86c.UC_X86_REG_RIP),
}


def _register_table(arch: Arch) -> dict[str, int]:
    if arch is Arch.AARCH64:
        regs = {f"x{i}": getattr(a64c, f"UC_ARM64_REG_X{i}") for i in range(31)}
        regs |= {"sp": a64c.UC_ARM64_REG_SP, "pc": a64c.UC_ARM64_REG_PC,
                 "pstate": a64c.UC_ARM64_REG_PSTATE, "elr_el1": a64c.UC_ARM64_REG_ELR_EL1,
                 "vbar_el1": a64c.UC_ARM64_REG_VBAR_EL1, "sp_el0": a64c.UC_ARM64_REG_SP_EL0,
                 "sp_el1": a64c.UC_ARM64_REG_SP_EL1, "esr_el1": a64c.UC_ARM64_REG_ESR_EL1}
        return regs
    if arch is Arch.ARM:
        regs = {f"r{i}": getattr(armc, f"UC_ARM_REG_R{i}") for i in range(13)}
        regs |= {"sp": armc.UC_ARM_REG_SP, "lr": armc.UC_ARM_REG_LR, "pc": armc.UC_ARM_REG_PC,
                 "cpsr": armc.UC_ARM_REG_CPSR, "spsr": armc.UC_ARM_REG_SPSR}
        return regs
    names = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15", "rip", "rflags"]
    return {name: getattr(x86c, f"UC_X86_REG_{name.upper()}") for name in names}


_DUMP_REGISTERS = {
    Arch.AARCH64: [f"x{i}" for i in range(31)] + ["sp", "pc", "pstate"],
    Arch.ARM: [f"r{i}" for i in range(13)] + ["sp", "lr", "pc", "cpsr"],
    Arch.X86_64: ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                  "r11", "r12", "r13", "r14", "r15", "rip", "rflags"],
}

_ARG_REGISTERS = {
    Arch.AARCH64: [f"x{i}" for i in range(8)],
    Arch.ARM: [f"r{i}" for i in range(8)],
    Arch.X86_64: ["rax", "rbx", "rcx", "rdx", "rsi"],
}

# A64 encodings (imm16 in bits 5..20).
_A64_EXC_MASK = 0xFFE0_001F
_A64_SVC, _A64_HVC, _A64_SMC = 0xD400_0001, 0xD400_0002, 0xD400_0003
_A64_BRK, _A64_HLT = 0xD420_0000, 0xD440_0000
_A64_WFI, _A64_WFE = 0xD503_207F, 0xD503_205F
# A32 encodings (condition AL).
_A32_WFI, _A32_HVC_MASK, _A32_HVC = 0xE320_F003, 0x0FF0_00F0, 0x0140_0070
_A32_HLT_MASK, _A32_HLT = 0x0FF0_00F0, 0x0100_0070
_T32_WFI = 0xBF30
# x86
_X86_VMCALL = (b"\x0f\x01\xc1", b"\x0f\x01\xd9")  # Intel vmcall, AMD vmmcall
_X86_IF = 1 << 9
_X86_TF = 1 << 8
X86_IRQ_VECTOR = 32
"""The IDT vector the CPU's IRQ input is delivered to on x86."""


class UnicornCPU:
    """One guest CPU on Unicorn, mapped over an ``AddressSpace``.

    Args:
        arch: the guest architecture.
        memory: the CPU's view of memory (usually the machine's system memory).
        io: the x86 I/O port space (``in``/``out``); None elsewhere.
        lock: the machine lock (every callback takes it); the memory system's
            lock when None.
        name: a label for messages.

    Raises:
        MachineError: ``io`` given for a non-x86 CPU.

    Invariants:
        * ``_mapped`` holds exactly what Unicorn has mapped, sorted by start,
          non-overlapping; each entry keeps its callbacks and host memory alive;
        * ``_pending_plan`` is None or a plan not yet applied;
        * ``_requests`` is nonzero iff ``_st.stop``;
        * ``_quiet`` is the newest recorded access of this slice whose
          instruction is known to have retired (None: none, or none yet);
          Unicorn is stopped from another thread only while it is
          ``_st.recent``'s newest (S3);
        * ``_proving`` is the slice number the stopper is proving quiet, or 0.
    """

    def __init__(self, arch: Arch, memory: AddressSpace, *, io: AddressSpace | None = None,
                 lock: threading.RLock | None = None, name: str = "cpu0") -> None:
        if io is not None and arch is not Arch.X86_64:
            raise MachineError(f"{name}: only x86_64 has an I/O port space; pass io=None "
                               f"for {arch.value}")
        self.arch = arch
        self.name = name
        self.memory = memory
        self.io = io
        self.lock = lock if lock is not None else memory.system.lock
        uc_arch, uc_mode, self._pc_reg = _ARCH_SETUP[arch]
        self.uc = unicorn.Uc(uc_arch, uc_mode)
        self._handle = self.uc._uch
        self._regs = _register_table(arch)
        self.arg_registers = _ARG_REGISTERS[arch]
        self._page = arch.page_size
        self._big_endian = memory.system.big_endian
        if self._big_endian:
            raise MachineError(f"{name}: big-endian guests are not supported")
        self._st = _CallbackState()
        self._requests = 0
        self._in_emu = False
        self._replaying = False
        self._cpu_thread: int | None = None
        self._slices = 0
        self._quiet: tuple[int, int, int, int] | None = None
        self._proving = 0
        self._stopper: threading.Thread | None = None
        self._stopper_cv = threading.Condition(self.lock)
        self._stopper_quit = False
        self._stopper_exited = False
        self._mapped: list[_Mapped] = []
        self._pending_plan: list[CpuMapping] | None = None
        self._plan_generation = 0
        self._applied_generation = 0
        self._applied = threading.Condition(self.lock)
        self._exit: CpuExit | None = None
        self._callback_error: BaseException | None = None
        self._invalid: tuple[int, int, int] | None = None
        self._resume_pc: int | None = None
        self._skip_breakpoint: int | None = None
        self._breakpoints: dict[int, int] = {}
        self._trap_handlers: dict[str, TrapHandler] = {}
        self._irq_level = False
        self._irq_listeners: list[Callable[[bool], None]] = []
        self.mmio_accesses = 0  # statistics: slow-path accesses (generic pages)
        self.remaps = 0
        self.replays = 0
        self.deferred_kicks = 0
        self.injected_irqs = 0
        self._cs = self._make_disassembler(thumb=False)
        self._setup_arch()
        self._install_hooks()
        self._listener = _CpuListener(self)
        with self.lock:
            memory.register_listener(self._listener)
            self._apply_pending()

    # -- setup --------------------------------------------------------------

    def _make_disassembler(self, thumb: bool) -> capstone.Cs:
        if self.arch is Arch.AARCH64:
            return capstone.Cs(capstone.CS_ARCH_ARM64, capstone.CS_MODE_ARM)
        if self.arch is Arch.ARM:
            return capstone.Cs(capstone.CS_ARCH_ARM,
                               capstone.CS_MODE_THUMB if thumb else capstone.CS_MODE_ARM)
        return capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)

    def _setup_arch(self) -> None:
        uc = self.uc
        if self.arch is Arch.AARCH64:
            # Unicorn resets SCR_EL3.RW and HCR_EL2.RW to 0, which makes an
            # eret to EL1 illegal; HCE makes hvc a trap instead of UNDEF.
            scr = uc.cpr_read(3, 6, 1, 1, 0)
            uc.cpr_write(3, 6, 1, 1, 0, scr | (1 << 10) | (1 << 8))
            hcr = uc.cpr_read(3, 4, 1, 1, 0)
            uc.cpr_write(3, 4, 1, 1, 0, hcr | (1 << 31))

    def _install_hooks(self) -> None:
        uc = self.uc
        uc.hook_add(ucc.UC_HOOK_MEM_INVALID, self._on_invalid_memory)
        uc.hook_add(ucc.UC_HOOK_INTR, self._on_interrupt)
        if self.arch is Arch.X86_64:
            uc.hook_add(ucc.UC_HOOK_INSN, self._on_port_in, None, 1, 0, x86c.UC_X86_INS_IN)
            uc.hook_add(ucc.UC_HOOK_INSN, self._on_port_out, None, 1, 0, x86c.UC_X86_INS_OUT)
        if self.arch is not Arch.AARCH64:
            uc.hook_add(ucc.UC_HOOK_INSN_INVALID, self._on_invalid_instruction)

    # -- registers ----------------------------------------------------------

    @property
    def register_names(self) -> tuple[str, ...]:
        """Names accepted by ``read_register``/``write_register``."""
        return tuple(self._regs)

    def read_register(self, name: str) -> int:
        """Return register ``name`` (e.g. ``"x0"``, ``"sp"``, ``"rip"``).

        Raises:
            MachineError: no such register on this architecture.
        """
        try:
            reg = self._regs[name]
        except KeyError:
            raise MachineError(f"{self.name}: no register {name!r} on {self.arch.value}; "
                               f"known: {', '.join(self._regs)}") from None
        return int(self.uc.reg_read(reg))

    def write_register(self, name: str, value: int) -> None:
        """Set register ``name`` to ``value`` (masked to 64 bits).

        Raises:
            MachineError: no such register on this architecture.
        """
        try:
            reg = self._regs[name]
        except KeyError:
            raise MachineError(f"{self.name}: no register {name!r} on {self.arch.value}; "
                               f"known: {', '.join(self._regs)}") from None
        self.uc.reg_write(reg, value & _MASK64)

    @property
    def pc(self) -> int:
        """The address of the next instruction to run."""
        if self._resume_pc is not None:
            return self._resume_pc
        return int(self.uc.reg_read(self._pc_reg))

    @pc.setter
    def pc(self, value: int) -> None:
        self._resume_pc = None
        self._skip_breakpoint = None
        self.uc.reg_write(self._pc_reg, value)

    def registers(self) -> dict[str, int]:
        """Return the general registers, SP, PC and flags (for fault dumps)."""
        return {name: int(self.uc.reg_read(self._regs[name]))
                for name in _DUMP_REGISTERS[self.arch]}

    def disassemble(self, addr: int) -> str:
        """Return ``"mnemonic operands"`` of the instruction at ``addr``, or ``"??"``."""
        cs = self._cs
        if self.arch is Arch.ARM and self.uc.reg_read(armc.UC_ARM_REG_CPSR) & 0x20:
            cs = self._make_disassembler(thumb=True)
        code, _ = self.memory.read_bytes(addr, 16)
        for insn in cs.disasm(code, addr, 1):
            return f"{insn.mnemonic} {insn.op_str}".strip()
        return "??"

    def _instruction_length(self, addr: int) -> int:
        if self.arch is Arch.AARCH64:
            return 4
        if self.arch is Arch.ARM:
            if not self.uc.reg_read(armc.UC_ARM_REG_CPSR) & 0x20:
                return 4
            cs = self._make_disassembler(thumb=True)
        else:
            cs = self._cs
        code, _ = self.memory.read_bytes(addr, 16)
        for insn in cs.disasm(code, addr, 1):
            return insn.size
        return 4

    def _read_u32(self, addr: int) -> int:
        value, _ = self.memory.read(addr, 4)
        return value

    # -- memory mappings ----------------------------------------------------

    @property
    def mappings(self) -> tuple[CpuMapping, ...]:
        """The mappings Unicorn has now (a pending plan is not yet among them)."""
        return tuple(m.mapping for m in self._mapped)

    def mmio_callbacks(self, addr: int) -> tuple[Any, Any]:
        """Return the Python read and write callbacks Unicorn calls for ``addr``.

        They take Unicorn's arguments: ``read(handle, offset_in_mapping, size,
        user)`` and ``write(handle, offset_in_mapping, size, value, user)``.
        For tests; raises ``MachineError`` when ``addr`` is not an MMIO mapping.
        """
        for entry in self._mapped:
            if entry.mapping.start <= addr < entry.mapping.end and entry.callbacks:
                return entry.callbacks[2], entry.callbacks[3]
        raise MachineError(f"{self.name}: {addr:#x} is not in an MMIO mapping")

    def _memory_changed(self) -> None:
        """Listener commit (machine lock held): plan, then apply at a safe point."""
        self._pending_plan = plan_mappings(self.memory.flatview.ranges, self._page)
        self._plan_generation += 1
        if not self._in_emu:
            self._apply_pending()
            return
        # On the CPU thread inside a hook. Unmapping the device mapping whose
        # callback is running would free it under Unicorn's feet: inside an
        # MMIO callback, only plans that drop no device mapping apply at once.
        if threading.get_ident() == self._cpu_thread and (
                not self._plan_drops_devices() or not _inside_mmio_callback()):
            self._apply_pending()
            return
        self.kick(KICK_MAP)

    def _plan_drops_devices(self) -> bool:
        new_keys = {m.key() for m in self._pending_plan or ()}
        return any(m.mapping.kind != KIND_DIRECT and m.mapping.key() not in new_keys
                   for m in self._mapped)

    def _apply_pending(self) -> None:
        """Make Unicorn's map equal the pending plan (machine lock held)."""
        plan = self._pending_plan
        if plan is None:
            return
        self._pending_plan = None
        uc = self.uc
        new_keys = {m.key(): m for m in plan}
        keep: list[_Mapped] = []
        for entry in self._mapped:
            if entry.mapping.key() in new_keys:
                keep.append(entry)
                continue
            m = entry.mapping
            if entry.hook is not None:
                uc.hook_del(entry.hook)
            uc.mem_unmap(m.start, m.size)
            if m.kind == KIND_DIRECT:
                uc.ctl_remove_cache(m.start, m.end)
            if entry.pin is not None:
                entry.pin.release()
        old_keys = {e.mapping.key() for e in keep}
        for m in plan:
            if m.key() in old_keys:
                continue
            keep.append(self._map(m))
            self.remaps += 1
        keep.sort(key=lambda e: e.mapping.start)
        self._mapped = keep
        self._applied_generation = self._plan_generation
        self._applied.notify_all()

    def _map(self, m: CpuMapping) -> _Mapped:
        uc = self.uc
        entry = _Mapped(m)
        try:
            if m.kind == KIND_DIRECT:
                assert m.hostmem is not None
                perms = ucc.UC_PROT_READ | ucc.UC_PROT_EXEC
                if m.writable:
                    perms |= ucc.UC_PROT_WRITE
                # Pinned: a close() elsewhere (a peer's invalidation) must not
                # unmap pages Unicorn uses until this mapping is removed.
                entry.pin = m.hostmem.pin()
                uc.mem_map_ptr(m.start, m.size, perms, entry.pin.address + m.host_offset)
                # Code at these addresses may have been translated from other bytes.
                uc.ctl_remove_cache(m.start, m.end)
            else:
                read_cb, write_cb, py_read, py_write = self._make_callbacks(m)
                entry.callbacks = (read_cb, write_cb, py_read, py_write, m.mr)
                status = uclib.uc_mmio_map(self._handle, m.start, m.size, read_cb, None,
                                           write_cb, None)
                if status != ucc.UC_ERR_OK:
                    raise unicorn.UcError(status)
                if m.wide:
                    entry.hook = uc.hook_add(ucc.UC_HOOK_MEM_READ | ucc.UC_HOOK_MEM_WRITE,
                                             self._on_wide_access, None, m.start, m.end - 1)
        except unicorn.UcError as exc:
            raise MachineError(f"{self.name}: Unicorn refused to map {m!r}: {exc}") from exc
        return entry

    def wait_memory_applied(self, timeout: float | None = None) -> bool:
        """Block until every committed map change is visible to the guest.

        Call without the machine lock (or with it held once: the wait
        releases it). Returns False on timeout.
        """
        with self._applied:
            target = self._plan_generation
            return self._applied.wait_for(lambda: self._applied_generation >= target, timeout)

    def invalidate_code(self, addr: int, size: int) -> None:
        """Drop translated code for ``[addr, addr + size)``.

        Call after writing guest code from outside the guest (a loader, a
        peer writing shared RAM): Unicorn would otherwise run stale
        translations of the old bytes.
        """
        if size > 0:
            self.uc.ctl_remove_cache(addr, addr + size)

    def _make_callbacks(self, m: CpuMapping) -> tuple[Any, Any, Any, Any]:
        """Build the MMIO callbacks of mapping ``m`` (the hot path).

        Returns the ctypes read and write callbacks, then the Python functions
        they wrap (tests call those directly).
        """
        st = self._st
        acquire = self.lock.acquire
        release = self.lock.release
        masks = _MASKS
        base = m.start
        mem_read = self.memory.read
        mem_write = self.memory.write
        failed = self._callback_failed
        record = st.recent.append
        stop_inside = self._stop_inside_access

        if m.kind == KIND_DEVICE:
            mr = m.mr
            assert mr is not None
            ops = mr.ops
            delta = m.delta
            fast_r = _fast_sizes(ops, False, self._big_endian)
            fast_w = _fast_sizes(ops, True, self._big_endian)
            guard = _guard_owner(mr)
            ops_read = ops.read
            ops_write = ops.write

            def load(addr: int, size: int) -> int:
                offset = addr + delta
                if fast_r[size] and not offset & (size - 1):
                    if guard is None:
                        return ops_read(offset, size) & masks[size]
                    if not guard.engaged_in_io:
                        guard.engaged_in_io = True
                        try:
                            return ops_read(offset, size) & masks[size]
                        finally:
                            guard.engaged_in_io = False
                return mem_read(addr, size)[0]

            def store(addr: int, value: int, size: int) -> None:
                offset = addr + delta
                if fast_w[size] and not offset & (size - 1):
                    if guard is None:
                        ops_write(offset, value & masks[size], size)
                        return
                    if not guard.engaged_in_io:
                        guard.engaged_in_io = True
                        try:
                            ops_write(offset, value & masks[size], size)
                        finally:
                            guard.engaged_in_io = False
                        return
                mem_write(addr, value, size)
        else:
            def load(addr: int, size: int) -> int:
                return mem_read(addr, size)[0]

            def store(addr: int, value: int, size: int) -> None:
                mem_write(addr, value, size)

        if m.kind == KIND_DEVICE and not m.wide:
            # The hot path: everything inline, one Python frame per access.
            def read_cb(handle: int, off: int, size: int, user: int) -> int:
                acquire()
                try:
                    addr = base + off
                    if st.replay:
                        value = st.take_replay(_READ, addr, size, 0)
                        if value is not None:
                            return value
                    offset = addr + delta
                    if fast_r[size] and not offset & (size - 1) and guard is None:
                        value = ops_read(offset, size) & masks[size]
                    else:
                        value = load(addr, size)
                    record((_READ, addr, size, value))
                    if st.stop:
                        stop_inside()
                    return value
                except BaseException as exc:  # never raise into Unicorn
                    failed(exc, m, base + off, size, False)
                    return 0
                finally:
                    release()

            def write_cb(handle: int, off: int, size: int, value: int, user: int) -> None:
                acquire()
                try:
                    addr = base + off
                    if st.replay and st.take_replay(_WRITE, addr, size, value) is not None:
                        return
                    offset = addr + delta
                    if fast_w[size] and not offset & (size - 1) and guard is None:
                        ops_write(offset, value & masks[size], size)
                    else:
                        store(addr, value, size)
                    record((_WRITE, addr, size, value))
                    if st.stop:
                        stop_inside()
                except BaseException as exc:
                    failed(exc, m, base + off, size, True)
                finally:
                    release()
        else:
            def read_cb(handle: int, off: int, size: int, user: int) -> int:
                acquire()
                try:
                    addr = base + off
                    if st.replay:
                        value = st.take_replay(_READ, addr, size, 0)
                        if value is not None:
                            return value
                    wide = st.wide_pending
                    if wide is not None and size == 4 and not wide[0] and wide[1] == addr:
                        # First half of an 8-byte load: one 8-byte access.
                        st.wide_pending = None
                        value8 = load(addr, 8)
                        st.wide_hi = value8 >> 32
                        st.wide_hi_addr = addr + 4
                        value = value8 & 0xFFFF_FFFF
                    elif st.wide_hi_addr == addr and size == 4:
                        st.wide_hi_addr = -1
                        value = st.wide_hi
                    else:
                        value = load(addr, size)
                    record((_READ, addr, size, value))
                    if st.stop:
                        stop_inside()
                    return value
                except BaseException as exc:
                    failed(exc, m, base + off, size, False)
                    return 0
                finally:
                    release()

            def write_cb(handle: int, off: int, size: int, value: int, user: int) -> None:
                acquire()
                try:
                    addr = base + off
                    if st.replay and st.take_replay(_WRITE, addr, size, value) is not None:
                        return
                    wide = st.wide_pending
                    if wide is not None and size == 4 and wide[0] and wide[1] == addr:
                        st.wide_pending = None
                        store(addr, wide[2], 8)
                        st.wide_skip = addr + 4
                    elif st.wide_skip == addr and size == 4:
                        st.wide_skip = -1
                    else:
                        store(addr, value, size)
                    record((_WRITE, addr, size, value))
                    if st.stop:
                        stop_inside()
                except BaseException as exc:
                    failed(exc, m, base + off, size, True)
                finally:
                    release()

        _MMIO_CODES.add(read_cb.__code__)
        _MMIO_CODES.add(write_cb.__code__)
        return MMIO_READ_CFUNC(read_cb), MMIO_WRITE_CFUNC(write_cb), read_cb, write_cb

    def _on_wide_access(self, uc: Any, access: int, addr: int, size: int, value: int,
                        user: Any) -> None:
        if size == 8:
            self._st.wide_pending = (access == ucc.UC_MEM_WRITE, addr, value & _MASK64)

    def _callback_failed(self, exc: BaseException, m: CpuMapping, addr: int, size: int,
                         is_write: bool) -> None:
        if self._callback_error is None:
            what = m.mr.name if m.mr is not None else "address space"
            self._callback_error = MachineError(
                f"{self.name}: the {'write' if is_write else 'read'} of {size} bytes at "
                f"{addr:#x} ({what}) raised {type(exc).__name__}: {exc}")
            self._callback_error.__cause__ = exc
        self.kick(KICK_ERROR)

    # -- stopping -----------------------------------------------------------

    def kick(self, reason: int = KICK_MACHINE) -> None:
        """Make ``execute`` return soon (machine lock held; any thread).

        A kick that arrives before ``execute`` starts makes it return at once.
        While guest code runs, the CPU stops at the next MMIO access (which
        is then replayed, not repeated), or at once if no MMIO callback has
        returned since the CPU was last known to be between instructions,
        or else once the CPU thread has run ``_TAIL_CPU_NS`` of CPU time
        past that callback (the stopper thread; typically 0.1-0.3 ms). See
        the module docstring.
        """
        self._requests |= reason
        self._st.stop = True
        if self._in_emu:
            self._stop_emulation()

    def kick_again(self) -> None:
        """Re-issue a pending kick (the machine's watchdog; machine lock held).

        Unicorn drops an ``emu_stop`` that races with the start of
        ``emu_start``; re-issuing while a kick is pending closes that gap.
        """
        if self._requests and self._in_emu:
            self._stop_emulation()

    def _stop_emulation(self) -> None:
        """Stop Unicorn now if that is safe, else have the stopper do it (lock held).

        Safe (S3): on the CPU thread (inside a hook; an MMIO callback then
        stops inside its access, S2), or while no MMIO callback has returned
        since the CPU was last known to be between instructions.
        """
        if self._replaying:
            return  # one instruction: it ends by itself
        if threading.get_ident() == self._cpu_thread:
            self.uc.emu_stop()
            return
        if self._proving == self._slices:
            return  # the stopper already works on this slice
        st = self._st
        if (st.recent[-1] if st.recent else None) is self._quiet:
            self.uc.emu_stop()
            return
        self.deferred_kicks += 1
        self._proving = self._slices
        if self._stopper is None:
            self._stopper_quit = self._stopper_exited = False
            self._stopper = threading.Thread(target=self._stopper_main,
                                             name=f"{self.name}-stopper", daemon=True)
            self._stopper.start()
        self._stopper_cv.notify_all()

    def _stopper_main(self) -> None:
        """The stopper thread: issue deferred stops once the CPU is quiet (S4)."""
        cv = self._stopper_cv
        with cv:
            try:
                while not self._stopper_quit:
                    if self._proving:
                        self._prove_quiet_and_stop()
                    else:
                        cv.wait()
            finally:
                self._stopper_exited = True
                cv.notify_all()

    def _prove_quiet_and_stop(self) -> None:
        """Stop Unicorn once the CPU thread has run past its last MMIO callback.

        Machine lock held (released while waiting). The newest recorded
        access's callback has returned, but its instruction may not have
        retired. Once the CPU thread has spent ``_TAIL_CPU_NS`` of CPU time
        with no further callback, it has: the stop is safe and that access
        becomes ``_quiet``. A callback in between saw the pending kick and
        stopped the CPU itself; the end of the slice ends the wait too.
        """
        target = self._proving
        st = self._st
        mark = st.recent[-1] if st.recent else None
        assert self._cpu_thread is not None
        try:
            clock = time.pthread_getcpuclockid(self._cpu_thread)
            start = time.clock_gettime_ns(clock)
        except (AttributeError, OSError):  # no per-thread CPU clock: use wall time
            clock, start = time.CLOCK_MONOTONIC, time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        while (not self._stopper_quit and self._in_emu and self._slices == target
               and self._requests and (st.recent[-1] if st.recent else None) is mark):
            remaining = _TAIL_CPU_NS - (time.clock_gettime_ns(clock) - start)
            if remaining <= 0:
                self._quiet = mark
                self.uc.emu_stop()
                break
            # A running CPU thread gains CPU time as fast as wall time passes.
            self._stopper_cv.wait(max(remaining, _TAIL_POLL_NS) / 1e9)
        if self._proving == target:
            self._proving = 0

    def _stop_inside_access(self) -> None:
        """From an MMIO callback, with a kick pending: stop inside this access (S2).

        Machine lock held, on the CPU thread. Unicorn will rewind the PC to
        this instruction; ``execute`` then finishes it with the recorded
        accesses replayed. AArch64 writes a load's destination register
        before the stop, so its registers are saved here, where they still
        hold what the instruction started with.
        """
        st = self._st
        if self._replaying or st.interrupted:
            return
        st.interrupted = True
        if self.arch is Arch.AARCH64:
            st.context = self.uc.context_save()
        self.uc.emu_stop()

    def take_requests(self) -> int:
        """Return and clear the pending kick reasons (machine lock held)."""
        requests = self._requests
        self._requests = 0
        self._st.stop = False
        return requests

    @property
    def running(self) -> bool:
        """Whether guest code is executing right now."""
        return self._in_emu

    def request_stop(self, detail: str) -> None:
        """From a trap handler: end this run with ``CpuExitKind.STOP`` and ``detail``."""
        self._exit = CpuExit(CpuExitKind.STOP, self.pc, detail=detail)
        self.kick(KICK_SELF)

    # -- running ------------------------------------------------------------

    def execute(self) -> CpuExit:
        """Run guest code until something needs the machine.

        Call without the machine lock, from the machine's run thread. Returns
        at once (``KICKED``) if a kick is pending.
        """
        uc = self.uc
        with self.lock:
            if self._requests:
                return CpuExit(CpuExitKind.KICKED, self.pc)
            self._apply_pending()
            self._exit = None
            self._invalid = None
            st = self._st
            st.stop = False
            st.recent.clear()
            st.interrupted = False
            st.context = None
            st.wide_pending = None
            st.wide_hi_addr = st.wide_skip = -1
            pc = self.pc
            if self._skip_breakpoint is not None and self._skip_breakpoint != pc:
                self._skip_breakpoint = None
            self._resume_pc = None
            self._cpu_thread = threading.get_ident()
            self._slices += 1
            self._quiet = None
            self._in_emu = True
        error: unicorn.UcError | None = None
        try:
            uc.emu_start(pc, _UNTIL)
        except unicorn.UcError as exc:
            error = exc
        except Exception as exc:  # raised by a hook through the binding
            error = unicorn.UcError(ucc.UC_ERR_EXCEPTION)
            if self._callback_error is None:
                self._callback_error = exc
        with self.lock:
            self._in_emu = False
            st = self._st
            if st.interrupted and error is None:
                self._finish_interrupted_instruction()
            st.interrupted = False
            st.context = None
            return self._classify_exit(error)

    def _finish_interrupted_instruction(self) -> None:
        """Run the one instruction a stop interrupted, replaying its recorded accesses (S2).

        Machine lock held, so no other thread's kick can land in this run; a
        kick from a device it accesses waits for its end (``_replaying``).
        """
        st = self._st
        uc = self.uc
        pc = int(uc.reg_read(self._pc_reg))
        if st.context is not None:
            uc.context_restore(st.context)  # its PC is stale: callbacks see the block's
            uc.reg_write(self._pc_reg, pc)
        st.replay = list(st.recent)
        st.replay_started = False
        st.stop = False
        length = self._instruction_length(pc)
        self.replays += 1
        self._replaying = self._in_emu = True
        try:
            uc.ctl_remove_cache(pc, pc + length)
            uc.emu_start(pc, pc + length)
        except unicorn.UcError as exc:
            log.warning("%s: finishing the interrupted instruction at %#x failed: %s",
                        self.name, pc, exc)
        finally:
            self._replaying = self._in_emu = False
            st.replay = []
            st.stop = bool(self._requests)

    def _classify_exit(self, error: unicorn.UcError | None) -> CpuExit:
        if self._callback_error is not None:
            exc, self._callback_error = self._callback_error, None
            self._requests &= ~(KICK_ERROR | KICK_SELF)
            self._st.stop = bool(self._requests)
            pc = self.pc
            return CpuExit(CpuExitKind.FAULT, pc, self._fault(
                f"internal error: {exc}", pc, access="instruction"), detail=str(exc))
        if self._exit is not None:
            result, self._exit = self._exit, None
            self._requests &= ~KICK_SELF
            self._st.stop = bool(self._requests)
            return result
        if error is not None:
            return self._fault_exit(error)
        if self._requests:
            return CpuExit(CpuExitKind.KICKED, self.pc)
        return self._idle_exit()

    def _idle_exit(self) -> CpuExit:
        """emu_start returned by itself: the guest executed wfi/hlt (or wfe)."""
        pc = self.pc
        if self.arch is Arch.X86_64:
            if not self.uc.reg_read(x86c.UC_X86_REG_RFLAGS) & _X86_IF:
                return CpuExit(CpuExitKind.HALTED, pc, detail="hlt with interrupts disabled")
            return CpuExit(CpuExitKind.IDLE, pc, detail="hlt")
        if self.arch is Arch.AARCH64:
            insn = self._read_u32(pc - 4)
            if insn == _A64_WFI:
                return CpuExit(CpuExitKind.IDLE, pc, detail="wfi")
            return CpuExit(CpuExitKind.CONTINUE, pc)
        if self.uc.reg_read(armc.UC_ARM_REG_CPSR) & 0x20:
            value, _ = self.memory.read(pc - 2, 2)
            idle = value == _T32_WFI
        else:
            idle = self._read_u32(pc - 4) == _A32_WFI
        return CpuExit(CpuExitKind.IDLE if idle else CpuExitKind.CONTINUE, pc)

    def _fault_exit(self, error: unicorn.UcError) -> CpuExit:
        pc = self.pc
        invalid, self._invalid = self._invalid, None
        if invalid is not None:
            access, addr, size = invalid
            kind = {ucc.UC_MEM_READ_UNMAPPED: "read", ucc.UC_MEM_WRITE_UNMAPPED: "write",
                    ucc.UC_MEM_FETCH_UNMAPPED: "fetch", ucc.UC_MEM_WRITE_PROT: "write",
                    ucc.UC_MEM_READ_PROT: "read", ucc.UC_MEM_FETCH_PROT: "fetch"}.get(
                        access, "access")
            why = "write-protected" if access == ucc.UC_MEM_WRITE_PROT else (
                "non-executable" if access == ucc.UC_MEM_FETCH_PROT else "unmapped")
            if kind == "fetch":
                message = f"instruction fetch from {why} address {addr:#x} (pc={pc:#x})"
            else:
                message = (f"{kind} of {size} bytes at {why} address {addr:#x} by the "
                           f"instruction at pc={pc:#x}")
            return CpuExit(CpuExitKind.FAULT, pc,
                           self._fault(message, pc, addr=addr, access=kind, size=size))
        if error.errno == ucc.UC_ERR_INSN_INVALID:
            message = f"invalid instruction at pc={pc:#x}"
        elif error.errno == ucc.UC_ERR_EXCEPTION:
            message = f"unhandled CPU exception at pc={pc:#x}"
        else:
            message = f"Unicorn stopped with {error} at pc={pc:#x}"
        return CpuExit(CpuExitKind.FAULT, pc, self._fault(message, pc))

    def _fault(self, message: str, pc: int, *, addr: int | None = None,
               access: str = "instruction", size: int = 0) -> CpuFault:
        insn = self.disassemble(pc)
        return CpuFault(f"{message}: {insn}", pc, insn, addr, access, size, self.registers())

    # -- hooks ----------------------------------------------------------------

    def _on_invalid_memory(self, uc: Any, access: int, addr: int, size: int, value: int,
                           user: Any) -> bool:
        with self.lock:
            if self._pending_plan is not None:
                # A map change not yet applied (requested from inside an MMIO
                # callback): apply it now, outside any device callback, and retry.
                self._apply_pending()
                if any(e.mapping.start <= addr < e.mapping.end for e in self._mapped) and \
                        access not in (ucc.UC_MEM_WRITE_PROT, ucc.UC_MEM_FETCH_PROT,
                                       ucc.UC_MEM_READ_PROT):
                    return True
            self._invalid = (access, addr, size)
            return False

    def _on_interrupt(self, uc: Any, intno: int, user: Any) -> None:
        with self.lock:
            if self.arch is Arch.X86_64:
                self._x86_interrupt(intno)
            else:
                self._arm_interrupt(intno)

    def _stop_with(self, exit_: CpuExit) -> None:
        self._exit = exit_
        self.kick(KICK_SELF)

    def _arm_interrupt(self, intno: int) -> None:
        pc = self.pc
        a64 = self.arch is Arch.AARCH64
        if intno in (2, 11, 13):  # svc, hvc, smc: PC is past the instruction
            kind = {2: "svc", 11: "hvc", 13: "smc"}[intno]
            if a64:
                imm = (self._read_u32(pc - 4) >> 5) & 0xFFFF
                self._trap(kind, imm, pc - 4)
            else:
                thumb = self.uc.reg_read(armc.UC_ARM_REG_CPSR) & 0x20
                width = 2 if thumb and intno == 2 else 4
                insn = self._read_u32(pc - 4) if width == 4 else self.memory.read(pc - 2, 2)[0]
                imm = insn & (0xFF if width == 2 else (0xF if intno == 13 else 0xFFFFFF))
                self._trap(kind, imm, pc - width)
            return
        if intno == 7:  # brk / bkpt: PC at the instruction
            self._resume_pc = pc + (4 if a64 or not self.uc.reg_read(armc.UC_ARM_REG_CPSR)
                                    & 0x20 else 2)
            self._stop_with(CpuExit(CpuExitKind.BREAKPOINT, pc, detail=self.disassemble(pc)))
            return
        if intno == 1 and a64:  # UDEF: PC at the instruction
            insn = self._read_u32(pc)
            if insn & _A64_EXC_MASK == _A64_HLT:
                self._resume_pc = pc + 4
                self._stop_with(CpuExit(CpuExitKind.HALTED, pc + 4,
                                        detail=f"hlt #{(insn >> 5) & 0xFFFF:#x}"))
                return
            self._stop_with(CpuExit(CpuExitKind.FAULT, pc, self._fault(
                f"undefined instruction at pc={pc:#x}", pc)))
            return
        self._stop_with(CpuExit(CpuExitKind.FAULT, pc, self._fault(
            f"unhandled exception {intno} ({_ARM_EXCEPTIONS.get(intno, '?')}) at pc={pc:#x}",
            pc)))

    def _x86_interrupt(self, intno: int) -> None:
        pc = self.pc
        if intno == 3:  # int3: RIP is past it
            self._stop_with(CpuExit(CpuExitKind.BREAKPOINT, pc, detail="int3"))
            return
        self._stop_with(CpuExit(CpuExitKind.FAULT, pc, self._fault(
            f"unhandled interrupt or exception vector {intno} near pc={pc:#x}", pc)))

    def _on_invalid_instruction(self, uc: Any, user: Any) -> bool:
        with self.lock:
            pc = self.pc
            if self.arch is Arch.X86_64:
                code, _ = self.memory.read_bytes(pc, 3)
                if code in _X86_VMCALL:
                    self.uc.reg_write(self._pc_reg, pc + 3)
                    self._trap("vmcall", 0, pc)
                    return True
                return False
            if not self.uc.reg_read(armc.UC_ARM_REG_CPSR) & 0x20:
                insn = self._read_u32(pc)
                if insn & _A32_HVC_MASK == _A32_HVC:
                    self.uc.reg_write(self._pc_reg, pc + 4)
                    self._trap("hvc", (insn >> 4) & 0xFFF0 | insn & 0xF, pc)
                    return True
                if insn & _A32_HLT_MASK == _A32_HLT:
                    self._resume_pc = pc + 4
                    self._stop_with(CpuExit(CpuExitKind.HALTED, pc + 4, detail="hlt"))
                    return True
            return False

    def _on_port_in(self, uc: Any, port: int, size: int, user: Any) -> int:
        with self.lock:
            assert self.io is not None
            value, _ = self.io.read(port, size)
            return value

    def _on_port_out(self, uc: Any, port: int, size: int, value: int, user: Any) -> None:
        with self.lock:
            assert self.io is not None
            self.io.write(port, value, size)

    # -- traps ----------------------------------------------------------------

    def set_trap_handler(self, kind: str, handler: TrapHandler | None) -> None:
        """Route trapping instructions of ``kind`` to ``handler`` (None: the default).

        Kinds: ``"smc"``, ``"hvc"``, ``"svc"`` (ARM), ``"vmcall"`` (x86). Without
        a handler, smc/hvc answer SMCCC "not supported" (-1 in x0), vmcall
        answers -KVM_ENOSYS in rax, and svc stops the machine with a fault.

        Raises:
            MachineError: a kind this architecture does not have.
        """
        kinds = ("vmcall",) if self.arch is Arch.X86_64 else ("smc", "hvc", "svc")
        if kind not in kinds:
            raise MachineError(f"{self.name}: no trap kind {kind!r} on {self.arch.value}; "
                               f"use one of {', '.join(kinds)}")
        if handler is None:
            self._trap_handlers.pop(kind, None)
        else:
            self._trap_handlers[kind] = handler

    def _trap(self, kind: str, imm: int, pc: int) -> None:
        trap = Trap(self, kind, imm, pc)
        handler = self._trap_handlers.get(kind)
        if handler is None:
            if kind == "svc":
                self._stop_with(CpuExit(CpuExitKind.FAULT, pc, self._fault(
                    f"svc #{imm:#x} with no handler at pc={pc:#x}", pc)))
            else:
                trap.set_result(KVM_ENOSYS if kind == "vmcall" else SMCCC_NOT_SUPPORTED)
            return
        try:
            handler(trap)
        except Exception as exc:
            error = MachineError(f"{self.name}: the {kind} handler {handler!r} raised "
                                 f"{type(exc).__name__}: {exc}")
            error.__cause__ = exc
            if self._callback_error is None:
                self._callback_error = error
            self.kick(KICK_ERROR)

    # -- breakpoints ------------------------------------------------------------

    def add_breakpoint(self, addr: int) -> None:
        """Stop (``BREAKPOINT``) before the instruction at ``addr`` runs."""
        if addr in self._breakpoints:
            return
        self._breakpoints[addr] = self.uc.hook_add(ucc.UC_HOOK_CODE, self._on_breakpoint,
                                                   None, addr, addr)
        self.uc.ctl_remove_cache(addr, addr + 4)

    def remove_breakpoint(self, addr: int) -> None:
        """Remove the breakpoint at ``addr`` (nothing if there is none)."""
        hook = self._breakpoints.pop(addr, None)
        if hook is not None:
            self.uc.hook_del(hook)
            self.uc.ctl_remove_cache(addr, addr + 4)

    def _on_breakpoint(self, uc: Any, addr: int, size: int, user: Any) -> None:
        with self.lock:
            if self._skip_breakpoint == addr:
                self._skip_breakpoint = None
                return
            self._skip_breakpoint = addr
            self._stop_with(CpuExit(CpuExitKind.BREAKPOINT, addr,
                                    detail=f"breakpoint at {addr:#x}"))

    # -- interrupts -------------------------------------------------------------

    @property
    def irq_level(self) -> bool:
        """The level of the IRQ input."""
        return self._irq_level

    def set_irq_level(self, level: bool) -> None:
        """Drive the IRQ input (an ``IrqLine`` listener; machine lock held).

        Raising it kicks the CPU so the machine can deliver it.
        """
        level = bool(level)
        if level == self._irq_level:
            return
        self._irq_level = level
        if level:
            self.kick(KICK_IRQ)
        for listener in self._irq_listeners:
            listener(level)

    def add_irq_listener(self, listener: Callable[[bool], None]) -> None:
        """Call ``listener(level)`` when the IRQ input changes (the idle loop waits on it)."""
        self._irq_listeners.append(listener)

    def interrupts_enabled(self) -> bool:
        """Whether the guest accepts an IRQ now (PSTATE.I / CPSR.I clear, RFLAGS.IF set)."""
        if self.arch is Arch.AARCH64:
            return not self.uc.reg_read(a64c.UC_ARM64_REG_PSTATE) & (1 << 7)
        if self.arch is Arch.ARM:
            return not self.uc.reg_read(armc.UC_ARM_REG_CPSR) & (1 << 7)
        return bool(self.uc.reg_read(x86c.UC_X86_REG_RFLAGS) & _X86_IF)

    def inject_irq(self) -> bool:
        """Enter the guest's IRQ handler, as the hardware would (machine lock held).

        Returns False, changing nothing, when the guest masks interrupts or
        has no handler in place; the IRQ stays pending and the guest can poll.

        The model:

        The return address is the PC, or the next instruction when the PC is
        on a ``wfi``/``hlt`` (the interrupt ends that wait).

        * **AArch64** (EL1 or EL0 guest): ELR_EL1 = return address, SPSR_EL1 = PSTATE,
          PSTATE = EL1h with D, A, I, F masked, PC = VBAR_EL1 + 0x280 (from
          EL1 with SP_EL1), + 0x080 (EL1 with SP_EL0) or + 0x480 (from EL0).
          The handler ends with ``eret``.
        * **ARM**: CPSR -> SPSR_irq, mode IRQ with I and A masked (ARM state),
          LR_irq = return address + 4, PC = VBAR + 0x18. The handler ends with
          ``subs pc, lr, #4``.
        * **x86_64** (vector ``X86_IRQ_VECTOR`` = 32): the handler address is
          the offset of the 64-bit gate at IDTR.base + 32 * 16 (it must be
          present). The CPU pushes the return RIP, then RFLAGS (16 bytes, no SS/CS, no
          alignment), clears IF and TF, and jumps. The handler ends with
          ``popfq; ret``.
        """
        if not self.interrupts_enabled():
            return False
        uc = self.uc
        resume = self._irq_return_address()
        if self.arch is Arch.AARCH64:
            pstate = uc.reg_read(a64c.UC_ARM64_REG_PSTATE)
            el = (pstate >> 2) & 3
            if el == 1:
                offset = 0x280 if pstate & 1 else 0x080
            elif el == 0:
                offset = 0x480
            else:
                return False
            vbar = uc.reg_read(a64c.UC_ARM64_REG_VBAR_EL1)
            uc.reg_write(a64c.UC_ARM64_REG_ELR_EL1, resume)
            uc.cpr_write(3, 0, 4, 0, 0, pstate)  # SPSR_EL1
            uc.reg_write(a64c.UC_ARM64_REG_PSTATE, 0x3C5)  # EL1h, DAIF masked
            uc.reg_write(a64c.UC_ARM64_REG_PC, vbar + offset)
        elif self.arch is Arch.ARM:
            cpsr = uc.reg_read(armc.UC_ARM_REG_CPSR)
            pc = resume
            vbar = uc.cpr_read(15, 0, 12, 0, 0, 0, False)
            uc.reg_write(armc.UC_ARM_REG_CPSR, (cpsr & ~0x3F) | 0x12 | 0x80 | 0x100)
            uc.reg_write(armc.UC_ARM_REG_SPSR, cpsr)
            uc.reg_write(armc.UC_ARM_REG_LR, pc + 4)
            uc.reg_write(armc.UC_ARM_REG_PC, vbar + 0x18)
        else:
            handler = self._x86_irq_handler()
            if handler is None:
                return False
            rflags = uc.reg_read(x86c.UC_X86_REG_RFLAGS)
            rsp = uc.reg_read(x86c.UC_X86_REG_RSP) - 16
            frame = resume.to_bytes(8, "little")
            if self.memory.write_bytes(rsp + 8, frame) or \
                    self.memory.write_bytes(rsp, rflags.to_bytes(8, "little")):
                log.warning("%s: cannot push the interrupt frame at rsp=%#x", self.name, rsp)
                return False
            uc.reg_write(x86c.UC_X86_REG_RSP, rsp)
            uc.reg_write(x86c.UC_X86_REG_RFLAGS, rflags & ~(_X86_IF | _X86_TF))
            uc.reg_write(x86c.UC_X86_REG_RIP, handler)
        self._resume_pc = None
        self._skip_breakpoint = None
        self.injected_irqs += 1
        return True

    def _irq_return_address(self) -> int:
        """Where the handler returns: the PC, or past a wfi/hlt the PC stands on.

        An IRQ that arrives just as the guest reaches wfi/hlt ends that wait
        (on x86 the sti shadow makes this the usual case), so the handler
        must not return into it.
        """
        pc = self.pc
        if self.arch is Arch.X86_64:
            byte, _ = self.memory.read(pc, 1)
            return pc + 1 if byte == 0xF4 else pc
        if self.arch is Arch.ARM and self.uc.reg_read(armc.UC_ARM_REG_CPSR) & 0x20:
            half, _ = self.memory.read(pc, 2)
            return pc + 2 if half == _T32_WFI else pc
        return pc + 4 if self._read_u32(pc) in (_A64_WFI, _A32_WFI) else pc

    def _x86_irq_handler(self) -> int | None:
        _, base, limit, _ = self.uc.reg_read(x86c.UC_X86_REG_IDTR)
        entry = base + X86_IRQ_VECTOR * 16
        if limit < X86_IRQ_VECTOR * 16 + 15:
            return None
        gate, result = self.memory.read_bytes(entry, 16)
        if result or not gate[5] & 0x80:
            return None
        return (int.from_bytes(gate[0:2], "little") | int.from_bytes(gate[6:8], "little") << 16
                | int.from_bytes(gate[8:12], "little") << 32)

    # -- teardown -------------------------------------------------------------

    def close(self) -> None:
        """Stop following the address space and drop every mapping (machine lock held).

        Also ends and joins the stopper thread. Call when guest code is not running.
        """
        with self.lock:
            stopper, self._stopper = self._stopper, None
            if stopper is not None:
                self._stopper_quit = True
                self._stopper_cv.notify_all()
                # Waiting releases the machine lock (held any number of times).
                self._stopper_cv.wait_for(lambda: self._stopper_exited, timeout=5.0)
                stopper.join(5.0)
            if self._listener is None:
                return
            self.memory.unregister_listener(self._listener)
            self._listener = None  # type: ignore[assignment]
            for entry in self._mapped:
                if entry.hook is not None:
                    self.uc.hook_del(entry.hook)
                self.uc.mem_unmap(entry.mapping.start, entry.mapping.size)
                if entry.pin is not None:
                    entry.pin.release()
            self._mapped = []
            self._pending_plan = None

    def _check_invariants(self) -> None:
        """Assert the class invariants (tests call this between slices)."""
        end = 0
        for entry in self._mapped:
            assert entry.mapping.start >= end, f"overlap or disorder at {entry.mapping!r}"
            end = entry.mapping.end
            if entry.mapping.kind == KIND_DIRECT:
                assert entry.pin is not None and not entry.pin.released
            else:
                assert entry.callbacks, f"{entry.mapping!r} lost its callbacks"
        mapped = {(e.mapping.start, e.mapping.end - 1) for e in self._mapped}
        assert {(b, e) for b, e, _ in self.uc.mem_regions()} == mapped, "Unicorn's map differs"
        assert bool(self._requests) == self._st.stop
        assert not self._st.replay and not self._st.interrupted and self._st.context is None

    def statistics(self) -> dict[str, int]:
        """Return counters: mappings, remaps, replayed instructions, deferred kicks, IRQs."""
        return {"mappings": len(self._mapped), "remaps": self.remaps, "replays": self.replays,
                "deferred_kicks": self.deferred_kicks, "injected_irqs": self.injected_irqs}

    def __repr__(self) -> str:
        state = "running" if self._in_emu else "stopped"
        return (f"<UnicornCPU {self.name} {self.arch.value} {state} pc={self.pc:#x} "
                f"mappings={len(self._mapped)}>")


_ARM_EXCEPTIONS = {1: "undefined instruction", 3: "prefetch abort", 4: "data abort",
                   5: "IRQ", 6: "FIQ", 12: "hyp trap", 16: "semihosting"}

_MMIO_CODES: set[Any] = set()


def _inside_mmio_callback() -> bool:
    """Whether an MMIO callback is on this thread's stack (cold path: map changes)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code in _MMIO_CODES:
            return True
        frame = frame.f_back
    return False
