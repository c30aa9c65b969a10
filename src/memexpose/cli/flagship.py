"""The flagship demo: two VM processes, their consoles, the check and the summary.

``run_flagship`` starts the trusted VM and the rich VM as two child
processes (``memexpose flagship-vm FILE``, hidden), connected by a memexpose
UNIX socket in a private temporary directory. It prints their consoles with
``[trusted]`` / ``[rich]`` prefixes, waits for the rich VM to finish, stops
the trusted one, reads both reports and checks them
(``memexpose.machine.check_flagship``), then prints the summary and a
verdict. Every exit path (success, failure, timeout, Ctrl-C) stops and
reaps both children and removes the directory with the socket and reports.

docs/flagship.md describes the scenario.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import memexpose
from memexpose.errors import MemexposeError
from memexpose.machine import FlagshipResult, VmReport, check_flagship, load_report

__all__ = ["EXAMPLES", "run_flagship"]

EXAMPLES = Path(memexpose.__file__).resolve().parents[2] / "examples"
"""The repository's ``examples/`` (the two machine files the demo runs)."""

_CHILD = "from memexpose.cli.main import main; main()"
_STOP_GRACE = 5.0  # seconds a child has to write its report after SIGTERM


class _Child:
    """One VM process and the thread that prefixes its output."""

    def __init__(self, label: str, argv: list[str], echo: Callable[[str], None],
                 lock: threading.Lock) -> None:
        self.label = label
        # A session of its own: Ctrl-C reaches only the demo, which stops the children.
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True,
                                     preexec_fn=_die_with_parent)
        self._echo = echo
        self._lock = lock
        self._reader = threading.Thread(target=self._pump, name=f"demo-{label}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        prefix = f"[{self.label}]".ljust(10)
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            with self._lock:
                self._echo(f"{prefix}{line}")
        self.proc.stdout.close()

    def stop(self, grace: float = _STOP_GRACE) -> int:
        """SIGTERM (the VM shuts down and reports), SIGKILL after ``grace``; reap."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            except ProcessLookupError:
                pass
        self._reader.join(5.0)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL and reap (cleanup after an error)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._reader.join(5.0)


def _find_prctl() -> Callable[..., int] | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _find_prctl()  # looked up here: the child between fork and exec only calls it
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM if the demo dies."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _vm_argv(config: Path, socket: str, report: str, extra: list[str]) -> list[str]:
    return [sys.executable, "-c", _CHILD, "flagship-vm", os.fspath(config), "--socket", socket,
            "--report", report, *extra]


def run_flagship(rich: Path | None = None, trusted: Path | None = None, *,
                 echo: Callable[[str], None] | None = None, timeout: float = 60.0,
                 json_path: str | None = None, trusted_args: list[str] | None = None,
                 on_started: Callable[[subprocess.Popen, subprocess.Popen], None] | None = None
                 ) -> int:
    """Run the flagship pair, check it and print the summary; return the exit status.

    Args:
        rich, trusted: the machine files (default: ``examples/rich.toml`` and
            ``examples/trusted.toml``).
        echo: prints one line (default ``print``).
        timeout: seconds the rich VM may take before both are stopped.
        json_path: also write the result (``FlagshipResult.as_dict()`` plus
            both reports' link statistics) to this file.
        trusted_args: extra ``flagship-vm`` options for the trusted VM (tests).
        on_started: called with the (trusted, rich) processes once both run (tests).

    Returns:
        0 when the verdict is PASS; 1 when a check failed or a VM failed;
        2 when the demo could not run (missing files); 130 on Ctrl-C.
    """
    say = echo or (lambda line: print(line, flush=True))
    rich = rich or EXAMPLES / "rich.toml"
    trusted = trusted or EXAMPLES / "trusted.toml"
    for path in (rich, trusted):
        if not path.is_file():
            say(f"memexpose demo: machine file {os.fspath(path)!r} not found; pass --rich and "
                "--trusted (the repository's examples/ has both)")
            return 2
    workdir = tempfile.mkdtemp(prefix="memexpose-demo-")
    socket = os.path.join(workdir, "link.sock")
    reports = {name: os.path.join(workdir, f"{name}.json") for name in ("rich", "trusted")}
    lock = threading.Lock()
    children: list[_Child] = []
    started = time.monotonic()
    say("memexpose demo: a rich OS on an x86_64 VM makes secure calls to a trusted OS on an "
        "AArch64 VM;")
    say(f"  two processes linked by memexpose over {socket}")
    say(f"  trusted: {trusted}")
    say(f"  rich:    {rich}")
    try:
        tvm = _Child("trusted", _vm_argv(trusted, socket, reports["trusted"],
                                         trusted_args or []), say, lock)
        children.append(tvm)
        rvm = _Child("rich", _vm_argv(rich, socket, reports["rich"], []), say, lock)
        children.append(rvm)
        if on_started is not None:
            on_started(tvm.proc, rvm.proc)
        try:
            rvm.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with lock:
                say(f"memexpose demo: the rich VM did not finish in {timeout:g} s; stopping")
        rich_rc = rvm.stop()
        trusted_rc = tvm.stop()
        elapsed = time.monotonic() - started
        rich_report = _try_load(reports["rich"])
        trusted_report = _try_load(reports["trusted"])
        if rich_report is None or trusted_report is None:
            for name, code, rep in (("trusted", trusted_rc, trusted_report),
                                    ("rich", rich_rc, rich_report)):
                if rep is None:
                    say(f"memexpose demo: the {name} VM {_describe_exit(code)} and left no "
                        "report")
            if rich_report is not None and rich_report.peer_lost:
                say(f"memexpose demo: the rich VM noticed: {rich_report.peer_lost}; it "
                    f"exited {rich_rc} after {len(rich_report.calls)} completed call(s)")
            say("verdict: FAIL (a VM did not finish its run)")
            return 1
        result = check_flagship(rich_report, trusted_report)
        for line in summary_lines(result, rich_report, trusted_report, elapsed):
            say(line)
        if json_path is not None:
            data = result.as_dict()
            data["elapsed"] = elapsed
            data["rich_link"] = rich_report.link
            data["trusted_link"] = trusted_report.link
            data["exit_codes"] = {"rich": rich_rc, "trusted": trusted_rc}
            Path(json_path).write_text(json.dumps(data, indent=1))
        return 0 if result.ok else 1
    except KeyboardInterrupt:
        say("memexpose demo: interrupted; stopping both VMs")
        return 130
    finally:
        for child in reversed(children):
            try:
                child.stop(grace=2.0)
            except BaseException:
                child.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _try_load(path: str) -> VmReport | None:
    try:
        return load_report(path)
    except MemexposeError:
        return None


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "did not stop"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _us(value: float) -> str:
    return f"{value / 1000:.2f} ms" if value >= 1000 else f"{value:.0f} µs"


def _size(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale} {unit}"
    return f"{n:,} bytes"


def summary_lines(result: FlagshipResult, rich: VmReport, trusted: VmReport,
                  elapsed: float) -> list[str]:
    """Return the summary the demo prints after the consoles, verdict last."""
    r = result
    lat = r.latency_us
    mean = sum(lat) / len(lat) if lat else 0.0
    svc = sum(r.service_us) / len(r.service_us) if r.service_us else 0.0
    ints = r.interrupts
    lines = ["", "== summary =="]
    lines.append(f"calls            {r.calls} made by the rich VM, {r.served} served by the "
                 "trusted VM")
    if lat:
        lines.append(f"latency          mean {_us(mean)}, p50 {_us(r.percentile(lat, 50))}, "
                     f"p99 {_us(r.percentile(lat, 99))} over {len(lat)} calls (rich guest "
                     f"rdtsc, call to return); trusted service mean {_us(svc)}")
        first = r.first_buffer_call
        if 0 < first <= len(lat):
            lines.append(f"                 slowest: call {first} ({_us(lat[first - 1])}), the "
                         "first to reach rich RAM: forwarded, then the RAM is mapped")
    lines.append(f"trusted -> rich  {r.forwarded} forwarded access(es) ({r.forwarded_bytes} "
                 f"bytes) vs {r.direct_bytes:,} bytes of messages and buffers through "
                 "directly shared RAM")
    lines.append(f"                 {r.mappings['trusted']} direct mapping(s), "
                 f"{_size(r.mappings['trusted_bytes'])}; {r.forwarded_after_first} access(es) "
                 f"forwarded after call {r.first_buffer_call}")
    lines.append(f"rich -> trusted  {r.rich_forwarded} forwarded access(es), "
                 f"{r.mappings['rich']} direct mapping(s), {_size(r.mappings['rich_bytes'])} "
                 "(the trusted public page)")
    probe = next((p for p in rich.probes if p.offset), None)
    if probe is not None:
        lines.append(f"refused          rich read at trusted window +{probe.offset:#x} (past "
                     f"its {_size(rich.window_limit)} exposure, where secure RAM would be): "
                     f"{probe.result_name}")
    lines.append(f"invalidations    {r.invalidations}")
    lines.append(f"interrupts       rich sent {ints['rich_sent']}, received "
                 f"{ints['rich_received']}; trusted sent {ints['trusted_sent']}, received "
                 f"{ints['trusted_received']}; dropped {ints['dropped']}")
    lines.append(f"checked          {r.signs_checked} SIGN digests = SipHash-2-4 under the "
                 f"key read from trusted RAM ({r.key[:8]}...), {r.loads_checked} LOADs = "
                 f"their STOREs, {r.errors_checked} error answers")
    lines.append(f"time             {elapsed:.1f} s for both VMs, start to finish")
    for problem in r.problems:
        lines.append(f"PROBLEM          {problem}")
    verdict = "PASS" if r.ok else "FAIL"
    lines.append(f"verdict: {verdict} ({r.calls} secure calls; {len(r.problems)} problem(s))")
    return lines
