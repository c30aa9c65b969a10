"""Benchmarks of the link layer, with the peer in a second process.

* ``link-rtt``: a forwarded 4-byte read (``Importer.read``, the window's
  slow path) divided by a bare Python socketpair ping-pong of the same
  sizes (32-byte request, 64-byte reply) between the same two processes,
  measured in interleaved rounds of one run. Target: at most 1.3.
* ``link-direct``: reading 64 MiB of the peer's RAM through the window once
  it is mapped directly, as throughput relative to the same read of local
  RAM. Target: at least 0.9.
* ``link-invalidate``: the exporter moves shared RAM; the commit returns
  once the importer has unmapped it and acknowledged. Median in ms;
  baseline: the same change with nothing shared. Target: at most 1 ms.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from typing import Any

from memexpose.bench import benchmark
from memexpose.link import Exposure, MemexposeEndpoint, UnixTransport
from memexpose.memory import AddressSpace, HostMemory, MemoryRegion, MemorySystem

_WINDOW = 0x1_0000_0000
_BIG = 64 * 1024 * 1024
_ANON = _BIG  # the peer's anonymous RAM sits right after its big RAM
_REQ, _REPLY = 32, 64  # READ and READ_REPLY frame sizes


def _machine(name: str, path: str, listen: bool, *, ram: int, window: int
             ) -> tuple[AddressSpace, MemexposeEndpoint, dict[str, MemoryRegion]]:
    system = MemorySystem(name)
    root = MemoryRegion.init_container(f"{name}.system", 1 << 64)
    as_ = AddressSpace(root, name, system=system)
    regions = {}
    if ram:
        regions["ram"] = MemoryRegion.init_ram(f"{name}.ram", ram)
        regions["ram"].hostmem.view[:] = b"\x5a" * ram
        root.add_subregion(0, regions["ram"])
        regions["anon"] = MemoryRegion.init_ram(
            f"{name}.anon", 0x1000, hostmem=HostMemory.anonymous(f"{name}.anon", 0x1000))
        root.add_subregion(_ANON, regions["anon"])
    ep = MemexposeEndpoint(name, UnixTransport(path, listen=listen),
                           exposure=Exposure.range(as_, 0, 1 << 40), window_size=window,
                           lock=system.lock, timeout=10.0)
    if ep.window is not None:
        root.add_subregion(_WINDOW, ep.window)
    return as_, ep, regions


def _peer_main(conn: Any, path: str, echo: socket.socket) -> None:
    """The other process: an exporter with 64 MiB of RAM, an echo socket, commands."""
    as_, ep, regions = _machine("bench-peer", path, False, ram=_BIG, window=1 << 30)
    reply = b"\0" * _REPLY

    def echo_loop() -> None:
        while True:
            data = echo.recv(_REQ)
            if not data:
                return
            while len(data) < _REQ:
                more = echo.recv(_REQ - len(data))
                if not more:
                    return
                data += more
            echo.sendall(reply)

    echoer = threading.Thread(target=echo_loop, daemon=True)
    echoer.start()
    try:
        ep.enable()
        conn.send("ready")
        while True:
            cmd = conn.recv()
            if cmd == ("quit",):
                break
            if cmd[0] == "map":  # one forwarded read: the reply shares the RAM there
                conn.send(as_.read(_WINDOW + cmd[1], 4)[1])
            elif cmd[0] == "pin":  # run every thread of this process on these CPUs
                for tid in os.listdir("/proc/self/task"):
                    os.sched_setaffinity(int(tid), cmd[1])
                conn.send("pinned")
    finally:
        echo.close()
        echoer.join(5)
        ep.close()
        conn.send("bye")


class _Pair:
    """This process and a peer process, linked over a UNIX socket, plus an echo socket."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="mxb-", dir="/tmp")
        path = os.path.join(self.dir, "link")
        try:
            self.as_, self.ep, self.regions = _machine("bench", path, True, ram=_BIG,
                                                       window=1 << 30)
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        ctx = multiprocessing.get_context("spawn")
        self.echo, theirs = socket.socketpair()
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_peer_main, args=(child, path, theirs), daemon=True)
        try:
            self.proc.start()
        except BaseException:
            child.close()
            theirs.close()
            self.close()
            raise
        child.close()
        theirs.close()
        try:
            self.ep.enable(timeout=30)
            if not self.conn.poll(30) or self.conn.recv() != "ready":
                raise RuntimeError("benchmark peer did not start")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        try:
            self.conn.send(("quit",))
            if self.conn.poll(10):
                self.conn.recv()
        except (OSError, EOFError):
            pass
        self.echo.close()
        if self.proc.pid is not None:
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
        self.ep.close()
        for mr in self.regions.values():
            mr.hostmem.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> _Pair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _ping_pong_us(sock: socket.socket, n: int) -> float:
    msg = b"\0" * _REQ
    send = sock.sendall
    recv_into = sock.recv_into
    buf = bytearray(_REPLY)
    view = memoryview(buf)
    start = time.perf_counter()
    for _ in range(n):
        send(msg)
        got = recv_into(view)
        while got < _REPLY:
            got += recv_into(view[got:])
    return (time.perf_counter() - start) / n * 1e6


def _forward_us(read: Any, addr: int, n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        read(addr, 4)
    return (time.perf_counter() - start) / n * 1e6


def _pin(pair: _Pair, mine: set[int], theirs: set[int]) -> None:
    """Run every thread of this process on ``mine`` and of the peer on ``theirs``."""
    for tid in os.listdir("/proc/self/task"):
        os.sched_setaffinity(int(tid), mine)
    pair.conn.send(("pin", theirs))
    if not pair.conn.poll(10) or pair.conn.recv() != "pinned":
        raise RuntimeError("the benchmark peer could not set its CPU affinity")


def _rtt_rounds(pair: _Pair, rounds: int) -> tuple[list[float], list[float], list[float]]:
    importer = pair.ep.importer
    assert importer is not None
    read = importer.read
    for _ in range(2000):  # warm up both paths
        read(_ANON, 4)
    _ping_pong_us(pair.echo, 2000)
    link, bare, via_as = [], [], []
    for _ in range(rounds):
        bare.append(_ping_pong_us(pair.echo, 1000))
        link.append(_forward_us(read, _ANON, 1000))
        via_as.append(_forward_us(pair.as_.read, _WINDOW + _ANON, 1000))
    return link, bare, via_as


@benchmark("link-rtt", description="forwarded 4-byte read / bare socketpair ping-pong (ratio)")
def bench_link_rtt() -> dict[str, Any]:
    """Interleave rounds of forwarded reads and bare ping-pongs; compare medians.

    Wake-ups between CPUs cost more than the link itself on small VMs, and
    where the scheduler puts the threads changes from run to run. So the
    headline pins both processes to one CPU (a hand-off, as between vCPU
    threads that share a core). The details add the two processes on
    different CPUs, and the unpinned run.
    """
    with _Pair() as pair:
        saved = os.sched_getaffinity(0)
        cpus = sorted(saved)
        try:
            free_l, free_b, _ = _rtt_rounds(pair, 7)
            _pin(pair, {cpus[0]}, {cpus[0]})
            link, bare, via_as = _rtt_rounds(pair, 15)
            cross: tuple[float, float] | None = None
            if len(cpus) > 1:
                _pin(pair, {cpus[0]}, {cpus[1]})
                cross_l, cross_b, _ = _rtt_rounds(pair, 7)
                cross = statistics.median(cross_l), statistics.median(cross_b)
        finally:
            for tid in os.listdir("/proc/self/task"):
                os.sched_setaffinity(int(tid), saved)
        value = statistics.median(link)
        baseline = statistics.median(bare)
        stats = pair.ep.statistics()
        session = pair.ep.importer._session if pair.ep.importer is not None else None
        hot_path = "c" if session is not None and session._native is not None else "python"
    details: dict[str, Any] = {
        "hot_path": hot_path,
        "placement": f"both processes on CPU {cpus[0]}",
        "rounds": 15,
        "reads_per_round": 1000,
        "through_address_space_us": round(statistics.median(via_as), 2),
        "unpinned_us": [round(statistics.median(free_l), 2), round(statistics.median(free_b), 2)],
        "unpinned_ratio": round(statistics.median(free_l) / statistics.median(free_b), 3),
        "forwarded_reads": stats.forwarded_reads,
        "direct_mappings": stats.direct_mappings,
    }
    if cross is not None:
        details["two_cpus_us"] = [round(cross[0], 2), round(cross[1], 2)]
        details["two_cpus_ratio"] = round(cross[0] / cross[1], 3)
    return {
        "value": round(value, 2),
        "unit": "us/read",
        "baseline": round(baseline, 2),
        "ratio": round(value / baseline, 3),
        "target": 1.3,
        "details": details,
    }


def _best_read_seconds(as_: AddressSpace, addr: int, buf: bytearray, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        as_.read_into(addr, buf)
        best = min(best, time.perf_counter() - start)
    return best


@benchmark("link-direct", description="64 MiB read of directly mapped peer RAM vs local RAM "
                                      "(throughput ratio)")
def bench_link_direct() -> dict[str, Any]:
    """Map the peer's 64 MiB after one forwarded read; time bulk reads of both."""
    with _Pair() as pair:
        as_ = pair.as_
        assert as_.read(_WINDOW, 4)[1] == 0  # forwarded: the reply shares the RAM
        stats = pair.ep.statistics()
        if stats.direct_mappings != 1 or stats.direct_bytes < _BIG:
            raise RuntimeError(f"the peer's RAM was not mapped directly: {stats}")
        buf = bytearray(_BIG)
        as_.read_into(_WINDOW, buf)  # fault the mapping in
        as_.read_into(0, buf)
        remote = _best_read_seconds(as_, _WINDOW, buf, 7)
        local = _best_read_seconds(as_, 0, buf, 7)
        ok = buf == b"\x5a" * _BIG
        forwarded = pair.ep.statistics().forwarded_reads
    mib = _BIG / (1 << 20)
    return {
        "value": round(mib / remote, 1),
        "unit": "MiB/s",
        "baseline": round(mib / local, 1),
        "ratio": round(local / remote, 3),
        "target": 0.9,
        "details": {"bytes": _BIG, "remote_ms": round(remote * 1e3, 2),
                    "local_ms": round(local * 1e3, 2), "data_ok": ok,
                    "forwarded_reads": forwarded},
    }


@benchmark("link-invalidate", description="exporter map change until the importer unmapped and "
                                          "acknowledged (median ms)")
def bench_link_invalidate() -> dict[str, Any]:
    """Time commits that move shared RAM (with INVALIDATE) and unshared RAM (without)."""
    with _Pair() as pair:
        root = pair.as_.root
        assert root is not None
        shared_ram = MemoryRegion.init_ram("bench.shared", 0x10000)
        plain_ram = MemoryRegion.init_ram("bench.plain", 0x10000)
        home, away, plain = 0x1000_0000, 0x2000_0000, 0x3000_0000
        root.add_subregion(home, shared_ram)
        root.add_subregion(plain, plain_ram)
        shared, unshared = [], []
        try:
            for i in range(200):
                # The peer reads our RAM: the reply shares it, and the peer maps it.
                pair.conn.send(("map", home))
                if not pair.conn.poll(10) or pair.conn.recv() != 0:
                    raise RuntimeError("the benchmark peer could not read our RAM")
                start = time.perf_counter()
                shared_ram.set_address(away)  # the commit waits for the peer's ACK
                shared.append(time.perf_counter() - start)
                start = time.perf_counter()
                plain_ram.set_address(plain + (i + 1) % 2 * 0x100_0000)
                unshared.append(time.perf_counter() - start)
                shared_ram.set_address(home)  # nothing shared there any more: no INVALIDATE
            stats = pair.ep.statistics()
        finally:
            root.del_subregion(shared_ram)
            root.del_subregion(plain_ram)
            shared_ram.close()
            plain_ram.close()
    value = statistics.median(shared) * 1e3
    baseline = statistics.median(unshared) * 1e3
    return {
        "value": round(value, 3),
        "unit": "ms",
        "baseline": round(baseline, 3),
        "ratio": round(value / baseline, 2),
        "target": 1.0,
        "details": {"changes": len(shared), "invalidations_sent": stats.invalidations_sent,
                    "p90_ms": round(sorted(shared)[int(len(shared) * 0.9)] * 1e3, 3)},
    }
