"""Benchmark of a proxied BAR read: our Python device server against QEMU's C one.

* ``remote-bar``: a qtest ``readl`` of BAR0 of an ``x-pci-proxy-dev`` in
  stock QEMU (``-M q35 -accel tcg -S``), served by ``memexpose
  serve-device edu`` (Python, its own process) ÷ the same read served by
  QEMU's own C remote (``qemu-system-x86_64 -machine x-remote -device
  pci-testdev -object x-remote-object,...``), measured in the same run.
  Target ratio <= 1.0.

Both VMs run at once, with the driver, the VMs and both device servers on
one CPU (``_pin_to_one_cpu``: every hand-off is a plain context switch for
both sides alike; cross-CPU wake-ups cost twice as much from one round to
the next on a virtual machine). Rounds alternate between the VMs, so each
pair of rounds sees the same load: the ratio is the median of the per-pair
ratios, ``value`` and ``baseline`` the median rounds. Each round is ``_N``
reads; a qtest ``readl`` of RAM is timed too, so ``details`` also gives
what the proxy round trip adds on each side. Figures are µs per read, as
the driver sees them (qtest round trip included).
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from typing import Any

from memexpose.bench import benchmark
from memexpose.errors import ConfigError
from memexpose.qemu import QemuVM, remote_device_pair, serve_device_argv

__all__ = ["bench_remote_bar"]

_BAR0 = 0xFE000000
_SLOT = 4
_N = 500
_ROUNDS = 15
_BINARY = "qemu-system-x86_64"


def _program_bar0(vm: QemuVM) -> None:
    def cfg_write(reg: int, value: int) -> None:
        vm.outl(0xCF8, 0x80000000 | _SLOT << 11 | reg)
        vm.outl(0xCFC, value)

    cfg_write(0x10, _BAR0)
    cfg_write(0x04, 0x0002)


def _time_reads(vm: QemuVM, addr: int, n: int) -> float:
    readl = vm.readl
    start = time.perf_counter()
    for _ in range(n):
        readl(addr)
    return (time.perf_counter() - start) / n * 1e6


def _proxied_vm(stack: ExitStack, qemu_end_fd: int) -> QemuVM:
    vm = QemuVM(["-device", f"x-pci-proxy-dev,id=remote0,addr={_SLOT},fd={qemu_end_fd}"],
                accel="tcg", ram_size=128 << 20, pass_fds=[qemu_end_fd])
    stack.enter_context(vm)
    _program_bar0(vm)
    return vm


def _pin_to_one_cpu(stack: ExitStack, pids: list[int]) -> str:
    """Run this thread and every thread of ``pids`` on one CPU; undone when ``stack`` closes.

    On one CPU every hand-off (driver -> QEMU -> device server and back) is a
    plain context switch for both sides alike. Spread over CPUs, each hand-off
    may need a cross-CPU wake-up, whose cost on a virtual machine varies
    about 2x from round to round with where the scheduler put things.

    Returns what was done, for ``details``.
    """
    mine = os.sched_getaffinity(0)
    cpu = max(mine)
    try:
        os.sched_setaffinity(0, {cpu})
        stack.callback(os.sched_setaffinity, 0, mine)
        for pid in pids:
            for task in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(task), {cpu})
    except OSError as exc:
        return f"not pinned ({exc.strerror})"
    return f"driver, VMs and device servers on CPU {cpu}"


def _process(stack: ExitStack, argv: list[str], pass_fds: list[int],
             log_dir: str) -> subprocess.Popen[bytes]:
    log = open(os.path.join(log_dir, f"{len(os.listdir(log_dir))}.log"), "wb")  # noqa: SIM115
    stack.callback(log.close)
    proc = subprocess.Popen(argv, pass_fds=pass_fds, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT)

    def reap() -> None:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    stack.callback(reap)
    return proc


@benchmark("remote-bar",
           description="proxied BAR readl via stock QEMU: Python remote / QEMU's C x-remote")
def bench_remote_bar() -> dict[str, Any]:
    binary = shutil.which(_BINARY)
    if binary is None:
        raise ConfigError(f"{_BINARY} is not installed; the remote-bar benchmark needs it")
    with ExitStack() as stack:
        log_dir = tempfile.mkdtemp(prefix="memexpose-bench-remote-")
        stack.callback(shutil.rmtree, log_dir, True)
        # Ours: memexpose serve-device edu on an inherited socket.
        qemu_end, dev_end = remote_device_pair()
        our_server = _process(stack, serve_device_argv("edu", dev_end.fileno()),
                              [dev_end.fileno()], log_dir)
        dev_end.close()
        ours = _proxied_vm(stack, qemu_end.fileno())
        qemu_end.close()
        # QEMU's: an x-remote machine with pci-testdev on the other socket.
        qemu_end, dev_end = remote_device_pair()
        their_server = _process(
            stack, [binary, "-machine", "x-remote", "-nodefaults", "-display", "none",
                    "-device", "pci-testdev,id=dev0", "-object",
                    f"x-remote-object,id=robj0,devid=dev0,fd={dev_end.fileno()}"],
            [dev_end.fileno()], log_dir)
        dev_end.close()
        theirs = _proxied_vm(stack, qemu_end.fileno())
        qemu_end.close()
        placement = _pin_to_one_cpu(stack, [pid for pid in (
            ours.pid, theirs.pid, our_server.pid, their_server.pid) if pid is not None])
        if ours.readl(_BAR0) != 0x010000ED:
            raise RuntimeError(f"BAR0 of our edu reads {ours.readl(_BAR0):#x}, not 0x010000ed")
        for vm in (ours, theirs):  # warm up both paths
            _time_reads(vm, _BAR0, _N // 4)
            _time_reads(vm, 0x1000, _N // 4)
        rounds: dict[str, list[float]] = {"ours": [], "theirs": [], "ours_ram": [],
                                          "theirs_ram": []}
        for _ in range(_ROUNDS):
            rounds["ours"].append(_time_reads(ours, _BAR0, _N))
            rounds["theirs"].append(_time_reads(theirs, _BAR0, _N))
            rounds["ours_ram"].append(_time_reads(ours, 0x1000, _N))
            rounds["theirs_ram"].append(_time_reads(theirs, 0x1000, _N))
    med = {key: statistics.median(values) for key, values in rounds.items()}
    return {
        "value": round(med["ours"], 2),
        "unit": "us/read",
        "baseline": round(med["theirs"], 2),
        "ratio": round(statistics.median(
            o / t for o, t in zip(rounds["ours"], rounds["theirs"])), 3),
        "target": 1.0,
        "details": {
            "reads_per_round": _N, "rounds": _ROUNDS,
            "python_remote": "memexpose serve-device edu (BAR0 id register)",
            "c_remote": "qemu-system-x86_64 -machine x-remote -device pci-testdev (BAR0)",
            "ram_readl_us": {"ours_vm": round(med["ours_ram"], 2),
                             "theirs_vm": round(med["theirs_ram"], 2)},
            "proxy_round_trip_us": {"python": round(med["ours"] - med["ours_ram"], 2),
                                    "c": round(med["theirs"] - med["theirs_ram"], 2)},
            "best_round_us": {"python": round(min(rounds["ours"]), 2),
                              "c": round(min(rounds["theirs"]), 2)},
            "placement": placement,
        },
    }
