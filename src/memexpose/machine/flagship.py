"""The flagship's host side: secure calls from an x86_64 VM to an AArch64 VM over memexpose.

docs/flagship.md tells the story. The *rich* VM (``pc``, firmware
``rich-x86_64.elf``) drives a ``memexpose-pci`` and makes secure calls; the
*trusted* VM (``virt``, ``trusted-aarch64.elf``, the mxtee trusted OS) serves
them through a ``memexpose-platform`` and reaches the rich VM's buffers in its
window onto the rich RAM. This module holds what the host needs:

* the mxtee call ABI: ``MxteeFunction``, ``TeeStatus``, ``MessageArg`` (the
  numbers of ``firmware/trusted/mxtee.inc``);
* ``siphash24``, the digest SIGN computes, and ``MxteeModel``, what the
  trusted OS must answer to each call;
* ``run_flagship_vm``: run one VM of the pair from its TOML file and return
  a ``VmReport`` of what its guest and its link did (the guest's counters and
  call log are read from its RAM at the symbols of its firmware);
* ``check_flagship``: replay the rich VM's call log against the model, with
  the key read from the trusted VM's RAM, and measure; a ``FlagshipResult``.

Starting the two processes, their consoles and Ctrl-C are the CLI's
(``memexpose demo``).
"""

from __future__ import annotations

import enum
import json
import math
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import unicorn
from elftools.elf.elffile import ELFFile
from unicorn import x86_const

from memexpose.devices import MemexposePCI, MemexposePlatform, MemexposeStatus
from memexpose.errors import ConfigError, MachineError
from memexpose.machine.config import MachineConfig, build_machine, load_config
from memexpose.machine.cpu import SMCCC_NOT_SUPPORTED
from memexpose.machine.machine import Machine, StopKind
from memexpose.memory import MemTxResult

__all__ = [
    "CallRecord",
    "FlagshipResult",
    "MessageArg",
    "MxteeFunction",
    "MxteeModel",
    "TeeStatus",
    "VmReport",
    "check_flagship",
    "load_report",
    "run_flagship_vm",
    "siphash24",
]

_MASK64 = (1 << 64) - 1
MXTEE_RETURN = 1 << 63
"""Bit 63 of a return interrupt's type (the rest is the function id)."""
MXTEE_API_VERSION = 0x0001_0000
MXTEE_SLOTS = 8
MXTEE_OBJ_MAX = 0x1_0000
MXTEE_PUBLIC_MAGIC = int.from_bytes(b"MXTEE1", "little")
RICH_PROBE_OFFSET = 0x1000
"""Where the rich guest reads past the trusted VM's 4 KiB exposure (BAR1 + this)."""
_LOG_ENTRY = struct.Struct("<8Q")
_LOG_MAX = 256


class MxteeFunction(enum.IntEnum):
    """Function ids (SMCCC x0): SMC64 fast calls of owner 50, the trusted OS."""

    VERSION = 0xF200_0000
    STORE = 0xF200_0001
    LOAD = 0xF200_0002
    SIGN = 0xF200_0003


class TeeStatus(enum.IntEnum):
    """r0 of a return: GlobalPlatform TEE codes, SMCCC NOT_SUPPORTED, driver errors."""

    SUCCESS = 0
    BAD_PARAMETERS = 0xFFFF_0006
    ITEM_NOT_FOUND = 0xFFFF_0008
    OUT_OF_MEMORY = 0xFFFF_000C
    SHORT_BUFFER = 0xFFFF_0010
    NOT_SUPPORTED = SMCCC_NOT_SUPPORTED
    """An unknown function id (SMCCC's -1)."""
    LINK_DOWN = 0xFFFF_0F01
    """The rich driver's own: the link was not up, nothing was sent."""
    PROTOCOL = 0xFFFF_0F02
    """The rich driver's own: the return did not match the call."""


def status_name(status: int) -> str:
    """Return ``"SUCCESS"``, ``"BAD_PARAMETERS"``, ... or the value in hex."""
    try:
        return TeeStatus(status).name
    except ValueError:
        return f"{status:#x}"


def function_name(function: int) -> str:
    """Return ``"SIGN"``, ... or the id in hex for an unknown function."""
    try:
        return MxteeFunction(function).name
    except ValueError:
        return f"{function:#x}"


_MSG = struct.Struct("<IIQQQQ8x")


@dataclass(frozen=True, slots=True)
class MessageArg:
    """The message argument a call's x1 points to (48 bytes in rich RAM, 8-aligned).

    Like OP-TEE's ``struct optee_msg_arg``, it lives in the caller's memory
    and is passed by physical address; the trusted OS reads it and writes
    ``ret`` and ``out`` back.

    Attributes:
        cmd: the function id (low 32 bits); must match the call's.
        ret: the status, written back by the trusted OS.
        key: the object key (STORE, LOAD); 0 is no key.
        buf: the rich physical address of the payload.
        length: payload bytes (STORE, SIGN) or the buffer's capacity (LOAD).
        out: SIGN: the digest; STORE, LOAD, SHORT_BUFFER: the object's size.
    """

    cmd: int
    ret: int
    key: int
    buf: int
    length: int
    out: int

    SIZE = _MSG.size

    @classmethod
    def unpack(cls, data: bytes) -> MessageArg:
        """Decode the 48 bytes of a message argument."""
        return cls(*_MSG.unpack(data))

    def pack(self) -> bytes:
        """Encode as the 48 bytes the trusted OS reads."""
        return _MSG.pack(self.cmd, self.ret, self.key, self.buf, self.length, self.out)


# -- SipHash-2-4 --------------------------------------------------------------------------

def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & _MASK64


def siphash24(key: bytes, data: bytes | bytearray | memoryview) -> int:
    """Return SipHash-2-4 of ``data`` under the 16-byte ``key`` (what SIGN computes).

    Raises:
        ValueError: the key is not 16 bytes.
    """
    if len(key) != 16:
        raise ValueError(f"SipHash takes a 16-byte key, not {len(key)} bytes")
    k0, k1 = struct.unpack("<QQ", key)
    v0 = k0 ^ 0x736F6D6570736575
    v1 = k1 ^ 0x646F72616E646F6D
    v2 = k0 ^ 0x6C7967656E657261
    v3 = k1 ^ 0x7465646279746573

    def rounds(n: int) -> None:
        nonlocal v0, v1, v2, v3
        for _ in range(n):
            v0 = (v0 + v1) & _MASK64
            v1 = _rotl(v1, 13) ^ v0
            v0 = _rotl(v0, 32)
            v2 = (v2 + v3) & _MASK64
            v3 = _rotl(v3, 16) ^ v2
            v0 = (v0 + v3) & _MASK64
            v3 = _rotl(v3, 21) ^ v0
            v2 = (v2 + v1) & _MASK64
            v1 = _rotl(v1, 17) ^ v2
            v2 = _rotl(v2, 32)

    data = bytes(data)
    whole = len(data) & ~7
    for (m,) in struct.iter_unpack("<Q", data[:whole]):
        v3 ^= m
        rounds(2)
        v0 ^= m
    last = int.from_bytes(data[whole:], "little") | ((len(data) & 0xFF) << 56)
    v3 ^= last
    rounds(2)
    v0 ^= last
    v2 ^= 0xFF
    rounds(4)
    return v0 ^ v1 ^ v2 ^ v3


# -- the reference model --------------------------------------------------------------------

class MxteeModel:
    """What mxtee answers: 8 objects of up to 64 KiB, SIGN with SipHash-2-4.

    Args:
        key: the trusted VM's secret key (16 bytes, read from its RAM).
        limit: the rich bytes the trusted VM's window serves (the rich
            exposure): a message or payload must lie in ``[0, limit)``.

    Invariants:
        * at most ``MXTEE_SLOTS`` objects, each of at most ``MXTEE_OBJ_MAX``
          bytes, none under key 0.
    """

    def __init__(self, key: bytes, limit: int) -> None:
        self.key = key
        self.limit = limit
        self.objects: dict[int, bytes] = {}

    def _inside(self, addr: int, size: int) -> bool:
        return addr + size <= min(self.limit, _MASK64)

    def call(self, function: int, msg_addr: int, message: MessageArg | None,
             payload: bytes | None) -> tuple[int, int]:
        """Return the ``(status, value)`` mxtee must answer, and apply the call.

        Args:
            function: the function id (RX_TYPE).
            msg_addr: x1, the message argument's rich physical address.
            message: the message as the caller wrote it (None: unreadable).
            payload: STORE, SIGN: the payload bytes (None: not in rich RAM).
        """
        if function == MxteeFunction.VERSION:
            return TeeStatus.SUCCESS, MXTEE_API_VERSION
        if function not in (MxteeFunction.STORE, MxteeFunction.LOAD, MxteeFunction.SIGN):
            return TeeStatus.NOT_SUPPORTED, 0
        bad = (TeeStatus.BAD_PARAMETERS, 0)
        if message is None or msg_addr & 7 or not self._inside(msg_addr, MessageArg.SIZE) \
                or message.cmd != function & 0xFFFF_FFFF:
            return bad
        if function == MxteeFunction.SIGN:
            if not self._inside(message.buf, message.length) or payload is None:
                return bad
            return TeeStatus.SUCCESS, siphash24(self.key, payload)
        if message.key == 0:
            return bad
        if function == MxteeFunction.STORE:
            if message.length > MXTEE_OBJ_MAX or not self._inside(message.buf, message.length) \
                    or payload is None:
                return bad
            if message.key not in self.objects and len(self.objects) >= MXTEE_SLOTS:
                return TeeStatus.OUT_OF_MEMORY, 0
            self.objects[message.key] = bytes(payload)
            return TeeStatus.SUCCESS, message.length
        stored = self.objects.get(message.key)
        if stored is None:
            return TeeStatus.ITEM_NOT_FOUND, 0
        if len(stored) > message.length:
            return TeeStatus.SHORT_BUFFER, len(stored)
        if not self._inside(message.buf, len(stored)):
            return bad
        return TeeStatus.SUCCESS, len(stored)


# -- reports ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class CallRecord:
    """One secure call, from the rich guest's call log and its RAM after the run.

    Attributes:
        function: the function id.
        call_id: the call id (x2), 1, 2, ...
        msg_addr: x1, the message argument (0 for none).
        status, value: r0 and r2 of the return (status LINK_DOWN: never sent).
        service_ticks: r3, the trusted OS's service time in its counter ticks.
        tsc_start, tsc_end: the rich guest's ``rdtsc`` around the call.
        message: the message argument after the call, or None.
        payload: STORE, SIGN: the bytes sent; LOAD (success): the bytes
            received; None where there are none or they are not in rich RAM.
    """

    function: int
    call_id: int
    msg_addr: int
    status: int
    value: int
    service_ticks: int
    tsc_start: int
    tsc_end: int
    message: MessageArg | None = None
    payload: bytes | None = None


@dataclass(frozen=True)
class Probe:
    """A host read through the rich VM's window onto the trusted VM.

    Attributes:
        offset: window offset; size: bytes; value: what came back (LE);
        result: the ``MemTxResult`` as an int; result_name: e.g. ``"DECODE_ERROR"``.
    """

    offset: int
    size: int
    value: int
    result: int
    result_name: str


@dataclass
class VmReport:
    """What one VM of the pair did: how it stopped, its link, its guest's data.

    Attributes:
        role: ``"rich"``, ``"trusted"`` (from the firmware's symbols) or ``""``.
        name: the machine's name.
        exit_code: 0 success; 1 the guest failed, stopped early or lost its peer.
        stop: the ``StopKind`` value; message: why, in one line.
        elapsed: seconds the machine ran.
        link: ``LinkStatistics.as_dict()`` of its memexpose device.
        device: the device's own counters (sends, receives, irq_raises, ...).
        exposed_size: bytes this side exposes to its peer.
        window_limit: window bytes the peer served at the end (0: link down).
        guest: counters read from guest RAM (by symbol name).
        calls: rich: the call log.
        tsc_hz: rich: the rdtsc rate measured over the run (0: unknown).
        secret_key: trusted: the key read from its RAM.
        forwarded_by_call: trusted: forwarded accesses of its link before
            each call arrived, then at the end (so ``[i+1] - [i]`` is call i's).
        probes: rich: host reads through its window (the trusted exposure
            and the first byte past it).
        peer_lost: why the link ended while the guest still needed it, or "".
    """

    role: str
    name: str
    exit_code: int
    stop: str
    message: str
    elapsed: float = 0.0
    link: dict[str, Any] = field(default_factory=dict)
    device: dict[str, int] = field(default_factory=dict)
    exposed_size: int = 0
    window_limit: int = 0
    guest: dict[str, int] = field(default_factory=dict)
    calls: list[CallRecord] = field(default_factory=list)
    tsc_hz: float = 0.0
    secret_key: bytes = b""
    forwarded_by_call: list[int] = field(default_factory=list)
    probes: list[Probe] = field(default_factory=list)
    peer_lost: str = ""

    def to_json(self) -> str:
        """Return the report as JSON (bytes as hex strings)."""
        return json.dumps(asdict(self), default=_bytes_hex)

    @classmethod
    def from_json(cls, text: str) -> VmReport:
        """Read a report written by ``to_json``.

        Raises:
            MachineError: not a report.
        """
        try:
            data = json.loads(text)
            calls = []
            for c in data.pop("calls"):
                msg = c.pop("message")
                payload = c.pop("payload")
                calls.append(CallRecord(**c, message=MessageArg(**msg) if msg else None,
                                        payload=bytes.fromhex(payload) if payload is not None
                                        else None))
            probes = [Probe(**p) for p in data.pop("probes")]
            key = bytes.fromhex(data.pop("secret_key"))
            return cls(**data, calls=calls, probes=probes, secret_key=key)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise MachineError(f"not a flagship VM report: {exc}") from exc


def _bytes_hex(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def guest_symbols(path: str | os.PathLike[str]) -> dict[str, int]:
    """Return the named symbols of an ELF image (``{}`` for a raw image)."""
    try:
        with open(path, "rb") as f:
            elf = ELFFile(f)
            symtab = elf.get_section_by_name(".symtab")
            if symtab is None:
                return {}
            return {s.name: s["st_value"] for s in symtab.iter_symbols() if s.name}
    except Exception:  # not an ELF: no guest data to read
        return {}


_uc_tsc: Any = None


def host_tsc() -> int:
    """Return the time stamp counter as an x86 guest's ``rdtsc`` reads it (Unicorn's).

    Two readings a known time apart give the rate of the rich guest's clock.
    """
    global _uc_tsc
    if _uc_tsc is None:
        uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
        uc.mem_map(0x1000, 0x1000)
        uc.mem_write(0x1000, b"\x0f\x31")  # rdtsc
        _uc_tsc = uc
    _uc_tsc.emu_start(0x1000, 0x1002)
    return (_uc_tsc.reg_read(x86_const.UC_X86_REG_RDX) << 32) \
        | _uc_tsc.reg_read(x86_const.UC_X86_REG_RAX)


# -- running one VM ----------------------------------------------------------------------------

def _memexpose_device(machine: Machine) -> MemexposePCI | MemexposePlatform | None:
    for dev in machine.devices:
        if isinstance(dev, MemexposePCI | MemexposePlatform):
            return dev
    return None


def _with_socket(config: MachineConfig, socket_path: str) -> MachineConfig:
    """Return ``config`` with its memexpose device's ``socket`` replaced."""
    devices = []
    found = False
    for spec in config.devices:
        if spec.type in ("memexpose-pci", "memexpose-platform") and not found:
            options = {k: v for k, v in spec.options.items() if k != "tcp"}
            options["socket"] = os.path.abspath(socket_path)
            spec = replace(spec, options=options)
            found = True
        devices.append(spec)
    if not found:
        raise ConfigError(f"{config.path}: no memexpose-pci or memexpose-platform device "
                          "whose socket could be set")
    return replace(config, devices=tuple(devices))


def run_flagship_vm(config: MachineConfig | str | os.PathLike[str], *,
                    socket: str | None = None,
                    console: Callable[[bytes], None] | None = None,
                    log: Callable[[str], None] | None = None,
                    timeout: float | None = None,
                    stop_on_peer_lost: bool | None = None,
                    freeze_on_call: int | None = None,
                    handle_signals: bool = True) -> VmReport:
    """Run one VM of the flagship pair until it stops; return its report.

    The VM is built from ``config`` (a TOML file, as ``memexpose run``). Its
    firmware's symbols say its role: ``call_log`` makes it the rich VM,
    ``secret_key`` the trusted one. After the run the guest's counters, call
    log and buffers (rich) or key and statistics (trusted) are read from
    its RAM.

    Args:
        config: the machine file or a loaded configuration.
        socket: replace the memexpose device's socket path.
        console: where the guest console goes (default: standard output).
        log: where the runner's own messages go (default: standard error).
        timeout: seconds (default: ``machine.timeout`` of the file).
        stop_on_peer_lost: stop the run, failing, when the link to the peer
            ends (default: for the rich VM, which would wait for ever).
        freeze_on_call: a test aid: stop this whole process (SIGSTOP) when
            the guest takes call N (its RECV), before it serves it, so that a
            test can kill the trusted VM in the middle of a call.
        handle_signals: SIGINT and SIGTERM shut the machine down (main
            thread only).

    Raises:
        ConfigError: the configuration is bad.
        LoaderError: the firmware cannot be loaded.
    """
    cfg = config if isinstance(config, MachineConfig) else load_config(config)
    if socket is not None:
        cfg = _with_socket(cfg, socket)
    line_console = _LineConsole() if console is None else None
    out = console or line_console

    def say(text: str) -> None:
        if line_console is not None:
            line_console.flush()  # the guest's unfinished line first
            text = "\n" + text if line_console.unfinished else text
            line_console.unfinished = False
        if log is not None:
            log(text)
        else:
            print(text, file=sys.stderr, flush=True)

    symbols = guest_symbols(cfg.firmware) if cfg.firmware else {}
    role = "rich" if "call_log" in symbols else "trusted" if "secret_key" in symbols else ""
    if stop_on_peer_lost is None:
        stop_on_peer_lost = role == "rich"
    machine = build_machine(cfg)
    dev = _memexpose_device(machine)
    previous: dict[int, Any] = {}
    done = threading.Event()
    watcher: threading.Thread | None = None
    forwarded: list[int] = []
    peer_lost: list[str] = []
    try:
        machine.console = out
        if dev is not None:
            endpoint = dev.endpoint

            def forwarded_now() -> int:
                s = endpoint.statistics()
                return (s.forwarded_reads + s.forwarded_writes + s.forwarded_block_reads
                        + s.forwarded_block_writes)

            if role == "trusted":
                # Count the calls where the guest takes them (a RECV that pops
                # one): an interrupt edge may cover two calls when the next
                # arrives while the guest still drains the queue.
                pop = endpoint.pop_interrupt

                def pop_and_count() -> Any:  # machine lock held, CPU thread
                    before = forwarded_now()
                    message = pop()
                    if message is not None:
                        forwarded.append(before)
                        if freeze_on_call is not None and len(forwarded) == freeze_on_call:
                            os.kill(os.getpid(), signal.SIGSTOP)
                    return message

                endpoint.pop_interrupt = pop_and_count  # type: ignore[method-assign]
            if stop_on_peer_lost:
                watcher = threading.Thread(
                    target=_watch_link, args=(machine, dev, done, peer_lost, say),
                    name=f"{machine.name}-link-watch", daemon=True)
                watcher.start()
        if handle_signals and threading.current_thread() is threading.main_thread():
            def _interrupt(signum: int, frame: object) -> None:
                machine.request_shutdown(f"signal {signal.Signals(signum).name}")

            for sig in (signal.SIGINT, signal.SIGTERM):
                previous[sig] = signal.signal(sig, _interrupt)
        tsc0, t0 = (host_tsc(), time.perf_counter()) if role == "rich" else (0, time.perf_counter())
        reason = machine.run(timeout if timeout is not None else cfg.timeout)
        elapsed = time.perf_counter() - t0
        tsc_hz = (host_tsc() - tsc0) / elapsed if role == "rich" and elapsed > 0 else 0.0
        done.set()
        if watcher is not None:
            watcher.join()
        report = VmReport(role=role, name=machine.name, exit_code=0, stop=reason.kind.value,
                          message=reason.message, elapsed=elapsed, tsc_hz=tsc_hz,
                          peer_lost=peer_lost[0] if peer_lost else "")
        if dev is not None:
            _fill_link(report, dev)
            if role == "trusted":
                report.forwarded_by_call = forwarded + [forwarded_now()]
        with machine.lock:
            if role == "rich":
                _read_rich(report, machine, symbols)
            elif role == "trusted":
                _read_trusted(report, machine, symbols)
        if role == "rich" and dev is not None:
            report.probes = _probe(dev)
        report.exit_code = _exit_code(report, reason.kind)
        if not report.peer_lost and (report.exit_code or reason.kind not in (StopKind.HALT,
                                                                            StopKind.SHUTDOWN)):
            say(f"{machine.name}: {reason.describe()}")
        return report
    finally:
        done.set()
        if line_console is not None:
            line_console.flush()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        machine.close()


class _LineConsole:
    """Console output to standard output, one write per line (a UART hands over bytes).

    Writing (and flushing) each byte costs a system call and a wake-up of
    whoever reads the pipe, with the machine lock held.
    """

    def __init__(self) -> None:
        self._pending = bytearray()
        self.unfinished = False
        """The last flush ended in the middle of a line."""

    def __call__(self, data: bytes) -> None:
        self._pending += data
        if b"\n" in data:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.unfinished = not self._pending.endswith(b"\n")
            sys.stdout.buffer.write(self._pending)
            sys.stdout.buffer.flush()
            self._pending.clear()


def _watch_link(machine: Machine, dev: MemexposePCI | MemexposePlatform,
                done: threading.Event, lost: list[str], say: Callable[[str], None]) -> None:
    """Stop the machine when its link ends (the guest would sleep for ever)."""
    core = dev.core
    while not done.wait(0.02):
        if core.status() & MemexposeStatus.PEER_LOST:
            why = core.endpoint.last_error
            lost.append(f"the memexpose link to the peer ended ({why})")
            machine.request_shutdown("memexpose peer lost")
            say(f"{machine.name}: the memexpose link to the peer ended ({why}); stopping, "
                "since a secure call can no longer complete")
            return


def _fill_link(report: VmReport, dev: MemexposePCI | MemexposePlatform) -> None:
    stats = dev.statistics()
    report.link = stats.link.as_dict()
    report.device = {k: v for k, v in asdict(stats).items() if k != "link"}
    endpoint = dev.endpoint
    report.exposed_size = endpoint.exporter.exposure.size if endpoint.exporter else 0
    report.window_limit = endpoint.importer.limit if endpoint.importer else 0


def _read(machine: Machine, addr: int, size: int) -> bytes | None:
    if size < 0 or addr < 0 or addr + size > _MASK64:
        return None
    data, result = machine.address_space.read_bytes(addr, size)
    return None if result else bytes(data)


def _quads(machine: Machine, addr: int, count: int) -> list[int]:
    data = _read(machine, addr, 8 * count)
    if data is None:
        raise MachineError(f"{machine.name}: guest data at {addr:#x} is not in RAM")
    return list(struct.unpack(f"<{count}Q", data))


_RICH_COUNTERS = ("call_count", "failures", "interrupts", "probe_public", "probe_beyond",
                  "bar1_addr", "bar1_size", "pci_slot")
_TRUSTED_STATS = ("calls", "errors", "unknown", "ns_read_bytes", "ns_write_bytes",
                  "counter_hz")


def _read_rich(report: VmReport, machine: Machine, symbols: dict[str, int]) -> None:
    """Machine lock held: the rich guest's counters, call log, messages and payloads."""
    for name in _RICH_COUNTERS:
        report.guest[name] = _quads(machine, symbols[name], 1)[0]
    count = min(report.guest["call_count"], _LOG_MAX)
    raw = _read(machine, symbols["call_log"], count * _LOG_ENTRY.size) or b""
    limit = machine.ram_size
    for entry in _LOG_ENTRY.iter_unpack(raw):
        function, call_id, msg_addr, status, value, ticks, t0, t1 = entry
        message = payload = None
        if msg_addr and msg_addr + MessageArg.SIZE <= limit:
            data = _read(machine, msg_addr, MessageArg.SIZE)
            message = MessageArg.unpack(data) if data is not None else None
        if message is not None:
            size = None
            if function in (MxteeFunction.STORE, MxteeFunction.SIGN):
                size = message.length
            elif function == MxteeFunction.LOAD and status == TeeStatus.SUCCESS:
                size = message.out
            if size is not None and size <= 2 * MXTEE_OBJ_MAX \
                    and message.buf + size <= limit:
                payload = _read(machine, message.buf, size)
        report.calls.append(CallRecord(function, call_id, msg_addr, status, value, ticks,
                                       t0, t1, message, payload))


def _read_trusted(report: VmReport, machine: Machine, symbols: dict[str, int]) -> None:
    """Machine lock held: the trusted OS's key and statistics."""
    key = _read(machine, symbols["secret_key"], 16)
    report.secret_key = key or b""
    report.guest.update(zip(_TRUSTED_STATS, _quads(machine, symbols["stats"],
                                                    len(_TRUSTED_STATS)), strict=True))


def _probe(dev: MemexposePCI | MemexposePlatform) -> list[Probe]:
    """Read the trusted public page through the window, and the first bytes past it."""
    probes = []
    endpoint = dev.endpoint
    if endpoint.importer is None:
        return probes
    for offset in (0, RICH_PROBE_OFFSET):
        if offset + 8 > endpoint.importer.size:
            continue
        data, result = endpoint.read_bytes(offset, 8)
        code = int(result)
        name = "OK" if code == 0 else "|".join(
            flag.name or "" for flag in MemTxResult if flag and code & flag) or f"{code:#x}"
        probes.append(Probe(offset, 8, int.from_bytes(data, "little"), code, name))
    return probes


def _exit_code(report: VmReport, kind: StopKind) -> int:
    if report.peer_lost:
        return 1
    if report.role == "rich":
        ok = kind is StopKind.HALT and report.guest.get("failures", 1) == 0
        return 0 if ok else 1
    return 0 if kind in (StopKind.HALT, StopKind.SHUTDOWN) else 1


# -- checking the pair ----------------------------------------------------------------------

@dataclass(frozen=True)
class FlagshipResult:
    """The verdict on one run of the pair, and its figures.

    Attributes:
        ok: every call matched the model, every SIGN its digest, every LOAD
            its STORE, both VMs ended well, and the refused access was refused.
        problems: what went wrong, one line each (empty when ``ok``).
        calls: calls in the rich call log; served: calls the trusted OS counted.
        signs_checked, loads_checked, errors_checked: calls checked per kind.
        latency_us: each call's latency (rich ``rdtsc``, call to return), µs,
            in call order.
        service_us: each call's trusted service time (trusted counter), µs.
        forwarded: trusted-side forwarded accesses and bytes (the slow path).
        first_buffer_call: the id of the first call that reached rich memory
            (its first access is forwarded and shares the rich RAM), or 0.
        forwarded_after_first: forwarded accesses after that call (0: the
            rest went through directly shared RAM).
        direct_bytes: message and payload bytes the trusted OS touched in rich
            RAM without forwarding (directly shared RAM).
        rich_forwarded: rich-side forwarded accesses (the public page).
        mappings: direct mappings created (trusted, rich) and their bytes.
        invalidations: sent + received, both sides.
        interrupts: sent/received per side, and dropped.
        refused: the rich probe past the trusted exposure (result name).
        key: the trusted key, hex.
    """

    ok: bool
    problems: tuple[str, ...]
    calls: int
    served: int
    signs_checked: int
    loads_checked: int
    errors_checked: int
    latency_us: tuple[float, ...]
    service_us: tuple[float, ...]
    forwarded: int
    forwarded_bytes: int
    first_buffer_call: int
    forwarded_after_first: int
    direct_bytes: int
    rich_forwarded: int
    mappings: dict[str, int]
    invalidations: int
    interrupts: dict[str, int]
    refused: str
    key: str

    def percentile(self, values: tuple[float, ...], p: float) -> float:
        """Return the nearest-rank ``p``-th percentile of ``values`` (0.0 if empty)."""
        if not values:
            return 0.0
        ordered = sorted(values)
        return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (with mean and p99 latencies)."""
        data = asdict(self)
        data["latency_mean_us"] = (sum(self.latency_us) / len(self.latency_us)
                                   if self.latency_us else 0.0)
        data["latency_p99_us"] = self.percentile(self.latency_us, 99)
        data["service_mean_us"] = (sum(self.service_us) / len(self.service_us)
                                   if self.service_us else 0.0)
        return data


def check_flagship(rich: VmReport, trusted: VmReport) -> FlagshipResult:
    """Check the rich VM's calls against ``MxteeModel`` with the trusted key; measure.

    Every call's status and value must be the model's; every successful
    SIGN must equal SipHash-2-4 of its payload under the key read from the
    trusted VM's RAM; every successful LOAD must return the bytes of the
    STORE before it. Both VMs must have ended well (exit code 0) and the
    rich access past the trusted exposure must have been refused.
    """
    problems: list[str] = []
    if rich.exit_code:
        problems.append(f"rich VM: {rich.peer_lost or rich.message} (exit {rich.exit_code})")
    if trusted.exit_code:
        problems.append(f"trusted VM: {trusted.message} (exit {trusted.exit_code})")
    if rich.guest.get("failures"):
        problems.append(f"rich guest: {rich.guest['failures']} self-check(s) failed")
    if len(trusted.secret_key) != 16:
        problems.append("trusted VM: no key read from its RAM")
    model = MxteeModel(trusted.secret_key or bytes(16), rich.exposed_size)
    signs = loads = errors = 0
    for call in rich.calls:
        label = f"call {call.call_id} {function_name(call.function)}"
        if call.status == TeeStatus.LINK_DOWN:
            problems.append(f"{label}: never sent, the link was down")
            continue
        status, value = model.call(call.function, call.msg_addr, call.message, call.payload)
        if (call.status, call.value) != (status, value):
            problems.append(f"{label}: returned {status_name(call.status)} {call.value:#x}, "
                            f"mxtee should answer {status_name(status)} {value:#x}")
            continue
        if status != TeeStatus.SUCCESS:
            errors += 1
        elif call.function == MxteeFunction.SIGN:
            signs += 1  # value == SipHash(key, payload), by the model
        elif call.function == MxteeFunction.LOAD:
            stored = model.objects.get(call.message.key) if call.message else None
            if call.payload != stored:
                problems.append(f"{label}: loaded bytes differ from the STORE's")
                continue
            loads += 1
        msg = call.message
        if msg is not None and call.function in (MxteeFunction.STORE, MxteeFunction.LOAD,
                                                 MxteeFunction.SIGN) \
                and status != TeeStatus.BAD_PARAMETERS \
                and (msg.ret, msg.out) != (status & 0xFFFF_FFFF, value):
            problems.append(f"{label}: the message says {status_name(msg.ret)} "
                            f"{msg.out:#x}, the registers {status_name(status)} {value:#x}")
    served = trusted.guest.get("calls", 0)
    sent = sum(1 for c in rich.calls if c.status != TeeStatus.LINK_DOWN)
    if served != sent:
        problems.append(f"the rich VM made {sent} calls, the trusted OS served {served}")
    refused = ""
    past = [p for p in rich.probes if p.offset == RICH_PROBE_OFFSET]
    if past:
        refused = past[0].result_name
        if past[0].result == 0:
            problems.append(f"a rich read at trusted window +{RICH_PROBE_OFFSET:#x}, past the "
                            "exposure, was NOT refused")
    elif rich.exit_code == 0:
        problems.append("the rich VM made no probe past the trusted exposure")
    if rich.guest.get("probe_beyond"):
        problems.append("the rich guest read non-zero bytes past the trusted exposure")
    latency = tuple((c.tsc_end - c.tsc_start) / rich.tsc_hz * 1e6 for c in rich.calls
                    if rich.tsc_hz > 0 and c.tsc_end > c.tsc_start)
    hz = trusted.guest.get("counter_hz", 0)
    service = tuple(c.service_ticks / hz * 1e6 for c in rich.calls
                    if hz and c.status != TeeStatus.LINK_DOWN)
    tl, rl = trusted.link, rich.link

    def count(link: dict[str, Any]) -> int:
        return sum(int(link.get(k, 0)) for k in ("forwarded_reads", "forwarded_writes",
                                                 "forwarded_block_reads",
                                                 "forwarded_block_writes"))

    by_call = trusted.forwarded_by_call
    first = next((i for i in range(len(by_call) - 1) if by_call[i + 1] > by_call[i]), None)
    after_first = by_call[-1] - by_call[first + 1] if first is not None else 0
    touched = trusted.guest.get("ns_read_bytes", 0) + trusted.guest.get("ns_write_bytes", 0)
    forwarded_bytes = int(tl.get("forwarded_bytes", 0))
    return FlagshipResult(
        ok=not problems, problems=tuple(problems), calls=len(rich.calls), served=served,
        signs_checked=signs, loads_checked=loads, errors_checked=errors,
        latency_us=latency, service_us=service, forwarded=count(tl),
        forwarded_bytes=forwarded_bytes,
        first_buffer_call=first + 1 if first is not None else 0,
        forwarded_after_first=after_first,
        direct_bytes=max(0, touched - forwarded_bytes), rich_forwarded=count(rl),
        mappings={"trusted": int(tl.get("mappings_created", 0)),
                  "trusted_bytes": int(tl.get("bytes_mapped_total", 0)),
                  "rich": int(rl.get("mappings_created", 0)),
                  "rich_bytes": int(rl.get("bytes_mapped_total", 0))},
        invalidations=sum(int(x.get(k, 0)) for x in (tl, rl)
                          for k in ("invalidations_sent", "invalidations_received")),
        interrupts={"rich_sent": int(rl.get("interrupts_sent", 0)),
                    "rich_received": int(rl.get("interrupts_received", 0)),
                    "trusted_sent": int(tl.get("interrupts_sent", 0)),
                    "trusted_received": int(tl.get("interrupts_received", 0)),
                    "dropped": int(rl.get("interrupts_dropped", 0))
                    + int(tl.get("interrupts_dropped", 0))},
        refused=refused, key=trusted.secret_key.hex())


def load_report(path: str | os.PathLike[str]) -> VmReport:
    """Read a ``VmReport`` JSON file.

    Raises:
        MachineError: missing or not a report.
    """
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise MachineError(f"cannot read the VM report {os.fspath(path)!r}: "
                           f"{exc.strerror}") from exc
    return VmReport.from_json(text)
