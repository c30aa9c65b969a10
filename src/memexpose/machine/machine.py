"""The machine: memory, I/O space, devices, one CPU, the machine lock and the run loop.

The machine lock (QEMU's big lock) is held by every MMIO callback, device
handler, memory mutation and link message. It is *not* held while guest
code runs: ``UnicornCPU.execute`` releases it around ``emu_start``.

The run loop (``run``) executes guest code in slices. A slice ends when the
CPU is kicked (an IRQ, a map change from another thread, ``pause``,
``shutdown``, the time limit), when the guest idles (``wfi``/``hlt``) or when
it stops for good. Between slices, with the lock held, the loop applies
pending map changes, delivers an IRQ, and waits while paused or idle.
Every run ends with a ``StopReason``.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from memexpose.errors import MachineError
from memexpose.hw import SharedIrqLine, VirtualClock, format_info_pci
from memexpose.machine.cpu import (
    KVM_ENOSYS,
    SMCCC_NOT_SUPPORTED,
    Arch,
    CpuExitKind,
    CpuFault,
    Trap,
    UnicornCPU,
)
from memexpose.memory import (
    AddressSpace,
    HostMemory,
    MemoryRegion,
    MemorySystem,
    UnassignedIOOps,
    format_mtree,
)

__all__ = ["Machine", "RunState", "StopKind", "StopReason"]

log = logging.getLogger(__name__)

_WATCHDOG_PERIOD = 0.005  # seconds between re-kicks of a kick Unicorn may have dropped


class RunState(enum.Enum):
    """The machine's state, with QEMU's ``query-status`` names."""

    PRELAUNCH = "prelaunch"
    RUNNING = "running"
    PAUSED = "paused"
    DEBUG = "debug"                # stopped at a breakpoint
    SHUTDOWN = "shutdown"          # shut down, or halted for good
    GUEST_PANICKED = "guest-panicked"  # a guest fault
    INTERNAL_ERROR = "internal-error"  # a device or handler raised


class StopKind(enum.Enum):
    """Why a run ended."""

    HALT = "halt"              # the guest halted with no way to wake (cli;hlt, hlt #0)
    BREAKPOINT = "breakpoint"  # brk / bkpt / int3 or a host breakpoint
    FAULT = "fault"            # bad access or instruction; see ``StopReason.fault``
    SHUTDOWN = "shutdown"      # requested by the host, the monitor or the guest (PSCI)
    TIMEOUT = "timeout"        # the run's time limit passed


@dataclass(frozen=True)
class StopReason:
    """The end of a run.

    Attributes:
        kind: the category.
        pc: the guest PC when it stopped.
        message: one line for humans.
        fault: for ``FAULT``: address, access, instruction and registers.
    """

    kind: StopKind
    pc: int
    message: str
    fault: CpuFault | None = None

    def describe(self) -> str:
        """Return the message, plus the register dump for a fault."""
        if self.fault is None:
            return self.message
        return f"{self.message}\nregisters:\n{self.fault.register_dump()}"


class Machine:
    """A VM: system memory, I/O space, devices, one CPU and a run loop.

    Boards (``memexpose.machine.boards``) fill a machine with RAM, devices and
    a PCI bus; tests can also build one by hand.

    Args:
        arch: the CPU architecture.
        name: the machine's name (messages, memory-system name).

    Attributes:
        lock: the machine lock (an ``RLock``).
        memory: the ``MemorySystem`` (transactions, listeners).
        system_memory: the root container of guest physical memory ("system").
        address_space: the CPU's and DMA's view ("memory").
        io_region, io_space: the 64 KiB I/O port space ("io" in "I/O").
        cpu: the ``UnicornCPU``.
        cpu_irq: the CPU's IRQ input: a wired-OR line; devices get inputs
            with ``cpu_irq.new_input(name)``.
        clock: the virtual clock device timers run on; while the machine
            runs it follows wall time (QEMU's virtual clock without icount).
        ram, ram_size: the board's main RAM region and its size.
        uart: the console UART, pci_host / pci_bus: the PCI host and root bus.
        slot_irq: the memexpose slot's IRQ line (an input of ``cpu_irq``);
            slot_device: what the board put in the slot, or None.
        devices: devices added with ``add_device`` (in order).
        board: the board that built the machine, or None.
        console: where guest console output goes (``write_console``).

    Invariants:
        * at most one thread is in ``run`` (``_run_thread``);
        * ``state`` changes only with the lock held, and listeners hear of
          every change.
    """

    def __init__(self, arch: Arch, *, name: str = "machine") -> None:
        self.name = name
        self.arch = arch
        self.lock = threading.RLock()
        self.memory = MemorySystem(name, lock=self.lock)
        self.system_memory = MemoryRegion.init_container("system", 1 << 64)
        self.address_space = AddressSpace(self.system_memory, "memory", system=self.memory)
        self.io_region = MemoryRegion.init_io("io", 0x10000, UnassignedIOOps())
        self.io_space = AddressSpace(self.io_region, "I/O", system=self.memory)
        self.cpu = UnicornCPU(arch, self.address_space,
                              io=self.io_space if arch is Arch.X86_64 else None,
                              lock=self.lock, name=f"{name}.cpu0")
        self.cpu_irq = SharedIrqLine(f"{name}.cpu-irq")
        self.cpu_irq.add_listener(self.cpu.set_irq_level)
        self.cpu.add_irq_listener(self._irq_changed)
        self.clock = VirtualClock(self.lock)
        self.ram: MemoryRegion | None = None
        self.ram_size = 0
        self.uart: Any = None
        self.pci_host: Any = None
        self.pci_bus: Any = None
        self.slot_irq = self.cpu_irq.new_input(f"{name}.slot-irq")
        self.slot_device: Any = None
        self.devices: list[Any] = []
        self.board: Any = None
        self.console: Callable[[bytes], None] | None = None
        self._trap_handlers: list[tuple[tuple[str, ...], Callable[[Trap], bool]]] = []
        kinds = ("vmcall",) if arch is Arch.X86_64 else ("smc", "hvc")
        for kind in kinds:
            self.cpu.set_trap_handler(kind, self._dispatch_trap)
        self._owned_memory: list[HostMemory] = []
        self._closers: list[Callable[[], None]] = []
        self._wakeup = threading.Condition(self.lock)
        self._state = RunState.PRELAUNCH
        self._state_listeners: list[Callable[[RunState, StopReason | None], None]] = []
        self._run_thread: int | None = None
        self._thread: threading.Thread | None = None
        self._last_stop: StopReason | None = None
        self._shutdown_requested: str | None = None
        self._pause_requested = False
        self._timed_out = False
        self._idle = False
        self._closed = False
        self._watchdog_stop = False

    # -- building -----------------------------------------------------------

    def add_ram(self, name: str, addr: int, size: int, *,
                hostmem: HostMemory | None = None) -> MemoryRegion:
        """Add RAM of ``size`` bytes at ``addr`` (a new memfd when ``hostmem`` is None).

        The machine closes host memory it created when it is closed.
        """
        owned = hostmem is None
        if hostmem is None:
            hostmem = HostMemory.memfd(f"{self.name}.{name}", size)
        mr = MemoryRegion.init_ram(name, size, hostmem=hostmem)
        self.system_memory.add_subregion(addr, mr)
        if owned:
            self._owned_memory.append(hostmem)
        return mr

    def add_device(self, device: Any) -> Any:
        """Record ``device`` (for ``info`` commands and ``close``); return it."""
        self.devices.append(device)
        return device

    def add_closer(self, closer: Callable[[], None]) -> None:
        """Call ``closer()`` when the machine closes (after the run has ended)."""
        self._closers.append(closer)

    def add_trap_handler(self, kinds: tuple[str, ...], handler: Callable[[Trap], bool], *,
                         last: bool = False) -> None:
        """Offer trapping calls of ``kinds`` (smc, hvc / vmcall) to ``handler``.

        Handlers are asked newest first (``last=True``: after all others, as
        the board's PSCI is); ``handler(trap)`` returns True when it handled
        the call and set its results, False to pass it on. A call nobody
        handles answers SMCCC "not supported" (-1 in x0) or -KVM_ENOSYS (rax).
        This is where a device that forwards secure calls plugs in. Handlers
        run with the machine lock held, on the CPU thread.
        """
        entry = (tuple(kinds), handler)
        if last:
            self._trap_handlers.append(entry)
        else:
            self._trap_handlers.insert(0, entry)

    def _dispatch_trap(self, trap: Trap) -> None:
        for kinds, handler in self._trap_handlers:
            if trap.kind in kinds and handler(trap):
                return
        trap.set_result(KVM_ENOSYS if trap.kind == "vmcall" else SMCCC_NOT_SUPPORTED)

    def write_console(self, data: bytes) -> None:
        """Send guest console output to ``console`` (UART models call this)."""
        if self.console is not None:
            self.console(data)

    # -- state --------------------------------------------------------------

    @property
    def state(self) -> RunState:
        """The current run state."""
        return self._state

    @property
    def last_stop(self) -> StopReason | None:
        """How the last run ended, or None."""
        return self._last_stop

    def add_state_listener(self, listener: Callable[[RunState, StopReason | None], None]
                           ) -> None:
        """Call ``listener(state, reason)`` on every state change (machine lock held)."""
        self._state_listeners.append(listener)

    def remove_state_listener(self, listener: Callable[[RunState, StopReason | None], None]
                              ) -> None:
        """Stop calling ``listener``."""
        self._state_listeners = [x for x in self._state_listeners if x is not listener]

    def _set_state(self, state: RunState, reason: StopReason | None = None) -> None:
        if state is self._state and reason is None:
            return
        self._state = state
        self._wakeup.notify_all()
        for listener in list(self._state_listeners):
            try:
                listener(state, reason)
            except Exception:  # a monitor that went away must not stop the VM
                log.exception("%s: state listener %r failed", self.name, listener)

    # -- control (any thread) ------------------------------------------------

    def pause(self, timeout: float | None = 5.0) -> None:
        """Stop running guest code until ``resume`` (QMP ``stop``).

        From a thread other than the run thread, waits until the CPU has
        actually stopped (or ``timeout`` seconds).
        """
        with self.lock:
            if self._state in (RunState.PAUSED, RunState.SHUTDOWN) or self._pause_requested:
                return
            self._pause_requested = True
            if self._run_thread is None:
                self._set_state(RunState.PAUSED)
                return
            self.cpu.kick()
            self._wakeup.notify_all()
            if threading.get_ident() != self._run_thread:
                self._wakeup.wait_for(lambda: self._state is not RunState.RUNNING, timeout)

    def resume(self) -> None:
        """Continue after ``pause`` (QMP ``cont``)."""
        with self.lock:
            if not self._pause_requested and self._state is not RunState.PAUSED:
                return
            self._pause_requested = False
            if self._run_thread is None:
                if self._state is RunState.PAUSED:
                    self._set_state(RunState.PRELAUNCH)
                return
            self._set_state(RunState.RUNNING)  # as QEMU's cont: running on return
            self._wakeup.notify_all()

    def request_shutdown(self, reason: str = "host request") -> None:
        """Ask the run loop to stop with ``SHUTDOWN`` (any thread; returns at once)."""
        with self.lock:
            if self._shutdown_requested is None:
                self._shutdown_requested = reason
            self.cpu.kick()
            self._wakeup.notify_all()

    def shutdown(self, reason: str = "host request", timeout: float | None = 10.0
                 ) -> StopReason | None:
        """Request a shutdown and wait for a background run to end; return its reason."""
        self.request_shutdown(reason)
        if self._thread is not None and self._thread is not threading.current_thread():
            return self.wait(timeout)
        return self._last_stop

    # -- running ------------------------------------------------------------

    def start(self, timeout: float | None = None) -> None:
        """Run in a background thread; ``wait``/``shutdown`` join it."""
        with self.lock:
            if self._thread is not None and self._thread.is_alive():
                raise MachineError(f"{self.name} already runs in {self._thread.name}")
            self._thread = threading.Thread(target=self._run_quietly, args=(timeout,),
                                            name=f"{self.name}-cpu", daemon=True)
            self._thread.start()

    def _run_quietly(self, timeout: float | None) -> None:
        try:
            self.run(timeout)
        except Exception:
            log.exception("%s: the run loop failed", self.name)

    def wait(self, timeout: float | None = None) -> StopReason | None:
        """Join the background run; return its stop reason (None if still running)."""
        thread = self._thread
        if thread is None:
            return self._last_stop
        thread.join(timeout)
        if thread.is_alive():
            return None
        self._thread = None
        return self._last_stop

    def run(self, timeout: float | None = None) -> StopReason:
        """Run guest code in this thread until it stops; return why.

        Args:
            timeout: seconds of wall time before stopping with ``TIMEOUT``
                (None: no limit). Paused time counts.

        Returns:
            The stop reason (also in ``last_stop``). Call ``run`` again to
            continue after a breakpoint.

        Raises:
            MachineError: another thread is running the machine, or it is closed.
        """
        with self.lock:
            if self._closed:
                raise MachineError(f"{self.name} is closed; build a new machine")
            if self._run_thread is not None:
                raise MachineError(f"{self.name} is already running; call run from one "
                                   "thread at a time (use pause/resume/shutdown from others)")
            if self._shutdown_requested is not None and self._state is RunState.SHUTDOWN:
                self._shutdown_requested = None
            self._run_thread = threading.get_ident()
            self._timed_out = False
            self._idle = False
            if not self._pause_requested:
                self._set_state(RunState.RUNNING)
        deadline = None if timeout is None else time.monotonic() + timeout
        watchdog = threading.Thread(target=self._watchdog, args=(deadline,),
                                    name=f"{self.name}-watchdog", daemon=True)
        self._watchdog_stop = False
        watchdog.start()
        reason: StopReason | None = None
        try:
            reason = self._loop()
        finally:
            with self.lock:
                self._watchdog_stop = True
                self._wakeup.notify_all()
            watchdog.join()
            with self.lock:
                self._run_thread = None
                if reason is None:  # the loop raised
                    reason = StopReason(StopKind.FAULT, self.cpu.pc,
                                        "internal error in the run loop")
                self._last_stop = reason
                state = {StopKind.BREAKPOINT: RunState.DEBUG,
                         StopKind.FAULT: RunState.GUEST_PANICKED}.get(reason.kind,
                                                                       RunState.SHUTDOWN)
                if reason.kind is StopKind.TIMEOUT:
                    state = RunState.PAUSED
                self._set_state(state, reason)
        return reason

    def _watchdog(self, deadline: float | None) -> None:
        """Re-kick a CPU whose kick Unicorn dropped; enforce the deadline; drive the clock."""
        with self.lock:
            last = time.monotonic_ns()
            while not self._watchdog_stop:
                now = time.monotonic_ns()
                if self._state is RunState.RUNNING:
                    self.clock.step(now - last)
                last = now
                if deadline is not None and time.monotonic() >= deadline \
                        and not self._timed_out:
                    self._timed_out = True
                    self.cpu.kick()
                    self._wakeup.notify_all()
                self.cpu.kick_again()
                wait = _WATCHDOG_PERIOD
                if deadline is not None and not self._timed_out:
                    wait = min(wait, max(deadline - time.monotonic(), 0.0))
                self._wakeup.wait(wait)

    def _loop(self) -> StopReason:
        cpu = self.cpu
        while True:
            with self.lock:
                cpu.take_requests()
                reason = self._between_slices()
                if reason is not None:
                    return reason
            exit_ = cpu.execute()
            kind = exit_.kind
            if kind is CpuExitKind.KICKED or kind is CpuExitKind.CONTINUE:
                continue
            if kind is CpuExitKind.IDLE:
                self._idle = True
                continue
            if kind is CpuExitKind.HALTED:
                return StopReason(StopKind.HALT, exit_.pc, f"guest halted ({exit_.detail}) "
                                  f"at pc={exit_.pc:#x}")
            if kind is CpuExitKind.BREAKPOINT:
                return StopReason(StopKind.BREAKPOINT, exit_.pc,
                                  f"breakpoint at pc={exit_.pc:#x}: {exit_.detail}")
            if kind is CpuExitKind.FAULT:
                assert exit_.fault is not None
                return StopReason(StopKind.FAULT, exit_.pc, f"guest fault: "
                                  f"{exit_.fault.message}", exit_.fault)
            if kind is CpuExitKind.STOP:
                with self.lock:
                    if self._shutdown_requested is None:
                        self._shutdown_requested = exit_.detail or "trap handler"

    def _between_slices(self) -> StopReason | None:
        """With the lock held: shutdown, timeout, pause, idle and IRQ handling."""
        cpu = self.cpu
        while True:
            if self._shutdown_requested is not None:
                why = self._shutdown_requested
                return StopReason(StopKind.SHUTDOWN, cpu.pc, f"shutdown: {why}")
            if self._timed_out:
                return StopReason(StopKind.TIMEOUT, cpu.pc,
                                  f"time limit reached at pc={cpu.pc:#x}")
            if self._pause_requested:
                if self._state is not RunState.PAUSED:
                    self._set_state(RunState.PAUSED)
                self._wakeup.wait()
                continue
            if self._state is not RunState.RUNNING:
                self._set_state(RunState.RUNNING)
            if cpu.irq_level and (cpu.inject_irq() or self._idle):
                # Delivered, or a masked IRQ wakes wfi/hlt (the guest polls).
                self._idle = False
            if self._idle:
                self._wakeup.wait()
                cpu.take_requests()
                continue
            return None

    def _irq_changed(self, level: bool) -> None:
        if level:
            self._wakeup.notify_all()

    # -- inspection -----------------------------------------------------------

    def mtree(self, *, flatview: bool = False, owner: bool = False,
              disabled: bool = False) -> str:
        """Return ``info mtree`` text (``-f`` with ``flatview``), as QEMU prints it."""
        with self.lock:
            return format_mtree(self.memory, flatview=flatview, owner=owner,
                                disabled=disabled)

    def info_pci(self) -> str:
        """Return ``info pci`` text for the board's PCI bus ('' without one)."""
        with self.lock:
            if self.pci_host is None:
                return ""
            return format_info_pci(self.pci_host)

    def sync_memory(self, timeout: float | None = 5.0) -> bool:
        """Wait until every committed map change is visible to the guest (see CPU)."""
        return self.cpu.wait_memory_applied(timeout)

    def invalidate_code(self, addr: int, size: int) -> None:
        """Drop translated guest code for a range rewritten from outside the guest."""
        with self.lock:
            self.cpu.invalidate_code(addr, size)

    # -- teardown -------------------------------------------------------------

    def close(self) -> None:
        """Stop any run, release the CPU mappings, devices and owned host memory.

        Safe to call twice.
        """
        if self._closed:
            return
        self.shutdown("machine closed")
        with self.lock:
            self._closed = True
            closers, self._closers = self._closers, []
        for closer in reversed(closers):
            try:
                closer()
            except Exception:
                log.exception("%s: closing %r failed", self.name, closer)
        with self.lock:
            self.cpu.close()
        for hostmem in self._owned_memory:
            hostmem.close()
        self._owned_memory.clear()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Machine {self.name!r} {self.arch.value} {self._state.value}>"

