"""Two VMs with memexpose devices, each in its own OS process, driven like guests.

``PciVm`` is a ``MiniPC`` (128 MiB of memfd RAM at 0, ECAM at 0xb0000000,
24 GSIs) with a ``MemexposePCI`` in slot 4 that exposes all of its RAM.
A "guest" drives it only through the memory address space: it scans ECAM
for 1af4:1111, sizes and places BAR0 and the 64-bit BAR1, sets MEMORY and
BUS MASTER, finds the MSI capability, and then makes 8-byte register
accesses, each with the machine lock held as a vCPU would.

``PlatformVm`` is a ``virt`` machine (no guest code runs) with a
``MemexposePlatform`` in its memexpose slot.

The test process builds one VM itself (``LocalVm``); ``RemoteVm`` starts
the other in a child process (multiprocessing "forkserver") and drives it
with ``(command, args)`` over a pipe. Both answer the same ``call``s, so
helpers work on either. Every child is stopped (or killed) and joined by
the fixtures.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from memexpose.devices import MemexposePCI, MemexposePlatform, MemexposeReg
from memexpose.hw import MiniPC, pci_regs
from memexpose.link import Exposure

CTX = multiprocessing.get_context("forkserver")

ECAM = 0xB000_0000
BAR0_ADDR = 0xC000_0000
BAR1_ADDR = 0x80_0000_0000
MSI_ADDR = 0x0010_0000  # RAM: what an MSI write leaves there is what the guest sees
MSI_DATA = 0x4321
RAM_SIZE = 128 << 20
WINDOW = 256 << 20  # the seed test's shm_size
R = MemexposeReg
_BAR1_LO = pci_regs.PCI_BASE_ADDRESS_0 + 4
_BAR1_HI = pci_regs.PCI_BASE_ADDRESS_0 + 8


def wait_for(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition"
             ) -> Any:
    """Poll ``predicate`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.002)


class PciVm:
    """A MiniPC with a memexpose-pci, and a guest-like driver for it."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        name = spec["name"]
        self.pc = MiniPC(ram_size=spec.get("ram", RAM_SIZE), name=name)
        self.lock = self.pc.system.lock
        self.memory = self.pc.memory
        exposure = Exposure.range(self.memory, 0, self.pc.ram.size)
        self.dev = MemexposePCI(
            spec["socket"], listen=spec["listen"], exposure=exposure,
            window_size=spec.get("window", WINDOW), name=name,
            connect_timeout=spec.get("connect_timeout", 10.0), timeout=spec.get("timeout", 2.0))
        self.pc.add(self.dev, slot=4)
        self.bar0 = self.bar1 = 0
        self.msi_cap = 0
        self.devfn = -1

    # -- what a guest does -----------------------------------------------------------

    def cfg_read(self, offset: int, size: int = 4) -> int:
        with self.lock:
            value, _ = self.memory.read(ECAM | self.devfn << 12 | offset, size)
        return value

    def cfg_write(self, offset: int, value: int, size: int = 4) -> None:
        with self.lock:
            self.memory.write(ECAM | self.devfn << 12 | offset, value, size)

    def do_setup(self) -> dict[str, int]:
        """Find 1af4:1111 through ECAM, size and place both BARs, enable decoding and DMA."""
        for devfn in range(0, 256, 8):
            self.devfn = devfn
            if self.cfg_read(pci_regs.PCI_VENDOR_ID) == 0x1111_1AF4:
                break
        else:
            raise AssertionError("no 1af4:1111 on bus 0")
        self.cfg_write(pci_regs.PCI_COMMAND, 0, 2)
        self.cfg_write(pci_regs.PCI_BASE_ADDRESS_0, 0xFFFF_FFFF)
        bar0_size = (~self.cfg_read(pci_regs.PCI_BASE_ADDRESS_0) | 0xF) + 1 & 0xFFFF_FFFF
        self.cfg_write(_BAR1_LO, 0xFFFF_FFFF)
        self.cfg_write(_BAR1_HI, 0xFFFF_FFFF)
        raw = self.cfg_read(_BAR1_LO) | \
            self.cfg_read(_BAR1_HI) << 32
        bar1_type = raw & 0xF
        bar1_size = (~raw | 0xF) + 1 & ((1 << 64) - 1)
        self.bar0, self.bar1 = BAR0_ADDR, BAR1_ADDR
        self.cfg_write(pci_regs.PCI_BASE_ADDRESS_0, self.bar0)
        self.cfg_write(_BAR1_LO, self.bar1 & 0xFFFF_FFFF)
        self.cfg_write(_BAR1_HI, self.bar1 >> 32)
        self.cfg_write(pci_regs.PCI_COMMAND,
                       pci_regs.PCI_COMMAND_MEMORY | pci_regs.PCI_COMMAND_MASTER, 2)
        cap = self.cfg_read(pci_regs.PCI_CAPABILITY_LIST, 1)
        while cap:
            if self.cfg_read(cap, 1) == pci_regs.PCI_CAP_ID_MSI:
                self.msi_cap = cap
                break
            cap = self.cfg_read(cap + 1, 1)
        return {"class": self.cfg_read(pci_regs.PCI_CLASS_DEVICE, 2),
                "revision": self.cfg_read(pci_regs.PCI_REVISION_ID, 1),
                "pin": self.cfg_read(pci_regs.PCI_INTERRUPT_PIN, 1),
                "bar0_size": bar0_size, "bar1_size": bar1_size, "bar1_type": bar1_type,
                "msi_cap": self.msi_cap}

    def do_enable_msi(self, on: bool = True) -> None:
        """Program the MSI capability: address MSI_ADDR (RAM), data MSI_DATA, enable."""
        cap = self.msi_cap
        assert cap, "no MSI capability found (run setup first)"
        self.cfg_write(cap + pci_regs.PCI_MSI_ADDRESS_LO, MSI_ADDR)
        self.cfg_write(cap + pci_regs.PCI_MSI_ADDRESS_HI, 0)
        self.cfg_write(cap + pci_regs.PCI_MSI_DATA_64, MSI_DATA, 2)
        flags = self.cfg_read(cap + pci_regs.PCI_MSI_FLAGS, 2)
        flags = flags | pci_regs.PCI_MSI_FLAGS_ENABLE if on else \
            flags & ~pci_regs.PCI_MSI_FLAGS_ENABLE
        self.cfg_write(cap + pci_regs.PCI_MSI_FLAGS, flags, 2)

    def do_reg_read(self, offset: int, size: int = 8) -> int:
        with self.lock:
            value, result = self.memory.read(self.bar0 + offset, size)
        assert result == 0, f"register read at {offset:#x} failed: {result!r}"
        return value

    def do_reg_write(self, offset: int, value: int, size: int = 8) -> None:
        with self.lock:
            result = self.memory.write(self.bar0 + offset, value, size)
        assert result == 0, f"register write at {offset:#x} failed: {result!r}"

    def do_win_read(self, offset: int, size: int = 4) -> tuple[int, int]:
        with self.lock:
            value, result = self.memory.read(self.bar1 + offset, size)
        return value, int(result)

    def do_win_write(self, offset: int, value: int, size: int = 4) -> int:
        with self.lock:
            return int(self.memory.write(self.bar1 + offset, value, size))

    def do_ram_read(self, addr: int, size: int = 4) -> int:
        with self.lock:
            value, result = self.memory.read(addr, size)
        assert result == 0
        return value

    def do_ram_write(self, addr: int, value: int, size: int = 4) -> None:
        with self.lock:
            assert self.memory.write(addr, value, size) == 0

    # -- what the host sees ---------------------------------------------------------------

    def do_intx(self) -> bool:
        """The level of the GSI that the device's INTA reaches."""
        gsi = self.pc.gsi_of(self.dev)
        assert gsi is not None
        return self.pc.gsi[gsi].level

    def do_msi_messages(self) -> int:
        return self.dev.msi_messages

    def do_stats(self) -> dict[str, Any]:
        s = self.dev.statistics()
        out: dict[str, Any] = {k: getattr(s, k) for k in s.__slots__ if k != "link"}
        out["link"] = s.link.as_dict()
        return out

    def do_state(self) -> str:
        return self.dev.endpoint.state.name

    def do_reset(self) -> None:
        self.dev.reset()

    def do_check(self) -> None:
        with self.lock:
            self.dev._check_invariants()

    def do_pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.dev.close()
        with self.lock:
            self.pc.sysmem.del_subregion(self.pc.ram)
        self.pc.ram.close()


class PlatformVm:
    """A ``virt`` machine with a memexpose-platform in its slot (no guest code runs)."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from memexpose.machine import get_board

        self.spec = spec
        board = get_board("virt")
        self.machine = board.build(ram_size=spec.get("ram", RAM_SIZE), name=spec["name"])
        self.lock = self.machine.lock
        self.memory = self.machine.address_space
        exposure = Exposure.range(self.memory, board.ram_base, self.machine.ram_size)
        self.dev = MemexposePlatform(
            spec["socket"], listen=spec["listen"], exposure=exposure,
            window_size=spec.get("window", WINDOW), name=spec["name"],
            connect_timeout=spec.get("connect_timeout", 10.0))
        self.irq = self.dev.plug(self.machine)
        self.bar0 = board.slot.regs_addr
        self.bar1 = board.slot.window_addr
        self.ram_base = board.ram_base

    do_reg_read = PciVm.do_reg_read
    do_reg_write = PciVm.do_reg_write
    do_win_read = PciVm.do_win_read
    do_win_write = PciVm.do_win_write
    do_ram_read = PciVm.do_ram_read
    do_ram_write = PciVm.do_ram_write
    do_pid = PciVm.do_pid

    def do_irq(self) -> tuple[bool, bool]:
        """The device's IRQ output and the slot line it drives (to the CPU)."""
        return self.dev.irq_line.level, self.irq.level

    do_stats = PciVm.do_stats

    def do_state(self) -> str:
        return self.dev.endpoint.state.name

    def do_reset(self) -> None:
        self.dev.reset()

    def do_check(self) -> None:
        with self.lock:
            self.dev._check_invariants()

    def close(self) -> None:
        self.machine.close()  # closes the device (plug added it as a closer)


KINDS = {"pci": PciVm, "platform": PlatformVm}


def _serve(conn: Any, spec: dict[str, Any]) -> None:
    """Child process: build the VM, then run commands until "quit" or EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    vm = KINDS[spec.get("kind", "pci")](spec)
    try:
        while True:
            try:
                cmd, args = conn.recv()
            except EOFError:
                break
            if cmd == "quit":
                conn.send(("ok", None))
                break
            try:
                conn.send(("ok", getattr(vm, f"do_{cmd}")(*args)))
            except Exception:  # noqa: BLE001 - report it to the test
                conn.send(("err", traceback.format_exc()))
    finally:
        vm.close()


class RemoteVm:
    """A VM in a child process."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=_serve, args=(child, spec), daemon=True,
                                name=f"vm-{spec['name']}")
        self.proc.start()
        child.close()

    def call(self, cmd: str, *args: Any, timeout: float = 20.0) -> Any:
        self.conn.send((cmd, args))
        if not self.conn.poll(timeout):
            raise TimeoutError(f"VM {self.spec['name']} did not answer {cmd!r} in {timeout} s")
        status, value = self.conn.recv()
        if status == "err":
            raise AssertionError(f"in VM {self.spec['name']}:\n{value}")
        return value

    def kill(self) -> None:
        """SIGKILL the VM process and reap it."""
        if self.proc.is_alive():
            os.kill(self.proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        self.proc.join(5)

    def stop(self) -> None:
        """Ask the VM to quit, kill it if it does not; always join."""
        if self.proc.is_alive():
            try:
                self.conn.send(("quit", ()))
                if self.conn.poll(10):
                    self.conn.recv()
            except (OSError, EOFError):
                pass
            self.proc.join(10)
        if self.proc.is_alive():
            self.kill()
        self.proc.join(5)
        self.conn.close()


class LocalVm:
    """A VM in the test process, with the same ``call`` interface."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.vm = KINDS[spec.get("kind", "pci")](spec)

    def call(self, cmd: str, *args: Any, timeout: float = 20.0) -> Any:
        return getattr(self.vm, f"do_{cmd}")(*args)

    def stop(self) -> None:
        self.vm.close()


# -- fixtures (imported by the test modules) ------------------------------------------


@pytest.fixture
def sockdir() -> Iterator[str]:
    """A short directory for UNIX sockets; must be empty again at teardown."""
    path = tempfile.mkdtemp(prefix="mxd-", dir="/tmp")
    yield path
    left = os.listdir(path)
    shutil.rmtree(path, ignore_errors=True)
    assert not left, f"socket files left behind in {path}: {left}"


@pytest.fixture
def vms(sockdir: str) -> Iterator[Callable[..., LocalVm | RemoteVm]]:
    """``vms(name, remote=..., listen=..., **spec)`` builds a VM; all stopped at teardown."""
    made: list[LocalVm | RemoteVm] = []

    def make(name: str, *, remote: bool, listen: bool, **spec: Any) -> LocalVm | RemoteVm:
        full = {"name": name, "listen": listen,
                "socket": os.path.join(sockdir, spec.pop("sock", "link")), **spec}
        vm = RemoteVm(full) if remote else LocalVm(full)
        made.append(vm)
        return vm

    yield make
    for vm in reversed(made):
        vm.stop()


def enable_both(a: LocalVm | RemoteVm, b: LocalVm | RemoteVm) -> None:
    """Write ENABLE = 1 on both (the seed's order: a, then b) and wait until both read 1."""
    a.call("reg_write", R.ENABLE, 1)
    b.call("reg_write", R.ENABLE, 1)
    for vm in (a, b):
        wait_for(lambda vm=vm: vm.call("reg_read", R.ENABLE) == 1, 10.0, "ENABLE to read 1")


@pytest.fixture
def pci_pair(vms: Callable[..., LocalVm | RemoteVm]) -> Callable[..., tuple[Any, Any]]:
    """``pci_pair(**spec)``: VM "a" here (listening), VM "b" in a child; set up and enabled."""

    def make(*, enable: bool = True, **spec: Any) -> tuple[Any, Any]:
        a = vms("a", remote=False, listen=True, **spec)
        b = vms("b", remote=True, listen=False, **spec)
        for vm in (a, b):
            vm.call("setup")
        if enable:
            enable_both(a, b)
        return a, b

    return make


def send_interrupt(vm: LocalVm | RemoteVm, itype: int, data: int) -> None:
    """The seed helper: TX_TYPE, first qword of TX_DATA, then SEND, all 8-byte writes."""
    vm.call("reg_write", R.TX_TYPE, itype)
    vm.call("reg_write", R.TX_DATA, data)
    vm.call("reg_write", R.SEND, 1)


def receive_interrupt(vm: LocalVm | RemoteVm, timeout: float = 2.0
                      ) -> tuple[int, int, int]:
    """The seed helper: poll RECV (about ``timeout`` s), then RX_TYPE and RX_DATA[0:8]."""
    deadline = time.monotonic() + timeout
    got = vm.call("reg_read", R.RECV)
    while not got and time.monotonic() < deadline:
        time.sleep(0.005)
        got = vm.call("reg_read", R.RECV)
    return got, vm.call("reg_read", R.RX_TYPE), vm.call("reg_read", R.RX_DATA)
