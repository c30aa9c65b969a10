"""Tests for memexpose.qemu.capture: QMP on stdio, and live ``info mtree`` captures.

The protocol and failure paths run against a small fake QEMU (a Python
script speaking QMP on stdio). The live tests start the installed QEMU for
several machines and check that our model renders exactly QEMU's flat views.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

from memexpose.errors import ConfigError, LinkError, ProtocolError
from memexpose.qemu import capture_mtree, diff_mtree, parse_mtree
from memexpose.qemu.capture import QmpStdio

FAKE_QEMU = r'''
import json, sys, time
mode = sys.argv[1]
def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n"); sys.stdout.flush()
if mode == "die":
    sys.stderr.write("qemu: unsupported machine type\n"); sys.exit(1)
if mode == "garbage":
    sys.stdout.write("this is not json\n"); sys.stdout.flush(); time.sleep(30)
send({"QMP": {"version": {}, "capabilities": []}})
for line in sys.stdin:
    msg = json.loads(line)
    name, ident = msg["execute"], msg.get("id")
    if mode == "hang" and name != "qmp_capabilities":
        time.sleep(30)
    send({"event": "NOISE", "data": {}})
    if name == "human-monitor-command":
        if mode == "refuse":
            send({"error": {"class": "GenericError", "desc": "no such command"}, "id": ident})
        else:
            send({"return": "line one\r\nline two\r\n", "id": ident})
    elif name == "query-version":
        send({"return": {"qemu": {"major": 7, "minor": 2, "micro": 22}, "package": "fake"},
              "id": ident})
    else:
        send({"return": {}, "id": ident})
    if name == "quit":
        send({"event": "SHUTDOWN"})
        sys.exit(0)
'''


@pytest.fixture
def fake(tmp_path: Path) -> list[str]:
    script = tmp_path / "fake_qemu.py"
    script.write_text(FAKE_QEMU)
    return [sys.executable, str(script)]


def test_commands_skip_events_and_hmp_text_is_lf(fake: list[str]) -> None:
    with QmpStdio([*fake, "ok"], timeout=10) as qmp:
        assert qmp.greeting is not None and "QMP" in qmp.greeting
        assert qmp.command("query-version")["qemu"]["major"] == 7
        assert qmp.hmp("info mtree") == "line one\nline two\n"
        proc = qmp._proc
    assert proc is not None and proc.returncode == 0


def test_error_reply_raises_and_reaps(fake: list[str]) -> None:
    with pytest.raises(LinkError, match="refused 'human-monitor-command'.*no such command"):
        with QmpStdio([*fake, "refuse"], timeout=10) as qmp:
            qmp.hmp("info nothing")


def test_timeout_kills_the_process(fake: list[str]) -> None:
    start = time.monotonic()
    with pytest.raises(LinkError, match="did not send the reply to 'query-version' within"):
        with QmpStdio([*fake, "hang"], timeout=0.5) as qmp:
            qmp.command("query-version")
    assert time.monotonic() - start < 10


def test_early_exit_reports_status_and_stderr(fake: list[str]) -> None:
    with pytest.raises(LinkError, match=r"exit status 1.*unsupported machine type"):
        QmpStdio([*fake, "die"], timeout=10).start()


def test_non_json_output_is_a_protocol_error(fake: list[str]) -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        QmpStdio([*fake, "garbage"], timeout=10).start()


def test_command_before_start_and_bad_timeout(fake: list[str]) -> None:
    with pytest.raises(LinkError, match="call start"):
        QmpStdio([*fake, "ok"]).command("quit")
    with pytest.raises(ValueError, match="timeout"):
        QmpStdio([*fake, "ok"], timeout=0)


def test_missing_binary_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not installed"):
        capture_mtree("qemu-system-does-not-exist", ["-M", "none"])


# -- live QEMU ------------------------------------------------------------------------

MACHINES = [
    pytest.param("qemu-system-x86_64", ["-M", "pc"], id="x86_64-pc",
                 marks=pytest.mark.qemu("qemu-system-x86_64")),
    pytest.param("qemu-system-x86_64", ["-M", "q35", "-device", "edu"], id="x86_64-q35-edu",
                 marks=pytest.mark.qemu("qemu-system-x86_64")),
    pytest.param("qemu-system-x86_64",
                 ["-M", "q35", "-m", "128M,slots=2,maxmem=1G", "-device", "intel-iommu",
                  "-object", "memory-backend-ram,id=mem1,size=128M",
                  "-device", "pc-dimm,id=dimm1,memdev=mem1", "-device", "e1000e"],
                 id="x86_64-q35-iommu-dimm", marks=pytest.mark.qemu("qemu-system-x86_64")),
    pytest.param("qemu-system-aarch64", ["-M", "virt", "-cpu", "cortex-a57"],
                 id="aarch64-virt", marks=pytest.mark.qemu("qemu-system-aarch64")),
    pytest.param("qemu-system-aarch64", ["-M", "xlnx-zcu102"], id="aarch64-zcu102",
                 marks=pytest.mark.qemu("qemu-system-aarch64")),
    pytest.param("qemu-system-arm", ["-M", "vexpress-a9"], id="arm-vexpress-a9",
                 marks=pytest.mark.qemu("qemu-system-arm")),
    # ARMSSE boards place an alias inside the container it shows (rule R8).
    pytest.param("qemu-system-arm", ["-M", "musca-b1"], id="arm-musca-b1",
                 marks=pytest.mark.qemu("qemu-system-arm")),
    pytest.param("qemu-system-arm", ["-M", "mps2-an521"], id="arm-mps2-an521",
                 marks=pytest.mark.qemu("qemu-system-arm")),
    pytest.param("qemu-system-ppc", ["-M", "40p"], id="ppc-40p",
                 marks=pytest.mark.qemu("qemu-system-ppc")),
    pytest.param("qemu-system-ppc", ["-M", "mac99"], id="ppc-mac99",
                 marks=pytest.mark.qemu("qemu-system-ppc")),
]


@pytest.mark.parametrize(("binary", "args"), MACHINES)
def test_live_capture_renders_like_qemu(binary: str, args: list[str]) -> None:
    capture = capture_mtree(binary, args, timeout=30)
    assert capture.version.startswith("7.2"), capture.version
    assert "\r" not in capture.tree_do + capture.flat_o + capture.flat
    with parse_mtree(capture.tree_do, capture.flat_o) as parsed:
        label = " ".join(args)
        for ours, theirs, what in (
                (parsed.format_flat(owner=False), capture.flat, "info mtree -f"),
                (parsed.format_flat(owner=True), capture.flat_o, "info mtree -f -o"),
                (parsed.format_tree(), capture.tree_do, "info mtree -o -D")):
            diff = diff_mtree(ours, theirs, ours_label=f"memexpose ({label})",
                              theirs_label=f"QEMU {what} ({label})")
            assert not diff, f"inferred: {parsed.notes or 'nothing'}\n{diff}"


@pytest.mark.qemu("qemu-system-x86_64")
def test_live_capture_after_firmware_ran() -> None:
    """SeaBIOS programs PAM (read-only pam-rom aliases, H3), BARs and bus mastering."""
    args = ["-M", "pc", "-device", "edu", "-device", "pci-testdev"]
    capture = capture_mtree("qemu-system-x86_64", args, timeout=30, run_for=3.0)
    with parse_mtree(capture.tree_do, capture.flat_o) as parsed:
        diff = diff_mtree(parsed.format_flat(owner=True), capture.flat_o,
                          theirs_label="QEMU info mtree -f -o (pc, booted)")
        assert not diff, f"inferred: {parsed.notes or 'nothing'}\n{diff}"
        assert diff_mtree(parsed.format_flat(), capture.flat) == ""


@pytest.mark.qemu("qemu-system-x86_64")
def test_live_bad_machine_reports_qemu_stderr() -> None:
    with pytest.raises(LinkError, match="unsupported machine type"):
        capture_mtree("qemu-system-x86_64", ["-M", "no-such-board"], timeout=30)
