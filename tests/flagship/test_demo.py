"""``memexpose demo`` end to end: two VM processes, the verdict, the counters, failures.

The demo runs as the user runs it (a child process, which starts the two
VM processes). The failure tests drive ``run_flagship`` directly: a trusted
VM that dies in the middle of a call, and Ctrl-C.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from memexpose.cli.flagship import run_flagship
from memexpose.cli.main import cli

from .helpers import FIRMWARE, RICH_TOML

pytestmark = pytest.mark.timeout(90)

CHILD = [sys.executable, "-c", "from memexpose.cli.main import main; main()"]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmd:
                found.append(f"{entry.name}: {cmd}")
    return found


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat[stat.rindex(b")") + 2:].split()[0].decode()


def test_demo_passes_and_buffers_go_through_shared_ram(tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    start = time.monotonic()
    proc = subprocess.run([*CHILD, "demo", "--json", str(out)], capture_output=True,
                          timeout=60, text=True)
    took = time.monotonic() - start
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = proc.stdout
    assert took < 30
    assert "\nverdict: PASS" in text
    assert "[trusted] mxtee trusted OS 1.0 (AArch64) booting" in text
    assert "[rich]    all self-checks passed" in text
    workdir = re.search(r"over (/\S+)/link\.sock", text).group(1)
    assert not os.path.exists(workdir)
    assert not _processes_mentioning(workdir)
    r = json.loads(out.read_text())
    assert r["ok"] and r["problems"] == []
    calls = r["calls"]
    assert calls >= 60 and r["served"] == calls
    assert r["signs_checked"] >= 40 and r["loads_checked"] >= 5 and r["errors_checked"] >= 8
    # the first buffer call is forwarded once and shares the rich RAM; the rest is direct
    assert 1 <= r["forwarded"] <= 4
    assert r["forwarded_after_first"] == 0
    assert r["mappings"]["trusted"] == 1 and r["mappings"]["trusted_bytes"] == 16 << 20
    assert r["direct_bytes"] > 200_000
    assert r["trusted_link"]["forwarded_bytes"] == r["forwarded_bytes"] <= 32
    assert r["trusted_link"]["served_requests"] >= 1  # the rich read of the public page
    # secure RAM stays out of reach; nothing was invalidated; every call was one interrupt
    assert r["refused"] == "DECODE_ERROR"
    assert r["invalidations"] == 0
    ints = r["interrupts"]
    assert ints == {"rich_sent": calls, "rich_received": calls, "trusted_sent": calls,
                    "trusted_received": calls, "dropped": 0}
    assert len(r["latency_us"]) == calls and 0 < r["latency_mean_us"] < 100_000
    assert r["latency_p99_us"] >= r["latency_mean_us"]
    assert r["exit_codes"] == {"rich": 0, "trusted": 0}


def test_the_rich_vm_reports_a_trusted_vm_that_dies_mid_call() -> None:
    lines: list[tuple[float, str]] = []
    killed: list[float] = []
    procs: list[subprocess.Popen] = []

    def echo(line: str) -> None:
        lines.append((time.monotonic(), line))

    def kill_when_frozen(trusted: subprocess.Popen, rich: subprocess.Popen) -> None:
        procs.extend((trusted, rich))

        def killer() -> None:
            deadline = time.monotonic() + 30
            while _state(trusted.pid) != "T" and time.monotonic() < deadline:
                time.sleep(0.005)
            killed.append(time.monotonic())
            os.kill(trusted.pid, signal.SIGKILL)

        threading.Thread(target=killer, daemon=True).start()

    # call 27 is the 64 KiB SIGN: the trusted VM stops itself when it arrives
    code = run_flagship(echo=echo, timeout=30, trusted_args=["--freeze-on-call", "27"],
                        on_started=kill_when_frozen)
    assert code == 1
    assert killed, "the trusted VM never froze at call 27"
    text = "\n".join(line for _, line in lines)
    assert "[rich]    #27 SIGN len=65536" in text
    assert "#28" not in text
    lost = [t for t, line in lines
            if line.startswith("[rich]") and "memexpose link to the peer ended" in line]
    assert lost and lost[0] - killed[0] < 2.0, text
    assert procs[1].returncode == 1  # the rich VM failed
    assert procs[0].returncode == -signal.SIGKILL
    assert "verdict: FAIL" in text


def test_ctrl_c_stops_both_vms_and_removes_the_socket(tmp_path: Path) -> None:
    # a rich VM that never finishes: its guest waits for interrupts that never come
    idle = tmp_path / "idle.toml"
    idle.write_text(RICH_TOML.read_text().replace(
        '"../firmware/build/rich-x86_64.elf"', f'"{FIRMWARE / "build" / "irq-x86_64.elf"}"'))
    proc = subprocess.Popen([*CHILD, "demo", "--rich", str(idle), "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        assert proc.stdout is not None
        for line in proc.stdout:
            seen.append(line)
            if "window onto the rich RAM" in line:
                break
        workdir = re.search(r"over (/\S+)/link\.sock", "".join(seen)).group(1)
        assert _processes_mentioning(workdir)  # both VMs run
        start = time.monotonic()
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=15)
        assert time.monotonic() - start < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, "".join(seen) + rest
    assert "interrupted; stopping both VMs" in rest
    assert not os.path.exists(workdir)
    assert not _processes_mentioning(workdir)


def test_memory_only_keeps_the_memory_layer_scenario() -> None:
    result = CliRunner().invoke(cli, ["demo", "--memory-only"])
    assert result.exit_code == 0, result.output
    assert "== info mtree -f ==" in result.output
    assert "verdict: PASS (9/9 checks)" in result.output


def test_missing_machine_files_are_named(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["demo", "--rich", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2
    assert "nope.toml' not found" in result.output
