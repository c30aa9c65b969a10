"""Helpers for the flagship tests: the example machines, a trusted VM, a CPU-less rich peer.

``TrustedVm`` builds ``examples/trusted.toml`` in the test process (socket
moved to a private directory) and runs it in a background thread.
``FakeRich`` stands in for the rich VM without a CPU: 16 MiB of memfd RAM
exposed to the trusted VM, and an endpoint that sends calls as interrupts
exactly as ``firmware/rich`` does (type = function id, x1 = message
argument, x2 = call id) and waits for the return interrupt.
"""

from __future__ import annotations

import dataclasses
import struct
import threading
import time
from pathlib import Path

from memexpose.link import Exposure, MemexposeEndpoint, UnixTransport
from memexpose.machine import (
    Machine,
    MachineConfig,
    MessageArg,
    build_machine,
    load_config,
)
from memexpose.machine.flagship import MXTEE_RETURN, guest_symbols
from memexpose.memory import AddressSpace, HostMemory, MemoryRegion, MemorySystem

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
RICH_TOML = EXAMPLES / "rich.toml"
TRUSTED_TOML = EXAMPLES / "trusted.toml"
FAKE_RAM = 16 << 20
FIRMWARE = REPO / "firmware"


def config_with(path: Path, **options: object) -> MachineConfig:
    """Load a machine file and change options of its memexpose device (``socket``...)."""
    cfg = load_config(path)
    devices = []
    for spec in cfg.devices:
        if spec.type.startswith("memexpose-"):
            spec = dataclasses.replace(spec, options={**spec.options, **options})
        devices.append(spec)
    return dataclasses.replace(cfg, devices=tuple(devices))


class TrustedVm:
    """``examples/trusted.toml`` running in a thread of the test process."""

    def __init__(self, socket: str, **options: object) -> None:
        self.config = config_with(TRUSTED_TOML, socket=socket, **options)
        self.machine: Machine = build_machine(self.config)
        self.console = bytearray()
        self.machine.console = self.console.extend
        assert self.config.firmware is not None
        self.symbols = guest_symbols(self.config.firmware)
        self.device = self.machine.slot_device
        self.machine.start(timeout=60)

    def read(self, symbol: str, size: int) -> bytes:
        """Read ``size`` bytes of guest RAM at a firmware symbol."""
        with self.machine.lock:
            data, result = self.machine.address_space.read_bytes(self.symbols[symbol], size)
        assert not result
        return bytes(data)

    @property
    def key(self) -> bytes:
        """The secret key, read from the trusted VM's RAM."""
        return self.read("secret_key", 16)

    def stats(self) -> dict[str, int]:
        """The trusted OS's counters (``stats`` in trusted.s)."""
        names = ("calls", "errors", "unknown", "ns_read_bytes", "ns_write_bytes", "counter_hz")
        return dict(zip(names, struct.unpack("<6Q", self.read("stats", 48))))

    def wait_console(self, text: str, timeout: float = 10.0) -> None:
        """Wait until the guest has printed ``text``."""
        deadline = time.monotonic() + timeout
        while text.encode() not in self.console:
            assert time.monotonic() < deadline, f"no {text!r} in {bytes(self.console)!r}"
            time.sleep(0.005)

    def close(self) -> None:
        self.machine.close()


class FakeRich:
    """A CPU-less rich side: RAM exposed to the trusted VM and an endpoint that calls.

    Args:
        socket: the trusted VM's socket.
        ram_size: bytes of RAM at physical address 0, all exposed.
        window: bytes of the window onto the trusted VM (its 4 KiB public
            page, then nothing).
    """

    def __init__(self, socket: str, ram_size: int = FAKE_RAM, window: int = 0x2000) -> None:
        self.system = MemorySystem("fake-rich")
        self.root = MemoryRegion.init_container("fake-rich.system", 1 << 64)
        self.memory = AddressSpace(self.root, "fake-rich", system=self.system)
        self.hostmem = HostMemory.memfd("fake-rich.ram", ram_size)
        self.ram = MemoryRegion.init_ram("fake-rich.ram", ram_size, hostmem=self.hostmem)
        self.root.add_subregion(0, self.ram)
        self._arrived = threading.Event()
        self.endpoint = MemexposeEndpoint(
            "fake-rich", UnixTransport(socket, listen=False),
            exposure=Exposure.range(self.memory, 0, ram_size), window_size=window,
            lock=self.system.lock, connect_timeout=10.0,
            on_irq_level=lambda level: self._arrived.set() if level else None)
        self.endpoint.enable()
        self.call_id = 0
        self.arena = 0x40_0000

    def alloc(self, size: int, align: int = 8) -> int:
        """Return fresh RAM for a message or payload."""
        addr = (self.arena + align - 1) & -align
        self.arena = addr + max(size, 1)
        return addr

    def write(self, addr: int, data: bytes) -> None:
        self.hostmem.view[addr:addr + len(data)] = data

    def read(self, addr: int, size: int) -> bytes:
        return bytes(self.hostmem.view[addr:addr + size])

    def message(self, function: int, *, key: int = 0, buf: int = 0, length: int = 0) -> int:
        """Write a fresh message argument; return its physical address."""
        addr = self.alloc(MessageArg.SIZE)
        self.write(addr, MessageArg(function & 0xFFFF_FFFF, 0xFFFF_FFFF, key, buf, length,
                                    0).pack())
        return addr

    def payload(self, data: bytes, misalign: int = 0) -> int:
        """Copy ``data`` into fresh RAM (``misalign`` bytes past 8-alignment)."""
        addr = self.alloc(len(data) + 8) + misalign
        self.write(addr, data)
        return addr

    def msg(self, addr: int) -> MessageArg:
        return MessageArg.unpack(self.read(addr, MessageArg.SIZE))

    def call(self, function: int, msg_addr: int = 0, timeout: float = 5.0
             ) -> tuple[int, int, int]:
        """Make one secure call; return ``(status, value, service ticks)`` of the return."""
        self.call_id += 1
        self._arrived.clear()
        assert self.endpoint.send_interrupt(function, struct.pack("<QQ", msg_addr,
                                                                  self.call_id))
        deadline = time.monotonic() + timeout
        while True:
            reply = self.endpoint.pop_interrupt()
            if reply is not None:
                break
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no return for call {self.call_id} in {timeout} s"
            self._arrived.wait(min(remaining, 0.05))
            self._arrived.clear()
        assert reply.type == MXTEE_RETURN | function, hex(reply.type)
        r0, r1, r2, r3 = struct.unpack_from("<4Q", reply.data)
        assert r1 == self.call_id, (r0, r1, r2, r3, self.call_id, hex(function))
        return r0, r2, r3

    def close(self) -> None:
        self.endpoint.close()
        self.hostmem.close()
