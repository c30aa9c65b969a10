"""Machine: the run loop, its stop reasons, IRQs, and map changes while the guest runs."""

from __future__ import annotations

import threading
import time

import pytest

from memexpose.errors import MachineError
from memexpose.machine import Machine, RunState, StopKind, Trap, get_board
from memexpose.memory import MemoryRegion, MemoryRegionOps

from .helpers import firmware

pytestmark = pytest.mark.timeout(30)

SUFFIX = {"virt": "aarch64", "pc": "x86_64"}


def _machine(board: str, program: str) -> Machine:
    machine = get_board(board).build(ram_size=64 << 20)
    machine.console_output = bytearray()  # type: ignore[attr-defined]
    machine.console = machine.console_output.extend  # type: ignore[attr-defined]
    get_board(board).boot(machine, firmware(f"{program}-{SUFFIX[board]}.elf"))
    return machine


def _spin(machine: Machine) -> None:
    """Make the poll guest wait for a value that never comes."""
    ram = machine.board.ram_base
    with machine.lock:
        if machine.board.name == "virt":
            machine.cpu.write_register("x1", ram + 0x10_0000)
            machine.cpu.write_register("x2", 0xDEAD)
        else:
            machine.cpu.write_register("rsi", ram + 0x10_0000)
            machine.cpu.write_register("rdx", 0xDEAD)


@pytest.fixture(params=["virt", "pc"])
def board(request: pytest.FixtureRequest) -> str:
    return request.param


def test_hello_prints_through_the_uart(board: str) -> None:
    with _machine(board, "hello") as machine:
        reason = machine.run(timeout=10)
        text = bytes(machine.console_output).decode()  # type: ignore[attr-defined]
    assert text.startswith("Hello from memexpose")
    assert reason.kind is (StopKind.SHUTDOWN if board == "virt" else StopKind.HALT)
    assert machine.state is RunState.SHUTDOWN


def test_timeout(board: str) -> None:
    with _machine(board, "poll") as machine:
        _spin(machine)
        start = time.monotonic()
        reason = machine.run(timeout=0.2)
        assert reason.kind is StopKind.TIMEOUT
        assert 0.15 < time.monotonic() - start < 5


def test_pause_resume_shutdown(board: str) -> None:
    with _machine(board, "poll") as machine:
        _spin(machine)
        events: list[RunState] = []
        machine.add_state_listener(lambda state, reason: events.append(state))
        machine.start()
        deadline = time.monotonic() + 5
        while machine.state is not RunState.RUNNING and time.monotonic() < deadline:
            time.sleep(0.005)
        machine.pause()
        assert machine.state is RunState.PAUSED
        pc = machine.cpu.pc
        time.sleep(0.05)
        assert machine.cpu.pc == pc  # really stopped
        machine.resume()
        time.sleep(0.05)
        assert machine.state is RunState.RUNNING
        reason = machine.shutdown("test")
        assert reason is not None and reason.kind is StopKind.SHUTDOWN
        assert "test" in reason.message
        assert events[:3] == [RunState.RUNNING, RunState.PAUSED, RunState.RUNNING]
        assert events[-1] is RunState.SHUTDOWN


def test_run_twice_at_once_is_refused() -> None:
    with _machine("virt", "poll") as machine:
        _spin(machine)
        machine.start()
        time.sleep(0.02)
        with pytest.raises(MachineError, match="already running"):
            machine.run()
        machine.shutdown()


def test_fault_names_address_and_registers(board: str) -> None:
    with _machine(board, "hello") as machine:
        machine.cpu.pc = 0x3000_0000 if board == "pc" else 0x7000_0000
        reason = machine.run(timeout=10)
    assert reason.kind is StopKind.FAULT
    assert reason.fault is not None and reason.fault.access == "fetch"
    assert f"{reason.fault.addr:#x}" in reason.message
    assert "registers:" in reason.describe()
    assert machine.state is RunState.GUEST_PANICKED


class IrqTester(MemoryRegionOps):
    """The slot test device: raises its line ``count`` times, once per acknowledge."""

    def __init__(self, machine: Machine, count: int) -> None:
        self.machine = machine
        self.count = count
        self.raised = 0
        self.acks = 0
        self.line = None
        self.timer = machine.clock.new_timer(self._fire, "irq-tester")

    def _fire(self) -> None:
        self.raised += 1
        self.line.raise_irq()

    def write(self, offset: int, value: int, size: int) -> None:
        if offset == 0:
            self.acks += 1
            self.line.lower_irq()
            if self.raised < self.count:
                self.timer.mod_in(1_000_000)  # 1 ms of virtual time

    def read(self, offset: int, size: int) -> int:
        return self.acks


def test_irq_wakes_a_waiting_guest(board: str) -> None:
    with _machine(board, "irq") as machine:
        tester = IrqTester(machine, 3)
        regs = MemoryRegion.init_io("irq-tester", 0x1000, tester)
        tester.line = machine.board.plug_slot(machine, regs, device=tester)
        with machine.lock:
            machine.cpu.write_register("x3" if board == "virt" else "rcx", 3)
        tester.timer.mod_in(1_000_000)
        reason = machine.run(timeout=10)
        text = bytes(machine.console_output).decode()  # type: ignore[attr-defined]
        counted = machine.cpu.read_register("x20" if board == "virt" else "r12")
    assert "irq: all interrupts handled" in text, reason.describe()
    assert (tester.raised, tester.acks, counted) == (3, 3, 3)
    assert machine.cpu.injected_irqs == 3


@pytest.mark.parametrize("how", ["add", "move"])
def test_region_changed_by_a_timer_thread_reaches_the_guest(board: str, how: str) -> None:
    with _machine(board, "poll") as machine:
        addr = 0x0B00_0000 if board == "virt" else 0x3000_0000
        magic = 0xC0FFEE
        new = MemoryRegion.init_ram("late", 0x1000)
        new.hostmem.view[0:8] = magic.to_bytes(8, "little")
        if how == "move":
            machine.system_memory.add_subregion(addr + 0x10_0000, new)
        old = MemoryRegion.init_ram("early", 0x1000)
        machine.system_memory.add_subregion(addr, old)
        with machine.lock:
            r1, r2 = ("x1", "x2") if board == "virt" else ("rsi", "rdx")
            machine.cpu.write_register(r1, addr)
            machine.cpu.write_register(r2, magic)

        def change() -> None:
            with machine.memory.transaction():
                if how == "add":
                    machine.system_memory.add_subregion_overlap(addr, new, 1)
                else:
                    new.set_address(addr)
                    machine.system_memory.del_subregion(old)

        timer = threading.Timer(0.05, change)
        timer.start()
        reason = machine.run(timeout=10)
        timer.join()
        assert reason.kind is StopKind.HALT, reason.describe()
        loads = machine.cpu.read_register("x0" if board == "virt" else "rax")
        assert loads > 100  # the guest really spun on the old mapping first


def test_trap_handlers_chain_before_psci() -> None:
    with _machine("virt", "traps") as machine:
        seen: list[int] = []

        def secure(trap: Trap) -> bool:
            if trap.arg(0) != 1:
                return False
            seen.append(trap.imm)
            trap.set_result(0x5EC)
            return True

        machine.add_trap_handler(("smc",), secure)
        reason = machine.run(timeout=10)
        assert reason.kind is StopKind.BREAKPOINT
        assert seen == [0x42]
        assert machine.cpu.read_register("x19") == 0x5EC
        assert machine.cpu.read_register("x20") == (1 << 64) - 1  # hvc 2: not PSCI
        assert machine.state is RunState.DEBUG
        assert machine.run(timeout=10).kind is StopKind.HALT


def test_device_tree_describes_the_board() -> None:
    from memexpose.machine import parse_fdt

    machine = get_board("virt").build(ram_size=256 << 20)
    with machine:
        board = machine.board
        machine.board.plug_slot(machine, MemoryRegion.init_io("slot", 0x1000, MemoryRegionOps()))
        board.boot(machine, firmware("hello-aarch64.elf"))
        assert machine.cpu.read_register("x0") == board.dtb_addr
        assert machine.cpu.read_register("sp") == board.ram_base + (256 << 20)
        blob, _ = machine.address_space.read_bytes(board.dtb_addr, board.dtb_max)
        tree = parse_fdt(blob)
        memory = tree.find("/memory@40000000")
        assert memory is not None
        assert memory.props["reg"] == (0x4000_0000).to_bytes(8, "big") + \
            (256 << 20).to_bytes(8, "big")
        assert tree.find("/pl011@9000000") is not None
        assert tree.find("/pcie@3f000000").props["compatible"] == b"pci-host-ecam-generic\0"
        assert tree.find("/psci").props["method"] == b"hvc\0"
        assert tree.find("/memexpose@c000000") is not None
        assert tree.find("/chosen").props["stdout-path"] == b"/pl011@9000000\0"


def test_slot_takes_one_device() -> None:
    with get_board("pc").build() as machine:
        machine.board.plug_slot(machine, MemoryRegion.init_io("a", 0x1000, MemoryRegionOps()))
        with pytest.raises(MachineError, match="already holds"):
            machine.board.plug_slot(machine, MemoryRegion.init_io("b", 0x100,
                                                                  MemoryRegionOps()))
